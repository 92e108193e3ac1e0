"""Per-layer attention overrides through transformers' attention registry.

One implementation name, ``chronolens``, is registered once with
``AttentionInterface`` and ``AttentionMaskInterface``. While
``attention_overrides(lm, {layer: fn})`` is active the LLM's attention
implementation is switched to it; each layer then calls

    fn(base, module, query, key, value, attention_mask, **kwargs)

where ``base`` is the attention the model had before (its own eager function
or ``sdpa``) and ``attention_mask`` is an additive float mask ``[B, 1, Q, K]``
(0 = attend, ``finfo(dtype).min`` = blocked; it broadcasts over heads). Layers
without an override call ``base`` unchanged.

Why the mask builder is registered too: without it transformers hands the
layers ``attention_mask=None`` for an unknown implementation, and sdpa would
then assume a square causal mask, which is wrong once queries are fewer than
keys (generation with a cache). ``eager_mask`` materialises the causal (and
padding, and sliding-window) mask as a float tensor under both eager and sdpa.

An override that accepts what the model's own implementation gets may ask
for it (``native_mask=True``): under sdpa the layers then see sdpa's own
mask, ``None`` for a plain causal batch (sdpa's ``is_causal`` path, no
``[T, T]`` tensor) or a boolean one (True = attend) with padding; under eager
nothing changes. Attention statistics use this: a float ``[T, T]`` mask is
quadratic memory they otherwise avoid.

The state lives on the attention modules of the one model inside the
``with`` block (attribute ``_chronolens_attn``) and is removed on exit: the
registered function itself holds nothing.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

IMPL = "chronolens"
IMPL_SDPA_MASK = "chronolens_sdpa_mask"  # the same dispatch, with sdpa's own mask builder
_STATE = "_chronolens_attn"

Override = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def _dispatch(module, query, key, value, attention_mask, **kwargs):
    state = getattr(module, _STATE, None)
    if state is None:
        raise RuntimeError(
            f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) runs under the {IMPL!r} attention "
            f"implementation outside an attention_overrides() block; restore it with "
            f"model.set_attn_implementation({{'text_config': 'eager'}})"
        )
    base, fn = state
    if fn is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    return fn(base, module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(IMPL, _dispatch)
AttentionMaskInterface.register(IMPL, eager_mask)
AttentionInterface.register(IMPL_SDPA_MASK, _dispatch)
AttentionMaskInterface.register(IMPL_SDPA_MASK, sdpa_mask)


def attention_module(layer: torch.nn.Module) -> torch.nn.Module:
    """The self-attention module of a decoder layer (``self_attn`` in every supported family)."""
    attn = getattr(layer, "self_attn", None)
    if attn is None:
        raise ValueError(f"decoder layer {type(layer).__name__} has no self_attn module; add its path to tracing/attention.py")
    return attn


def base_attention(impl: str, attn: torch.nn.Module) -> Callable:
    """The attention function ``impl`` names, for module ``attn``. 'eager' is
    each model file's own ``eager_attention_forward`` (that is what the model
    itself would call), everything else comes from the registry."""
    if impl == "eager":
        fn = getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)
        if fn is None:
            raise ValueError(f"{type(attn).__module__} defines no eager_attention_forward")
        return fn
    if impl in (IMPL, IMPL_SDPA_MASK):
        raise RuntimeError("attention overrides do not nest: combine the edge sets instead (EdgeSet | EdgeSet)")
    return ALL_ATTENTION_FUNCTIONS[impl]


def _set_impl(lm, impl: str) -> None:
    if hasattr(lm.config, "text_config"):
        lm.model.set_attn_implementation({"text_config": impl})  # the vision tower keeps its own
    else:
        lm.model.set_attn_implementation(impl)


@contextmanager
def attention_overrides(lm, overrides: dict[int, Override], native_mask: bool = False):
    """Route the LLM's attention through ``overrides[layer]`` for the layers
    given (others run their usual attention), for ordinary forwards and
    ``generate`` alike. ``lm`` is a ``tracing.registry.LoadedModel``.
    ``native_mask``: the layers get the mask their own implementation would
    (see the module's docstring), not always a float one."""
    n = lm.n_layers
    bad = [l for l in overrides if not 0 <= l < n]
    if bad:
        raise ValueError(f"overrides: layer(s) {bad} outside [0, {n})")
    before = lm.text_config._attn_implementation
    modules = [attention_module(layer) for layer in lm.layers]
    bases = [base_attention(before, m) for m in modules]
    for i, m in enumerate(modules):
        setattr(m, _STATE, (bases[i], overrides.get(i)))
    try:
        _set_impl(lm, IMPL_SDPA_MASK if native_mask and before == "sdpa" else IMPL)
        yield
    finally:
        _set_impl(lm, before)
        for m in modules:
            if hasattr(m, _STATE):
                delattr(m, _STATE)
