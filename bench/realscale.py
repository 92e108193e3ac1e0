"""One family at its real widths: per-sample time and peak memory of capture and
of a Map the Flow knockout sweep, measured with the decoder cut to a few
layers and extrapolated to the published depth.

    python -m bench.realscale [--family llava_next_video] [--text-layers 2] [--frames 8] [--threads 2]
                              [--checkpoint DIR]

The checkpoint is built by ``tracing.published.build_checkpoint(width="real")``
(published vision tower and widths, random weights, the real tokenizer) into a
temporary folder, unless ``--checkpoint`` names one built before. One prompt of
``--frames`` frames at the published frame size. Measured:

- forward: one plain forward (sdpa), split into the vision side (up to the
  LLM's input) and the decoder layers;
- capture: every layer's residual stream at frame means through nnsight;
- sweep: the flow sweep (cross_frame, video_question, video_last,
  question_last in a window of k layers around every layer) with
  ``KnockoutRunner``; its cost per recomputed token-layer.

Extrapolated to the full depth L (the published ``num_hidden_layers``): the
vision side is unchanged, decoder time scales with the layer count, the sweep
with the token-layers that its windows recompute at depth L (counted exactly
from the layout, as the runner plans them), memory with the parameter count.
Peak memory is the process's resident set sampled every 5 ms during each
stage (host memory; on a GPU the peak allocated GPU memory is printed too).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from tracing.capture import capture
from tracing.inputs import build_inputs
from tracing.edges import edges
from tracing.knockout import KnockoutRunner, default_window, window_sweep
from tracing.published import PUBLISHED, build_checkpoint
from tracing.registry import load_model

EDGE_TYPES = ("cross_frame", "video_question", "video_last", "question_last")
QUESTION = "Which way does the object move from the beginning to the end?"
OPTIONS = ["left and up", "right and down", "up fast", "down slow"]
GIB = 2 ** 30


class PeakRSS:
    """Peak resident memory of this process while the block runs."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.base = self.proc.memory_info().rss

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.005)

        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def sweep_conditions(layout, n_layers: int, k: int):
    return [c for kind in EDGE_TYPES for c in window_sweep(edges(kind, layout), n_layers, k)]


def sweep_token_layers(layout, n_layers: int, k: int) -> int:
    """Token-layers a sweep at depth ``n_layers`` recomputes: from each window's
    first layer on, the positions from the edge set's first blocked query to the end."""
    end = layout.n_tokens
    total = 0
    for kind in EDGE_TYPES:
        es = edges(kind, layout)
        q0 = es.first_query(end)
        total += sum((end - q0) * (n_layers - c.layers[0]) for c in window_sweep(es, n_layers, k))
    return total


def main(argv=None) -> dict:
    from analyses.cli import HelpFormatter, user_path

    ap = argparse.ArgumentParser(prog="python -m bench.realscale", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--family", default="llava_next_video", choices=sorted(PUBLISHED),
                    help="the family whose published configuration is built")
    ap.add_argument("--text-layers", type=int, default=2, help="decoder layers kept (the rest is extrapolated)")
    ap.add_argument("--frames", type=int, default=8, help="frames of the one prompt, at the published frame size")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--checkpoint", default=None, type=user_path,
                    help="a folder built before by tracing.published (else a temporary one)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--json", default=None, type=user_path, help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    tmp = None
    if a.checkpoint is None:
        tmp = tempfile.TemporaryDirectory(prefix="realscale-")
        t0 = time.perf_counter()
        folder = build_checkpoint(a.family, Path(tmp.name) / "ckpt", width="real", text_layers=a.text_layers)
        print(f"built {a.family} at real widths, {a.text_layers} decoder layers: {time.perf_counter() - t0:.0f} s")
    else:
        folder = Path(a.checkpoint)
    with PeakRSS() as load:
        lm = load_model(str(folder), attn="sdpa", device=a.device, dtype=a.dtype)
    full_depth = PUBLISHED[a.family]["text"]["num_hidden_layers"]
    L = lm.n_layers
    params = sum(p.numel() for p in lm.model.parameters())
    decoder = sum(p.numel() for p in lm.layers.parameters())
    params_full = params + decoder / L * (full_depth - L)

    side = lm.config.vision_config.image_size
    frames = np.random.default_rng(0).integers(0, 256, (a.frames, side, side, 3), dtype=np.uint8)
    with PeakRSS() as build:
        inputs, layout = build_inputs(lm, frames, QUESTION, OPTIONS, answer=0)
    T = layout.n_tokens

    # The vision side alone: the forward stopped at the first decoder layer's input.
    class _Stop(Exception):
        pass

    def stop(*_):
        raise _Stop

    hook = lm.layers[0].register_forward_pre_hook(stop)
    with torch.no_grad(), PeakRSS() as vision:
        try:
            lm.model(**inputs)
        except _Stop:
            pass
    hook.remove()
    with torch.no_grad(), PeakRSS() as forward:
        lm.model(**inputs, logits_to_keep=1)
    per_layer = max(forward.seconds - vision.seconds, 0.0) / L
    with PeakRSS() as cap:
        capture(lm, inputs, layout, ["resid_post"], positions="frame_mean")
    k = default_window(full_depth)
    runner = KnockoutRunner(lm, inputs, layout)
    conds = sweep_conditions(layout, L, min(k, L))
    with PeakRSS() as sweep:
        runner.logits(conds)
    measured_tl = runner.last_stats["token_layers"]
    per_token_layer = sweep.seconds / max(measured_tl, 1)
    full_tl = sweep_token_layers(layout, full_depth, k)
    n_full_conds = len(sweep_conditions(layout, full_depth, k))
    clean_full = vision.seconds + per_layer * full_depth

    gib = lambda b: b / GIB  # noqa: E731
    res = {
        "family": a.family, "text_layers": L, "full_depth": full_depth, "tokens": T, "frames": a.frames,
        "params": params, "params_full": params_full, "threads": a.threads,
        "load_s": load.seconds, "load_peak_gib": gib(load.peak),
        "inputs_s": build.seconds,
        "vision_s": vision.seconds, "forward_s": forward.seconds, "decoder_layer_s": per_layer,
        "forward_peak_gib": gib(forward.peak),
        "capture_s": cap.seconds, "capture_peak_gib": gib(cap.peak),
        "sweep_conditions": len(conds), "sweep_s": sweep.seconds, "sweep_peak_gib": gib(sweep.peak),
        "sweep_token_layers": measured_tl, "sweep_s_per_token_layer": per_token_layer,
        "full_forward_s": clean_full,
        "full_capture_s": clean_full * cap.seconds / forward.seconds,
        "full_sweep_conditions": n_full_conds, "full_sweep_token_layers": full_tl,
        "full_sweep_s": clean_full + per_token_layer * full_tl,
        "full_weights_gib_float32": gib(params_full * 4), "full_weights_gib_bfloat16": gib(params_full * 2),
    }
    print(f"{a.family}: {params / 1e9:.2f}B parameters with {L} decoder layers "
          f"({params_full / 1e9:.2f}B at the published {full_depth}); one prompt of {a.frames} frames = {T} tokens; "
          f"{a.threads} threads, {a.dtype}, {a.device}")
    print(f"load: {load.seconds:.1f} s, peak RSS {gib(load.peak):.2f} GiB; inputs built in {build.seconds:.2f} s")
    print(f"forward: {forward.seconds:.2f} s (vision side {vision.seconds:.2f} s, {per_layer:.3f} s per decoder layer), "
          f"peak RSS {gib(forward.peak):.2f} GiB")
    print(f"capture (every layer's resid_post at frame means): {cap.seconds:.2f} s per sample, "
          f"peak RSS {gib(cap.peak):.2f} GiB")
    print(f"knockout sweep, {len(conds)} conditions (window {min(k, L)}): {sweep.seconds:.2f} s per sample, "
          f"peak RSS {gib(sweep.peak):.2f} GiB, {measured_tl} token-layers ({per_token_layer * 1e3:.3f} ms each)")
    print(f"extrapolated to {full_depth} layers: forward {clean_full:.1f} s, capture {res['full_capture_s']:.1f} s, "
          f"sweep of {n_full_conds} conditions (window {k}) {res['full_sweep_s']:.0f} s per sample; "
          f"weights {res['full_weights_gib_float32']:.1f} GiB float32 / {res['full_weights_gib_bfloat16']:.1f} GiB bfloat16")
    if torch.cuda.is_available() and lm.device.type == "cuda":
        res["cuda_peak_gib"] = gib(torch.cuda.max_memory_allocated(lm.device))
        print(f"peak GPU memory allocated: {res['cuda_peak_gib']:.2f} GiB")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return res


if __name__ == "__main__":
    main()
