"""Activation capture at canonical hook names, through nnsight (every model) or
TransformerLens (text models; tracing/hooked.py).

    acts = capture(lm, inputs, layout, ["blocks.3.hook_resid_post"], positions="frame_mean")
    acts = capture(lm, inputs, layout, ["resid_post"], backend="transformer_lens")  # text LLMs

Lazy: only what is asked for is kept, and only at the chosen positions. Both
backends give the same names, shapes and (to float rounding) values.
Also the CLI that streams captures of a dataset into an HDF5 cache:
``python -m tracing.capture --model organism --hooks resid_post --positions frame_mean``.
"""
from __future__ import annotations

import json

import torch
from nnsight import NNsight

from .hooks import HookPoint, expand, resolve
from .layout import TokenLayout

POSITIONS = ("all", "video", "frame_mean", "frames", "last")
BACKENDS = ("nnsight", "transformer_lens")


def _envoy(nm, path: str):
    m = nm
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


def select(x: torch.Tensor, layout: TokenLayout, positions: str, point: HookPoint) -> torch.Tensor:
    """Pick positions from one captured tensor (as ``capture(..., positions=None)`` gives it).

    LLM-side hooks give [1, T, d] (patterns [1, H, T, T]); the result drops the
    batch axis: 'all' [T, d], 'video' [n_video, d], 'frame_mean' [n_groups, d]
    (mean over each frame's tokens), 'frames' [n_groups, tokens_per_group, d],
    'last' [d], or any TokenLayout span name [len, d]. ``projector.hook_out``
    keeps the video tokens only: 'all'/'video' are its rows at the video token
    positions [n_video_tokens, d] (OneVision's newline row last). Vision-side
    hooks (rows are encoder features, not LLM positions) take 'all'/'video'
    (every row, in frame order) and 'frame_mean'/'frames'.
    """
    if point.vision_side:
        rows = x.reshape(-1, x.shape[-1])
        groups = len(layout.frame_groups)
        if positions in ("all", "video"):
            return rows
        per = rows.reshape(groups, -1, rows.shape[-1])
        if positions == "frames":
            return per
        if positions == "frame_mean":
            return per.mean(1)
        raise ValueError(f"positions={positions!r} is not defined for vision-side hook {point.name!r}; "
                         f"use all, video, frames or frame_mean")
    if point.video_rows:
        if positions in ("all", "video"):
            return x[0, layout.video_token_positions]
        if positions not in ("frames", "frame_mean"):
            raise ValueError(f"positions={positions!r} is not defined for {point.name!r} (the video tokens' rows); "
                             f"use all, video, frames or frame_mean")
    if point.item == 1:  # attention pattern [1, H, Tq, Tk]: positions select query rows
        if x is None:
            raise RuntimeError(f"{point.name}: no attention probabilities; load the model with attn='eager'")
        x = x[0].transpose(0, 1)  # [Tq, H, Tk]
    else:
        x = x[0]
    if positions == "all":
        out = x
    elif positions == "last":
        out = x[layout.last]
    elif positions == "video":
        out = x[layout.video.start : layout.video.end]
    elif positions in ("frame_mean", "frames"):
        if not layout.frame_groups:
            raise ValueError(f"positions={positions!r}: this prompt has no frames (a text prompt?); "
                             f"use all, last or a TokenLayout span name")
        per = torch.stack([x[s.start : s.end] for s in layout.frame_groups])
        out = per.mean(1) if positions == "frame_mean" else per
    else:
        idx = layout.positions(positions)
        out = x[idx]
    return out.transpose(0, 1) if point.item == 1 and out.dim() == 3 else out


def _raster_rows(lm, inputs: dict, x: torch.Tensor) -> torch.Tensor:
    """Vision-side rows [N, d] in frame and raster order. Qwen2.5-VL's tower
    works in windows and hands the merger its rows (groups of merge^2 patches)
    in window order; Hugging Face restores raster order only after the merger,
    so the same permutation is undone here."""
    x = x.reshape(-1, x.shape[-1])
    if not lm.family.vision_window_order:
        return x
    from transformers.vision_utils import get_vision_window_index

    vc = lm.config.vision_config
    window, _ = get_vision_window_index(inputs["video_grid_thw"], spatial_merge_size=vc.spatial_merge_size,
                                        window_size=vc.window_size, patch_size=vc.patch_size)
    unit = vc.spatial_merge_size ** 2
    return x.reshape(-1, unit, x.shape[-1])[torch.argsort(window.to(x.device))].reshape(-1, x.shape[-1])


def capture(lm, inputs: dict, layout: TokenLayout, hooks: list[str] | str, positions: str | None = "all",
            layers: list[int] | None = None, backend: str = "nnsight") -> dict[str, torch.Tensor]:
    """Run one forward pass and return {hook name: tensor at the chosen positions}.

    hooks: canonical names or shorthands (see tracing/hooks.py). Patterns need
    the model loaded with attn='eager' under nnsight. backend: 'nnsight' (every
    model) or 'transformer_lens' (text models only: TL has no vision towers).
    positions=None returns each tensor before ``select`` (LLM-side hooks with
    their batch axis; vision-side rows in raster order), to select several
    views from one pass. The unembedding runs at the last position only
    (Hugging Face's ``logits_to_keep``): no hook reads the logits, and at a
    real vocabulary all positions' logits cost more than the rest of the pass.
    """
    if backend == "transformer_lens":
        from .hooked import capture_hooked

        return capture_hooked(lm, inputs, layout, hooks, positions, layers)
    if backend != "nnsight":
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    names = expand(lm, hooks, layers)
    points = [resolve(lm, n) for n in names]
    # One wrapper per model: building it walks the module tree every time.
    nm = lm.__dict__.get("_nnsight")
    if nm is None:
        nm = lm.__dict__["_nnsight"] = NNsight(lm.model)
    saved = []
    with torch.no_grad(), nm.trace(**inputs, logits_to_keep=1):
        # Requested in execution order (nnsight raises OutOfOrderError otherwise);
        # two hooks on one module (attention output and pattern) share one access.
        cache: dict[tuple[str, str], object] = {}
        for p in points:
            key = (p.path, p.io)
            if key not in cache:
                env = _envoy(nm, p.path)
                cache[key] = (env.input if p.io == "input" else env.output).save()
            saved.append(cache[key])
    out = {}
    for p, v in zip(points, saved):
        v = v[p.item] if p.item is not None else v
        if p.vision_side:
            v = _raster_rows(lm, inputs, v)
        out[p.name] = v if positions is None else select(v, layout, positions, p)
    return out


# -- streaming a dataset into an HDF5 cache -----------------------------------

def _shape_bound(shape: tuple, layout: TokenLayout, positions: str, point: HookPoint, max_layout: TokenLayout):
    """Per-sample shape with the token axis widened to the largest sample's."""
    if point.vision_side or point.video_rows or positions == "last":
        return shape
    n = {"all": max_layout.n_tokens, "video": len(max_layout.video)}.get(positions)
    if positions in ("frame_mean", "frames"):
        n = len(max_layout.frame_groups)
    if positions not in ("all", "video", "frame_mean", "frames"):
        n = max(len(max_layout.positions(positions)), 1)
    if point.item == 1 and positions == "all":  # pattern [H, T, T]
        return (shape[0], max_layout.n_tokens, max_layout.n_tokens)
    if point.item == 1:
        return (shape[0], n, max_layout.n_tokens)
    return (n, *shape[1:])


def capture_dataset(lm, samples, hooks, out, positions: str = "all", layers=None, float16: bool = False,
                    dataset: str = "synthetic", config: dict | None = None, progress: bool = True,
                    backend: str = "nnsight", context=None):
    """Capture ``hooks`` for every sample into the HDF5 cache ``out``, one sample
    at a time (memory flat in the number of samples). A re-run with the same
    configuration resumes; another configuration is refused by the store.

    context: None, or a function sample -> text shown in place of the video
    (e.g. ``tasks.synthetic.caption_prompt``, the T3 text form): what a
    text-only model reads. backend: see ``capture``.
    Returns the list of (sample id, reason) that were skipped."""
    from tqdm import tqdm

    from .inputs import build_sample_inputs
    from .store import CacheWriter, SampleMeta

    if backend == "transformer_lens":
        from .hooked import check_text_model

        check_text_model(lm)  # before anything is built or written
    names = expand(lm, hooks, layers)
    points = {n: resolve(lm, n) for n in names}

    def build(s):
        return build_sample_inputs(lm, s, context=None if context is None else context(s))

    # Layouts first (inputs are built, no forward; a few ms a sample) so that every
    # hook's largest shape is known before the file is laid out. Only the layouts
    # are kept, so memory does not grow with the sample count.
    prepared, skipped = [], []
    for s in samples:
        try:
            prepared.append((s, build(s)[1]))
        except ValueError as e:
            skipped.append((s.id, str(e)))
    if not prepared:
        raise ValueError(f"no sample could be prepared; first problem: {skipped[:1]}")
    metas = [SampleMeta(s.id, s.task, int(s.answer), int(s.answer), {"options": s.options, "question": s.question})
             for s, _ in prepared]
    cfg = {"hooks": names, "positions": positions, **(config or {})}
    if backend != "nnsight":  # only then, so that caches written before backends existed still resume
        cfg["backend"] = backend

    def run(i):
        inputs, layout = build(prepared[i][0])
        acts = capture(lm, inputs, layout, names, positions, backend=backend)
        # .numpy() shares the tensor's memory: no copy for float32 on the CPU
        return {k: v.detach().float().cpu().numpy() for k, v in acts.items()}, layout

    # The largest sample bounds every hook's shape. Rather than a throwaway probe
    # forward, it is captured first and written like any other sample; a resumed
    # run reads the shapes from its file and needs neither.
    big = max(range(len(prepared)), key=lambda i: prepared[i][1].n_tokens)
    first, spec = None, _file_hooks(out)
    if spec is None:
        first = run(big)
        spec = {n: (_shape_bound(v.shape, first[1], positions, points[n], first[1]),
                    "float16" if float16 else "float32") for n, v in first[0].items()}
    with CacheWriter.open(out, lm.name, lm.fingerprint, dataset, cfg, metas, hooks=spec, float16=float16) as w:
        todo = w.pending()
        if first is not None and big in todo:
            todo.remove(big)
            todo.insert(0, big)
        for i in tqdm(todo, desc=f"capture -> {out}", unit="sample", disable=not progress):
            if first is not None and i == big:
                (acts, layout), first = first, None
            else:
                acts, layout = run(i)
            w.write_sample(i, acts, layout.to_dict())
    return skipped


def _file_hooks(out):
    """The hook shapes an existing cache was laid out with, or None (no file, or
    not a cache: CacheWriter.open then names the problem)."""
    from .store import CacheReader, StoreError

    try:
        hooks = CacheReader(out).attrs.get("hooks")
    except (FileNotFoundError, StoreError):
        return None
    spec = json.loads(hooks) if isinstance(hooks, str) else None
    return {k: (tuple(v[0]), v[1]) for k, v in spec.items()} if spec else None


def main(argv=None):
    import argparse

    from .registry import available, load_model, pixel_budget

    ap = argparse.ArgumentParser(
        prog="python -m tracing.capture",
        description="Capture activations of a model on a dataset into an HDF5 cache (resumable).",
    )
    ap.add_argument("--model", default="organism", help=f"registry name, hub id or local folder ({', '.join(available())})")
    ap.add_argument("--dataset", default="synthetic", help="synthetic | tomato | tvbench")
    ap.add_argument("--data-dir", default=None, help="folder of a local benchmark copy (tomato, tvbench)")
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all of the dataset)")
    ap.add_argument("--limit", type=int, default=8, help="samples per task for synthetic, total cap otherwise")
    ap.add_argument("--frames", type=int, default=8, help="frames per video")
    ap.add_argument("--hooks", default="resid_post", help="comma-separated hook names or shorthands "
                    "(embed, vision, projector, resid_pre, resid_post, attn_out, mlp_out, pattern, ln_final)")
    ap.add_argument("--layers", default=None, help="comma-separated layer indices for per-layer hooks (default: all)")
    ap.add_argument("--positions", default="frame_mean", help=f"{', '.join(POSITIONS)} or a TokenLayout span name")
    ap.add_argument("--float16", action="store_true", help="store activations as float16")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (synthetic)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    ap.add_argument("--device-map", default=None, help="'auto' to spread a large model over GPUs")
    ap.add_argument("--video-pixels", default=None, type=pixel_budget, metavar="MIN,MAX",
                    help="Qwen families: pixels per frame after resizing (default: the checkpoint's video processor, "
                         "else Hugging Face's video defaults)")
    ap.add_argument("--backend", default="nnsight", choices=BACKENDS,
                    help="nnsight (every model) or transformer_lens (text models only; no vision towers in TL)")
    ap.add_argument("--out", default=None, help="HDF5 file (default cache/capture-<model>-<dataset>.h5)")
    a = ap.parse_args(argv)

    from tasks.datasets import load_dataset  # the CLI alone reads datasets; the core takes Samples
    from tasks.synthetic import caption_prompt

    pattern = "pattern" in a.hooks and a.backend == "nnsight"  # TL computes patterns itself
    lm = load_model(a.model, device=a.device, dtype=a.dtype, attn="eager" if pattern else "sdpa",
                    device_map=a.device_map, video_pixels=a.video_pixels)
    if a.backend == "transformer_lens":
        from .hooked import check_text_model

        try:
            check_text_model(lm)
        except ValueError as e:
            ap.error(str(e))
    # A text-only model reads the video as its per-frame captions (the T3 text form).
    context = caption_prompt if lm.family.frame_tokens is None else None
    tasks = a.tasks.split(",") if a.tasks else None
    res = load_dataset(a.dataset, data_dir=a.data_dir, n_frames=a.frames, limit=a.limit, tasks=tasks, seed=a.seed)
    for item, path, why in res.problems:
        print(f"skipped {item} ({path}): {why}")
    layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    out = a.out or f"cache/capture-{a.model.replace('/', '_')}-{a.dataset}.h5"
    cfg = {"tasks": tasks, "limit": a.limit, "frames": a.frames, "seed": a.seed, "dtype": a.dtype,
           "layers": layers, "data_dir": a.data_dir}
    if a.video_pixels:  # only then: caches written before the flag existed still resume
        cfg["video_pixels"] = list(a.video_pixels)
    skipped = capture_dataset(lm, res.samples, a.hooks, out, a.positions, layers, a.float16, a.dataset, cfg,
                              backend=a.backend, context=context)
    for sid, why in skipped:
        print(f"skipped {sid}: {why}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
