"""Map the Flow's knockout sweep: the fast engine against the paper's method.

    python -m bench.flow [--model tiny-llava-next] [--samples 8] [--frames 8] [--k K] [--threads 1]
                         [--naive-llm-only] [--fast-attn eager|sdpa]

The sweep: cross_frame, video_question, video_last and question_last, each
in a window of k layers around every layer (k = default_window(L) unless
given), on ``--samples`` prompts with random 96 px frames (on tiny-llava-next:
8 frames x 144 tokens + ~60 text tokens).

- naive: ``KnockoutRunner.naive_run``, as the paper's code: one full eager
         forward (video encoder and LLM) per condition, the window's layers
         patched to use a [1, H, T, T] mask. ``--naive-llm-only`` reuses the
         video features and runs only the LLM, a stronger baseline.
- fast:  ``KnockoutRunner`` (clean run once per sample, then only the affected
         positions from each window's first layer on), under the same eager
         attention unless ``--fast-attn sdpa``.

Both are timed in this process, sample by sample, so that load from other
processes falls on both alike. Prints the times and their ratio, where the
fast time goes, the largest probability difference between the two, and the
token-layers recomputed against the minimum the knockouts require.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from tracing.inputs import build_inputs
from tracing.edges import edges
from tracing.knockout import KnockoutRunner, default_window, window_sweep
from tracing.registry import load_model

EDGE_TYPES = ("cross_frame", "video_question", "video_last", "question_last")
QUESTION = "Which way does the object move from the beginning to the end ?"
OPTIONS = ["left and up", "right and down", "up fast", "down slow"]


def _set_attn(lm, impl: str) -> None:
    lm.model.set_attn_implementation({"text_config": impl} if hasattr(lm.config, "text_config") else impl)


def main(argv=None) -> dict:
    from analyses.cli import RawHelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__, formatter_class=RawHelpFormatter)
    ap.add_argument("--model", default="tiny-llava-next",
                    help="video model: registry name (see python -m analyses.flow --help), hub id or local folder")
    ap.add_argument("--samples", type=int, default=8, help="prompts, each of random frames, timed one by one")
    ap.add_argument("--frames", type=int, default=8, help="frames per prompt")
    ap.add_argument("--size", type=int, default=96, help="frame side in pixels")
    ap.add_argument("--k", type=int, default=None,
                    help="knockout window in layers (default: the paper's 9 for 32+ layers, else about L/4)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--naive-llm-only", action="store_true",
                    help="the naive side reuses the video features and runs only the LLM per condition (a "
                         "stronger baseline than the paper's full forward)")
    ap.add_argument("--fast-attn", choices=("eager", "sdpa"), default="eager",
                    help="attention kernel of the fast path (the naive path is always eager)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    lm = load_model(args.model, attn="eager")
    vocab = range(lm.model.get_output_embeddings().weight.shape[0])
    L = lm.n_layers
    k = default_window(L) if args.k is None else args.k
    rng = np.random.default_rng(0)
    t_naive = 0.0
    parts = defaultdict(float)  # fast time by part
    diff = rel = 0.0
    tl = {"token_layers": 0, "minimum": 0, "naive": 0}
    n_cond = 0
    for s in range(args.samples):
        frames = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
        inputs, layout = build_inputs(lm, frames, QUESTION, OPTIONS, answer=s % len(OPTIONS))
        conds = {e: window_sweep(edges(e, layout), L, k) for e in EDGE_TYPES}
        n_cond += sum(map(len, conds.values()))

        _set_attn(lm, args.fast_attn)
        t = time.perf_counter()
        runner = KnockoutRunner(lm, inputs, layout)
        parts["clean run"] += time.perf_counter() - t
        fast = []
        for e in EDGE_TYPES:  # one edge type at a time, to see where the time goes
            t = time.perf_counter()
            fast.append(runner.run(conds[e], token_ids=vocab))
            parts[e] += time.perf_counter() - t
            for key in tl:
                tl[key] += runner.last_stats[key]
        fast = torch.cat(fast)

        _set_attn(lm, "eager")
        t = time.perf_counter()
        naive = runner.naive_run([c for e in EDGE_TYPES for c in conds[e]], token_ids=vocab,
                                 reencode=not args.naive_llm_only)
        t_naive += time.perf_counter() - t
        diff = max(diff, (fast - naive).abs().max().item())
        # The option letters alone, relative: the random tiny model gives some ~1e-6.
        opt = list(layout.option_ids)
        rel = max(rel, ((fast[:, opt] - naive[:, opt]).abs() / naive[:, opt].clamp_min(1e-30)).max().item())

    t_fast = sum(parts.values())
    T = layout.n_tokens
    naive_what = "LLM only, video features reused" if args.naive_llm_only else "video encoder + LLM"
    print(f"model {args.model}: {L} layers, T = {T} tokens ({args.frames} frames x {len(layout.frames[0])} + "
          f"{T - args.frames * len(layout.frames[0])} text tokens), window k = {k}, torch threads = {args.threads}")
    print(f"sweep: {len(EDGE_TYPES)} edge types x {L} window centres x {args.samples} samples = {n_cond} conditions")
    print(f"naive (one full eager forward per condition, {naive_what}): {t_naive:8.2f} s")
    print(f"fast  (KnockoutRunner, {args.fast_attn} attention):{' ' * 28}{t_fast:8.2f} s")
    print(f"speedup: {t_naive / t_fast:.1f}x")
    print(f"largest |p_fast - p_naive| over the whole vocabulary: {diff:.1e}; "
          f"largest relative difference of an option letter's probability: {rel:.1e}")
    print("fast time by part: " + ", ".join(f"{e} {v:.2f} s ({100 * v / t_fast:.0f}%)" for e, v in parts.items()))
    print(f"token-layers recomputed: {tl['token_layers']:,}; minimum the knockouts require (positions from the "
          f"first blocked query on, layers from the first blocked layer on): {tl['minimum']:,}; "
          f"naive: {tl['naive']:,} ({tl['naive'] / max(tl['token_layers'], 1):.1f}x)")
    return {"speedup": t_naive / t_fast, "max_diff": diff, **tl}


if __name__ == "__main__":
    main()
