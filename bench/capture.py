"""Capture-to-HDF5 overhead and memory: ``python -m bench.capture [--samples 10 100]``.

tiny-llava-next at realistic token counts (8 frames x 144 tokens + prompt):
the time of capturing every layer's residual stream (all positions) into an
HDF5 cache, against plain forwards of the same inputs, in one process; and
the peak memory (tracemalloc, Python + numpy + torch CPU allocations are not
all visible to it, so RSS growth is printed too) at each sample count.
Targets (issue 2): overhead <= 1.3x; peak memory flat in the number of samples.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from tasks.types import Sample
from tracing.capture import capture_dataset
from tracing.inputs import build_sample_inputs
from tracing.registry import load_model


def samples(n: int, frames: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(id=f"s{i}", task="bench", question="Which way does the object move?",
                   options=["left", "right", "up", "down"], answer=i % 4,
                   frames=rng.integers(0, 255, (frames, 96, 96, 3), dtype=np.uint8)) for i in range(n)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[10, 100], help="sample counts to measure")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model("tiny-llava-next", attn="sdpa")
    print(f"model tiny-llava-next, {lm.n_layers} layers; hooks: resid_post of every layer, all positions")
    for n in a.samples:
        ss = samples(n)
        print(f"\n{n} samples x {build_sample_inputs(lm, ss[0])[1].n_tokens} tokens")
        t = time.perf_counter()
        with torch.no_grad():  # the baseline builds inputs too: every run must
            for s in ss:
                lm.model(**build_sample_inputs(lm, s)[0])
        plain = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as d:
            tracemalloc.start()
            r0 = rss_mb()
            t = time.perf_counter()
            capture_dataset(lm, ss, "resid_post", Path(d) / "c.h5", positions="all", progress=False)
            cap = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            size = (Path(d) / "c.h5").stat().st_size / 2**20
        print(f"  plain forwards   {plain:7.2f} s")
        print(f"  capture to HDF5  {cap:7.2f} s   overhead {cap / plain:.2f}x (target <= 1.3x)")
        print(f"  traced peak {peak:.1f} MiB; max RSS growth {rss_mb() - r0:.1f} MiB; file {size:.0f} MiB")


if __name__ == "__main__":
    main()
