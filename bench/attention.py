"""Streamed attention statistics against materialised maps: ``python -m bench.attention [--tokens 1024,4096,16384]``.

Three ways to one forward over T tokens, in one process, on
- the reasoner (a text Llama of 4 layers x 4 heads, hidden 128) fed T random
  token ids, and
- tiny-llava-next (8 layers x 4 heads, 144 tokens per frame) fed enough
  frames for about T tokens:

  sdpa          the model's plain sdpa forward (the time baseline);
  materialised  eager with ``output_attentions=True``: every map
                [L, H, T, T] kept, what the paper's recipe and every other
                tool needs before any WAAD / FAI can be computed;
  streamed      sdpa forward with ``tracing.attention_stats`` computing every
                statistic (span term, WAAD, entropy, FAI over the second half
                of the sequence to the end, frame and span masses), on its
                default path: the fused C kernel (``tracing/stats_kernel.py``);
  torch path    the same with ``kernel="torch"``: the chunked torch
                computation that runs where the kernel does not apply (masks,
                GPUs, no C compiler).

Each method runs in a fresh process (an allocator keeps what it freed, so a
second method in the same process would show no growth). Time is the
fastest of ``--repeats`` forwards; memory is the peak resident growth during
the first (the kernel's high-water mark, reset before it), over what the
model and its inputs already hold.
A materialised forward whose maps alone would take more than half the free
memory is skipped and says so. Targets (issue 13): memory streamed /
materialised <= 1/10 at 4096 tokens and growing linearly with T; time
streamed / sdpa <= 2. The last two lines give the worse of the two models:
``memory ratio at 4096 tokens: X`` and ``time ratio at 4096 tokens: Y``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import psutil
import torch

from bench.capture import PeakRSS
from tracing.attention import _set_impl
from tracing.attention_stats import StatsSpec, attention_stats
from tracing.inputs import build_inputs
from tracing.registry import load_model


def text_inputs(lm, T: int):
    ids = torch.from_numpy(np.random.default_rng(0).integers(4, lm.text_config.vocab_size, (1, T)))
    return {"input_ids": ids, "attention_mask": torch.ones(1, T, dtype=torch.long)}, [], {}


def video_inputs(lm, T: int):
    per_frame = 144
    n = max(2, round((T - 60) / per_frame))
    frames = np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    inputs, layout = build_inputs(lm, frames, "Which way does the object move ?", ["left", "right", "up"])
    groups = sorted({(s.start, s.end) for s in layout.frames})
    spans = {"system": (layout.system.start, layout.system.end), "video": (layout.video.start, layout.video.end),
             "question": (layout.question.start, layout.question.end)}
    return inputs, groups, spans


def measure(fn, repeats: int) -> tuple[float, float]:
    """-> (fastest seconds, peak memory growth MiB of the first call)."""
    with PeakRSS() as m:
        t = time.perf_counter()
        fn()
        best = time.perf_counter() - t
    for _ in range(repeats - 1):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best, m.growth_mib


MAKERS = {"reasoner": text_inputs, "tiny-llava-next": video_inputs}


def one(name: str, T: int, method: str, repeats: int) -> dict:
    """One method at one length, in this (fresh) process: a process's
    allocator keeps freed memory, so a peak measured after another method's
    larger one would read as no growth at all."""
    lm = load_model(name, attn="sdpa")
    inputs, frames, spans = MAKERS[name](lm, T)
    n = inputs["input_ids"].shape[1]
    spec = StatsSpec(rows=torch.arange(n) >= n // 2, horizons=("end",), frames=frames, spans=spans)

    def sdpa():
        with torch.no_grad():
            lm.model(**inputs)

    def materialised():
        _set_impl(lm, "eager")
        try:
            with torch.no_grad():
                out = lm.model(**inputs, output_attentions=True)
            assert len(out.attentions) == lm.n_layers
        finally:
            _set_impl(lm, "sdpa")

    def streamed(kernel="auto"):
        with torch.no_grad(), attention_stats(lm, spec, kernel=kernel) as st:
            lm.model(**inputs)
        st.numpy()
        assert kernel == "torch" or set(st.path.values()) == {"c"}, st.path  # the bench measures the kernel

    with torch.no_grad():  # warm-up: lazy initialisation is in no timing
        lm.model(**build_warm(lm, name))
    secs, mib = measure({"sdpa": sdpa, "materialised": materialised, "streamed": streamed,
                         "torch": lambda: streamed("torch")}[method], repeats)
    return {"tokens": n, "seconds": secs, "mib": mib, "layers": lm.n_layers,
            "heads": lm.text_config.num_attention_heads}


def build_warm(lm, name):
    return MAKERS[name](lm, 256)[0]


def run_model(name: str, tokens: list[int], repeats: int, threads: int) -> dict[int, dict]:
    print(f"\n{name}")
    print(f"{'tokens':>7} {'sdpa s':>8} {'mat. s':>8} {'str. s':>8} {'torch s':>8} {'sdpa MiB':>9} {'mat. MiB':>9}"
          f" {'str. MiB':>9} {'mem str/mat':>11} {'time str/sdpa':>13} {'torch/sdpa':>10}")
    res = {}
    for T in tokens:
        r = {}
        for method in ("sdpa", "streamed", "torch", "materialised"):
            if method == "materialised":
                L, H, n = r["sdpa"]["layers"], r["sdpa"]["heads"], r["sdpa"]["tokens"]
                maps_gib = L * H * n * n * 4 / 2**30
                if maps_gib > psutil.virtual_memory().available / 2**30 / 2:
                    r["skipped"] = f"   (materialised skipped: its maps alone are {maps_gib:.0f} GiB)"
                    continue
            cmd = [sys.executable, "-m", "bench.attention", "--one", f"{name},{T},{method}",
                   "--repeats", str(repeats), "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench.attention: {name} at {T} tokens, {method}, failed:\n{done.stderr[-2000:]}")
            r[method] = json.loads(done.stdout.strip().splitlines()[-1])
        mat, st, sd = r.get("materialised"), r["streamed"], r["sdpa"]
        r["mem_ratio"] = st["mib"] / mat["mib"] if mat else float("nan")
        r["time_ratio"] = st["seconds"] / sd["seconds"]
        nan = float("nan")
        print(f"{sd['tokens']:>7} {sd['seconds']:>8.3f} {mat['seconds'] if mat else nan:>8.3f} {st['seconds']:>8.3f} "
              f"{r['torch']['seconds']:>8.3f} {sd['mib']:>9.0f} {mat['mib'] if mat else nan:>9.0f} {st['mib']:>9.0f} "
              f"{r['mem_ratio']:>11.3f} {r['time_ratio']:>13.2f} {r['torch']['seconds'] / sd['seconds']:>10.2f}"
              + r.get("skipped", ""))
        res[T] = r
    if len(tokens) > 1:
        a, b = res[tokens[0]], res[tokens[-1]]
        na, nb = a["streamed"]["tokens"], b["streamed"]["tokens"]
        print(f"streamed memory {na} -> {nb} tokens: x{b['streamed']['mib'] / max(a['streamed']['mib'], 1e-9):.1f} "
              f"(linear would be x{nb / na:.1f}, quadratic x{(nb / na) ** 2:.0f})")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1024,4096,16384",
                    help="sequence lengths to measure, comma-separated (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="forwards per method; the fastest counts (default: 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--models", default="reasoner,tiny-llava-next",
                    help="which of reasoner, tiny-llava-next to measure (default: %(default)s)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # MODEL,T,METHOD: one measurement in this process (JSON)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.one:
        name, T, method = a.one.split(",")
        print(json.dumps(one(name, int(T), method, a.repeats)))
        return
    tokens = [int(x) for x in a.tokens.split(",") if x.strip()]
    names = [x for x in a.models.split(",") if x]
    for name in names:
        if name not in MAKERS:
            ap.error(f"--models: unknown {name!r}; choose from {', '.join(MAKERS)}")
    print(f"each method in a fresh process, fastest of {a.repeats}; {a.threads} torch threads")
    out = {name: run_model(name, tokens, a.repeats, a.threads) for name in names}
    if 4096 in tokens:
        print()
        print(f"memory ratio at 4096 tokens: {max(r[4096]['mem_ratio'] for r in out.values()):.3f}")
        print(f"time ratio at 4096 tokens: {max(r[4096]['time_ratio'] for r in out.values()):.2f}")


if __name__ == "__main__":
    main()
