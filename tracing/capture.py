"""Activation capture at canonical hook names, through nnsight (every model) or
TransformerLens (text models; tracing/hooked.py).

    acts = capture(lm, inputs, layout, ["blocks.3.hook_resid_post"], positions="frame_mean")
    acts = capture(lm, inputs, layout, ["resid_post"], backend="transformer_lens")  # text LLMs

Lazy: only what is asked for is kept, and only at the chosen positions. Both
backends give the same names, shapes and (to float rounding) values. A whole
dataset into an HDF5 cache: ``analyses.capture`` (``python -m analyses.capture``).
"""
from __future__ import annotations


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


if __name__ == "__main__":
    from analyses.cli import not_a_command

    raise SystemExit(not_a_command(
        "tracing.capture",
        "capture(lm, inputs, layout, hooks, positions) returns one prompt's activations at canonical hook names "
        "(from Python).",
        [("python -m analyses.capture",
          "a dataset's activations into an HDF5 cache, on the run engine (resume, --overwrite, --no-progress, "
          "--workers); see its --help")]))
