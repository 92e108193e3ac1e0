"""Canonical hook names (TransformerLens style) -> module points of a family.

    embed.hook_out               token embeddings (the embedding module's output;
                                 video positions hold the placeholder's embedding)
    vision.hook_out              vision encoder features entering the projector, frame after
                                 frame in raster order (OneVision: before its pooling; Qwen:
                                 patches, 4 per merged token; Qwen2.5-VL's window order undone)
    projector.hook_out           what the LLM reads at its video positions, one row per video
                                 token in order (after OneVision's pooling, with its newline
                                 row last; Qwen2.5-VL in raster order): the rows of the
                                 language model's input embeddings at those positions
    blocks.{l}.hook_resid_pre    residual stream entering layer l
    blocks.{l}.attn.hook_pattern attention probabilities [heads, q, k] (eager only, on request)
    blocks.{l}.hook_attn_out     attention block output (before the residual add)
    blocks.{l}.hook_mlp_out      MLP output (before the residual add)
    blocks.{l}.hook_resid_post   residual stream leaving layer l
    ln_final.hook_normalized     final norm output
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Execution order inside a forward pass: nnsight needs values requested in it.
_BLOCK_ORDER = {"hook_resid_pre": 0, "attn.hook_pattern": 1, "hook_attn_out": 2, "hook_mlp_out": 3, "hook_resid_post": 4}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|attn\.hook_pattern|hook_attn_out|hook_mlp_out|hook_resid_post)$")
SHORTHANDS = {
    "embed": "embed.hook_out",
    "vision": "vision.hook_out",
    "projector": "projector.hook_out",
    "ln_final": "ln_final.hook_normalized",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "pattern": "blocks.{l}.attn.hook_pattern",
}


@dataclass(frozen=True)
class HookPoint:
    name: str
    path: str  # dotted module path from the top model
    io: str  # 'input' | 'output'
    item: int | None  # index into a tuple output (attention returns (out, weights))
    order: tuple[int, int]
    vision_side: bool = False  # rows are vision features, not LLM positions
    video_rows: bool = False  # LLM positions, restricted to the video tokens


def resolve(lm, name: str) -> HookPoint:
    """A canonical hook name -> where it lives in this model."""
    fam = lm.family
    if name == "embed.hook_out":
        return HookPoint(name, fam.embed, "output", None, (0, 0))
    if name in ("vision.hook_out", "projector.hook_out"):
        if fam.vision_out is None:
            raise KeyError(f"hook {name!r}: model {lm.name!r} ({fam.name}) has no vision side")
        if name == "vision.hook_out":
            return HookPoint(name, fam.vision_out[0], fam.vision_out[1], None, (1, 0), vision_side=True)
        # Read where the LLM reads it: whatever a family does after its projector
        # (pooling, a newline row, restoring raster order) is then already done.
        return HookPoint(name, f"{fam.layers}.0", "input", None, (2, 0), video_rows=True)
    if name == "ln_final.hook_normalized":
        return HookPoint(name, fam.final_norm, "output", None, (10**9, 0))
    m = _BLOCK_RE.match(name)
    if not m:
        raise KeyError(f"unknown hook name {name!r}; see tracing/hooks.py for the canonical names")
    l, kind = int(m.group(1)), m.group(2)
    if not 0 <= l < lm.n_layers:
        raise KeyError(f"hook {name!r}: layer {l} out of range (model has {lm.n_layers} layers)")
    layer = f"{fam.layers}.{l}"
    order = (3 + l, _BLOCK_ORDER[kind])
    if kind == "hook_resid_pre":
        return HookPoint(name, layer, "input", None, order)
    if kind == "hook_resid_post":
        return HookPoint(name, layer, "output", None, order)
    if kind == "attn.hook_pattern":
        return HookPoint(name, f"{layer}.self_attn", "output", 1, order)
    if kind == "hook_attn_out":
        return HookPoint(name, f"{layer}.self_attn", "output", 0, order)
    return HookPoint(name, f"{layer}.mlp", "output", None, order)


def expand(lm, spec: list[str] | str, layers: list[int] | None = None) -> list[str]:
    """Hook names from full names or shorthands ('resid_post' -> every chosen layer)."""
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s]
    layers = list(range(lm.n_layers)) if layers is None else layers
    out: list[str] = []
    for s in spec:
        full = SHORTHANDS.get(s, s)
        names = [full.format(l=l) for l in layers] if "{l}" in full else [full]
        for n in names:
            resolve(lm, n)  # fail early on a bad name
            if n not in out:
                out.append(n)
    return sorted(out, key=lambda n: resolve(lm, n).order)
