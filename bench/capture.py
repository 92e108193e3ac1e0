"""Capture-to-HDF5 overhead and memory: ``python -m bench.capture [--samples 10,100] [--rounds 2] [--profile]``.

tiny-llava-next at realistic token counts (8 frames x 144 tokens + prompt):
the time of capturing every layer's residual stream (all positions) into an
HDF5 cache, against plain forwards of the same inputs (both build their
inputs), in one process. Plain and capture passes alternate, ``--rounds``
times each, and the fastest of each is compared: load from other processes
only ever adds time, and alternating spreads it over both. The ratio of CPU
times (this process only, all its threads) is printed too: on a machine shared
with other jobs it moves much less than the wall-clock ratio. Peak memory is the
peak resident set growth during a pass (the kernel's high-water mark, reset
before each pass), which sees torch, numpy and HDF5 allocations alike.
``--profile`` prints where one capture pass spends its time (cProfile).
Targets: overhead <= 1.3x; peak memory flat in the number of samples.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tasks.types import Sample
from analyses.capture import capture_dataset
from tracing.capture import capture
from tracing.inputs import build_sample_inputs
from tracing.registry import load_model


def samples(n: int, frames: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(id=f"s{i}", task="bench", question="Which way does the object move?",
                   options=["left", "right", "up", "down"], answer=i % 4,
                   frames=rng.integers(0, 255, (frames, 96, 96, 3), dtype=np.uint8)) for i in range(n)]


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory growth (MiB) over a block. Linux: the high-water
    mark is reset on entry (/proc/self/clear_refs); elsewhere the lifetime
    maximum is used, which only shows growth beyond earlier peaks."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM") if self.reset else None
        peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.growth_mib = max(peak - self.start, 0) / 1024


def plain_pass(lm, ss) -> tuple[float, float]:
    """-> (wall, CPU) seconds."""
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():  # the baseline builds inputs too: every run must
        for s in ss:
            lm.model(**build_sample_inputs(lm, s)[0])
    return time.perf_counter() - t, time.process_time() - c


def capture_pass(lm, ss, path) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    capture_dataset(lm, ss, "resid_post", path, positions="all", progress=False)
    return time.perf_counter() - t, time.process_time() - c


def counts(text: str) -> list[int]:
    return [int(x) for part in text.split(",") for x in part.split() if x]


def main(argv=None):
    from analyses.cli import RawHelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__, formatter_class=RawHelpFormatter)
    ap.add_argument("--samples", default=["10,100"], nargs="+",
                    help="sample counts to measure, e.g. 10,100 (or 10 100) (default: 10,100)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="plain and capture passes per sample count, alternating; the fastest of each is compared")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--profile", action="store_true",
                    help="also run one capture pass of the first count under cProfile and print where it spends "
                         "its time")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model("tiny-llava-next", attn="sdpa")
    ns = [n for arg in a.samples for n in counts(arg)]
    warm = samples(1)
    inp, lay = build_sample_inputs(lm, warm[0])
    with torch.no_grad():  # first calls allocate and initialise lazily: not part of either timing
        lm.model(**inp)
    capture(lm, inp, lay, "resid_post")
    print(f"model tiny-llava-next, {lm.n_layers} layers; hooks: resid_post of every layer, all positions; "
          f"{a.rounds} alternating rounds, fastest of each kept")
    for n in ns:
        ss = samples(n)
        print(f"\n{n} samples x {lay.n_tokens} tokens")
        plain, cap, mem_plain, mem_cap, size = [], [], [], [], 0.0
        with tempfile.TemporaryDirectory() as d:
            for r in range(a.rounds):
                with PeakRSS() as m:
                    plain.append(plain_pass(lm, ss))
                mem_plain.append(m.growth_mib)
                path = Path(d) / f"c{r}.h5"
                with PeakRSS() as m:
                    cap.append(capture_pass(lm, ss, path))
                mem_cap.append(m.growth_mib)
                size = path.stat().st_size / 2**20
                path.unlink()
                print(f"  round {r + 1}: plain {plain[-1][0]:6.2f} s, capture {cap[-1][0]:6.2f} s, "
                      f"ratio {cap[-1][0] / plain[-1][0]:.2f}x (CPU time {cap[-1][1] / plain[-1][1]:.2f}x)")
        (pw, pc), (cw, cc) = [(min(x[0] for x in v), min(x[1] for x in v)) for v in (plain, cap)]
        print(f"  plain forwards   {pw:7.2f} s  ({1000 * pw / n:.0f} ms/sample)")
        print(f"  capture to HDF5  {cw:7.2f} s  ({1000 * cw / n:.0f} ms/sample)   "
              f"overhead {cw / pw:.2f}x wall, {cc / pc:.2f}x CPU time (target <= 1.3x)")
        print(f"  peak RSS growth: plain {max(mem_plain):.1f} MiB, capture {max(mem_cap):.1f} MiB; "
              f"file {size:.0f} MiB")
    if a.profile:
        with tempfile.TemporaryDirectory() as d:
            pr = cProfile.Profile()
            pr.enable()
            capture_pass(lm, samples(ns[0]), Path(d) / "p.h5")
            pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(r"tracing|store|h5py/_hl|nnsight/.*tracer", 25)
        print("\n" + s.getvalue())


if __name__ == "__main__":
    main()
