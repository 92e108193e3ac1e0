"""The TransformerLens backend: text LLMs as a ``HookedTransformer``, captured
at the same canonical hook names as the nnsight backend.

    acts = capture(lm, inputs, layout, ["resid_post", "pattern"], backend="transformer_lens")
    tl = to_hooked(lm)            # the HookedTransformer itself, for TL's own tools

Only text models (the ``causal_lm`` family): TransformerLens has no vision
towers, so a video model is refused. The HookedTransformer is built from the
Hugging Face model already loaded by the registry -- TL's own config and
weight conversion, no hand-written conversion -- and holds a copy of the
weights (memory: twice the model).
"""
from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path

import torch

from .capture import select
from .hooks import expand, resolve
from .layout import TokenLayout


def _times_final_norm_weight(tl, x):
    # TL's RMSNorm fires hook_normalized on x / rms, before the gain; our
    # ln_final.hook_normalized is the norm's output (what the unembedding reads).
    return x.to(tl.cfg.dtype) * tl.ln_final.w


# Our canonical name -> (TransformerLens hook name, what turns its value into ours).
# Layer-indexed rows hold '{l}'. The one table between the two naming schemes.
TL_HOOKS: dict[str, tuple[str, object]] = {
    "embed.hook_out": ("hook_embed", None),
    "blocks.{l}.hook_resid_pre": ("blocks.{l}.hook_resid_pre", None),
    "blocks.{l}.attn.hook_pattern": ("blocks.{l}.attn.hook_pattern", None),
    "blocks.{l}.hook_attn_out": ("blocks.{l}.hook_attn_out", None),
    "blocks.{l}.hook_mlp_out": ("blocks.{l}.hook_mlp_out", None),
    "blocks.{l}.hook_resid_post": ("blocks.{l}.hook_resid_post", None),
    "ln_final.hook_normalized": ("ln_final.hook_normalized", _times_final_norm_weight),
}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def tl_name(name: str) -> tuple[str, object, int | None]:
    """Canonical hook name -> (TL hook name, transform or None, layer or None)."""
    m = _LAYER_RE.match(name)
    key, layer = (f"blocks.{{l}}.{m.group(2)}", int(m.group(1))) if m else (name, None)
    if key not in TL_HOOKS:
        raise KeyError(f"hook {name!r} has no TransformerLens counterpart (it has: {', '.join(TL_HOOKS)}); "
                       f"vision-side hooks exist only with backend='nnsight'")
    tl, fn = TL_HOOKS[key]
    return tl.format(l=layer), fn, layer


def check_text_model(lm) -> None:
    """Raise a clear error for a model that TransformerLens cannot run."""
    if lm.family.frame_tokens is not None:
        raise ValueError(
            f"backend='transformer_lens': model {lm.name!r} ({lm.family.name}) is a video model, and "
            f"TransformerLens has no vision towers (HookedTransformer runs text LLMs only); "
            f"use backend='nnsight' for video models")


def to_hooked(lm):
    """The loaded text model as a ``HookedTransformer`` (built once, kept on ``lm``).

    Weight processing is off (fold_ln, center_writing_weights, center_unembed,
    fold_value_biases all False). TL's defaults fold the norm gains into the next
    weights and subtract means from every matrix that writes to the residual
    stream: the logits stay the same, but the residual stream, attention/MLP
    outputs and norm outputs are then in another basis (mean-centred, gains
    moved) and no longer equal the Hugging Face model's -- nor the nnsight
    backend's, nor what a probe trained on nnsight captures expects.
    """
    check_text_model(lm)
    hooked = lm.__dict__.get("_hooked")
    if hooked is not None:
        return hooked
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    hf = lm.model
    # TL's config conversion reads a checkpoint folder (from_pretrained accepts only
    # official names): give it the loaded model's config in a throwaway folder. Its
    # name must not contain 'llama'/'gemma': TL guesses those architectures from the name.
    with tempfile.TemporaryDirectory(prefix="chronolens-tl-config-") as d:
        if any(w in d.lower() for w in ("llama", "gemma")):
            raise RuntimeError(f"temporary folder {d!r}: TransformerLens would read an architecture into its "
                               f"name; set TMPDIR to a folder whose path contains neither 'llama' nor 'gemma'")
        hf_cfg = hf.config.to_dict()
        # TL picks its conversion by architecture; a model built from a config (tiny-*) names none.
        hf_cfg["architectures"] = [type(hf).__name__]
        Path(d, "config.json").write_text(json.dumps(hf_cfg, default=str))
        cfg = loading.get_pretrained_model_config(d, hf_cfg=hf_cfg, fold_ln=False,
                                                  device=lm.device, dtype=lm.dtype)
        state = loading.get_pretrained_state_dict(d, cfg, hf, dtype=lm.dtype)
    cfg.model_name, cfg.tokenizer_name = lm.name, None
    with warnings.catch_warnings():  # HookedTransformer is deprecated in 3.x; pinned on purpose (README)
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    hooked.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False,
                                       refactor_factored_attn_matrices=False)
    # nn.Module.to, not HookedTransformer.to (which prints); cfg.device is already lm.device.
    torch.nn.Module.to(hooked, lm.device).eval()
    # Set as an attribute, not through set_tokenizer, which would reload it by name
    # and change its padding/special tokens; inputs are token ids anyway.
    hooked.tokenizer = lm.tokenizer
    lm.__dict__["_hooked"] = hooked
    return hooked


def capture_hooked(lm, inputs: dict, layout: TokenLayout, hooks: list[str] | str, positions: str | None = "all",
                   layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """``tracing.capture.capture`` through TransformerLens: the same names,
    positions and shapes. Attention patterns need no eager attention here (TL
    always computes them). Only what is asked for is kept, at the chosen
    positions, and the forward stops after the last layer needed."""
    check_text_model(lm)
    names = expand(lm, hooks, layers)
    tl = to_hooked(lm)
    out: dict[str, torch.Tensor] = {}
    fwd, deepest = [], -1  # the last block whose hooks are wanted
    for n in names:
        tl_hook, fn, layer = tl_name(n)
        point = resolve(lm, n)

        def keep(x, hook, n=n, fn=fn, point=point):
            x = fn(tl, x) if fn else x
            out[n] = x if positions is None else select(x, layout, positions, point)

        fwd.append((tl_hook, keep))
        deepest = max(deepest, -1 if layer is None else layer)
    # stop_at_layer=k runs blocks [0, k) and skips the final norm and unembedding.
    stop = None if "ln_final.hook_normalized" in names else deepest + 1
    mask = inputs.get("attention_mask")
    with torch.no_grad():
        tl.run_with_hooks(inputs["input_ids"], attention_mask=mask, return_type=None, stop_at_layer=stop,
                          fwd_hooks=fwd)
    return {n: out[n] for n in names}
