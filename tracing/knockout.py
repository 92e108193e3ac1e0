"""Attention knockout (Map the Flow, Kim et al. 2025): exact and fast.

"A -/-> B" cuts attention edges: the queries in the target spans B may not
read the keys in the source spans A, in a chosen set of layers. The blocked
entries are *assigned* ``finfo(dtype).min`` on top of the causal mask (adding
to an already masked entry would give -inf, and a fully blocked row NaN; with
an assigned finfo.min such a row becomes uniform, as in the paper's code).

Pieces, from small to large:

- Edge sets (tracing/edges.py): ``EdgeSet``, a named, serialisable set of
  (source, target) position ranges, ``edges(name, layout)``, ``EDGE_SETS``;
  ``DenseEdges``, any set of (query, key) entries as a boolean matrix.
- Layer sets: ``window``, ``default_window``, ``bottom_up``, ``top_down``.
- ``Knockout``: one condition, an edge set in a set of layers.
  ``LayeredKnockout``: one condition whose edges differ by layer (the union,
  per layer, of several (edge set, layers) parts).
- ``knockout_mask``: the additive ``[1, 1, T, T]`` mask.
- ``knockout(lm, layout, edge_set, layers)``: a context manager that applies a
  knockout to ordinary forwards and ``generate`` through transformers'
  attention registry (eager and sdpa alike).
- ``KnockoutRunner``: many conditions on one input, recomputing only what a
  knockout can change (see its docstring), plus ``naive_run``, the paper's
  one-full-forward-per-condition method, as a cross-check and baseline.

Generation rule: edge sets are resolved against the prompt's ``TokenLayout``,
so tokens generated after the prompt (positions >= ``layout.n_tokens``) are no
target of any span and attend as usual, except where an edge set names the
open-ended span ``generated`` (e.g. ``"video->generated"``). Keys in the
prompt's source spans stay blocked for every query that is a target.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterable, Sequence

import torch

from .attention import attention_overrides
from .layout import TokenLayout

from .edges import DenseEdges, EdgeSet, edges_from_dict, union_blocked

# ---------------------------------------------------------------- layer sets
def window(center: int, k: int, n_layers: int) -> range:
    """k layers around ``center``: range(max(0, c - k//2), min(L, c + k - k//2)).
    The paper's k = 9 gives range(max(0, l-4), min(L, l+5))."""
    if k < 1:
        raise ValueError(f"window: k must be >= 1, got {k}")
    if not 0 <= center < n_layers:
        raise ValueError(f"window: center {center} outside [0, {n_layers})")
    return range(max(0, center - k // 2), min(n_layers, center + k - k // 2))


def default_window(n_layers: int) -> int:
    """The paper's k = 9 for models of 32+ layers; for smaller models about a
    quarter of the depth, max(1, round(L / 4)) (Python rounds halves to even:
    L = 6 -> 2, L = 8 -> 2, L = 12 -> 3), so that a window still sweeps."""
    return 9 if n_layers >= 32 else max(1, round(n_layers / 4))


def bottom_up(layer: int, n_layers: int | None = None) -> range:
    """Layers [0, layer]."""
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        raise ValueError(f"bottom_up: layer {layer} outside [0, {n_layers})")
    return range(0, layer + 1)


def top_down(layer: int, n_layers: int) -> range:
    """Layers [layer, L)."""
    if not 0 <= layer < n_layers:
        raise ValueError(f"top_down: layer {layer} outside [0, {n_layers})")
    return range(layer, n_layers)


@dataclass(frozen=True)
class Knockout:
    """One condition: ``edges`` (an EdgeSet or DenseEdges) cut in ``layers``."""

    edges: EdgeSet | DenseEdges
    layers: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.edges.name

    def at(self, layer: int) -> tuple:
        """The edge sets cut in ``layer`` (empty if none)."""
        return (self.edges,) if layer in self.layers else ()

    @classmethod
    def of(cls, cond) -> "Knockout | LayeredKnockout":
        """A ``Knockout``, a ``LayeredKnockout`` (returned as is), or a pair
        (EdgeSet or DenseEdges, layers)."""
        if isinstance(cond, (Knockout, LayeredKnockout)):
            return cond
        es, layers = cond
        if not isinstance(es, (EdgeSet, DenseEdges)):
            raise TypeError(f"condition: expected (EdgeSet, layers), got {type(es).__name__} first")
        return cls(es, tuple(sorted(set(int(l) for l in layers))))

    def to_dict(self) -> dict:
        return {"edges": self.edges.to_dict(), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> "Knockout":
        return cls(edges_from_dict(d["edges"]), tuple(d["layers"]))


@dataclass(frozen=True)
class LayeredKnockout:
    """One condition whose cut edges differ by layer: in layer l, the union of
    the edge sets of the ``parts`` whose layers include l (Map the Flow's
    effective pathways keep each edge type in its own layer range).

    Build it from parts, ``LayeredKnockout.of(name, [(edge_set, layers), ...])``,
    or from a mapping, ``LayeredKnockout.per_layer(name, {layer: edge_set(s)})``.
    ``KnockoutRunner.run``/``naive_run`` and ``knockout()`` take it wherever
    they take a ``Knockout``.
    """

    name: str
    parts: tuple[Knockout, ...]

    @classmethod
    def of(cls, name: str, parts) -> "LayeredKnockout":
        return cls(name, tuple(Knockout.of(p) for p in parts))

    @classmethod
    def per_layer(cls, name: str, mapping: dict) -> "LayeredKnockout":
        """mapping: layer -> an edge set or a sequence of edge sets."""
        parts = []
        for layer, sets in sorted(mapping.items()):
            for es in (sets if isinstance(sets, (list, tuple)) else [sets]):
                parts.append(Knockout.of((es, [layer])))
        return cls(name, tuple(parts))

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer some part cuts edges in, sorted."""
        return tuple(sorted({l for p in self.parts for l in p.layers}))

    def at(self, layer: int) -> tuple:
        return tuple(p.edges for p in self.parts if layer in p.layers)

    def to_dict(self) -> dict:
        return {"name": self.name, "parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict) -> "LayeredKnockout":
        return cls(d["name"], tuple(Knockout.from_dict(p) for p in d["parts"]))


def condition_from_dict(d: dict) -> "Knockout | LayeredKnockout":
    """``to_dict`` of a Knockout or a LayeredKnockout -> the object."""
    return LayeredKnockout.from_dict(d) if "parts" in d else Knockout.from_dict(d)


def _plan(cond, n: int, n_layers: int) -> list[tuple]:
    """Per layer, the edge sets of ``cond`` that cut something causality
    allows among positions < n (the others change nothing)."""
    useful: dict = {}
    return [tuple(es for es in cond.at(l) if useful.setdefault(es, es.first_query(n) is not None))
            for l in range(n_layers)]


def window_sweep(edge_set: EdgeSet, n_layers: int, k: int | None = None) -> list[Knockout]:
    """One condition per window centre 0..L-1 (k defaults to ``default_window``)."""
    k = default_window(n_layers) if k is None else k
    return [Knockout(edge_set, tuple(window(c, k, n_layers))) for c in range(n_layers)]


# ---------------------------------------------------------------- the mask
def causal_mask(q_start: int, q_end: int, k_end: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive [q_end - q_start, k_end]: 0 where key <= query, finfo.min elsewhere."""
    q = torch.arange(q_start, q_end, device=device)[:, None]
    k = torch.arange(k_end, device=device)[None, :]
    return torch.zeros(q_end - q_start, k_end, dtype=dtype, device=device).masked_fill_(k > q, torch.finfo(dtype).min)


def knockout_mask(layout: TokenLayout, edge_set: "EdgeSet | DenseEdges", T: int | None = None, dtype=torch.float32,
                  device=None) -> torch.Tensor:
    """Additive mask [1, 1, T, T]: causal, with the blocked entries assigned
    ``finfo(dtype).min``. T defaults to the prompt length; a larger T (prompt
    plus generated tokens) follows the generation rule of this module."""
    T = layout.n_tokens if T is None else T
    if T < layout.n_tokens:
        raise ValueError(f"knockout_mask: T={T} is shorter than the prompt ({layout.n_tokens} tokens)")
    m = causal_mask(0, T, T, dtype, device)
    m.masked_fill_(edge_set.blocked(0, T, T, device=device), torch.finfo(dtype).min)
    return m[None, None]


@contextmanager
def knockout(lm, layout: TokenLayout, edge_set, layers: Iterable[int] | None = None):
    """Apply a knockout to every forward (and ``generate``) of ``lm`` inside
    the block, through the attention registry: under eager or sdpa, in the
    given layers only. ``edge_set`` is an EdgeSet or DenseEdges with
    ``layers``, or a whole condition (``Knockout`` / ``LayeredKnockout``,
    ``layers`` None) whose edges may differ by layer. Queries are taken to be
    the last Q of the K keys (one unpadded sequence per batch row, aligned
    with ``layout``)."""
    if isinstance(edge_set, (Knockout, LayeredKnockout)):
        if layers is not None:
            raise ValueError("knockout: a Knockout/LayeredKnockout carries its own layers; pass layers=None")
        cond = edge_set
    else:
        if layers is None:
            raise ValueError("knockout: layers are required with an edge set")
        cond = Knockout.of((edge_set, layers))
    per_layer = {l: cond.at(l) for l in cond.layers}
    cache: dict = {}

    def fn(sets, base, module, query, key, value, attention_mask, **kwargs):
        Q, K = query.shape[2], key.shape[2]
        if cache.get("shape") != (Q, K):  # per forward shape, shared by the layers with the same edge sets
            cache.clear()
            cache["shape"] = (Q, K)
        if sets not in cache:
            cache[sets] = union_blocked(sets, K - Q, K, K, device=query.device)
        blocked = cache[sets]
        if attention_mask is None:  # only if some caller bypassed the registered mask builder
            attention_mask = causal_mask(K - Q, K, K, query.dtype, query.device)[None, None]
        attention_mask = attention_mask.masked_fill(blocked, torch.finfo(attention_mask.dtype).min)
        return base(module, query, key, value, attention_mask, **kwargs)

    with attention_overrides(lm, {l: partial(fn, sets) for l, sets in per_layer.items()}):
        yield


# ---------------------------------------------------------------- the runner
class _Stop(Exception):
    """Raised from hooks to end a forward early: at layer 0 of the clean run
    (the layers are then run here), or in a layer's cache update when only
    its keys and values are wanted (attention and MLP skipped)."""


class _SuffixCache:
    """What a decoder layer's attention sees as its cache, for one layer and B
    conditions: the clean run's keys/values of positions < q0 (shared, [1, H_kv,
    q0, hd]; None when q0 = 0) followed by the recomputed ones of positions
    q0.. (per condition), to which each ``update`` appends a chunk. With
    ``capture`` set, ``update`` stores and stops the layer (``_Stop``); with
    ``frozen`` set it stores nothing and returns all the keys/values it holds."""

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None, batch: int):
        self.pk, self.pv, self.b = keys, values, batch
        self.k = self.v = None
        self.capture = self.frozen = False

    def update(self, keys, values, layer_idx=None, *args, **kwargs):
        if not self.frozen:  # frozen: every position's keys/values are in already (they equal the new ones)
            self.k = keys if self.k is None else torch.cat([self.k, keys], 2)
            self.v = values if self.v is None else torch.cat([self.v, values], 2)
        if self.capture:
            raise _Stop
        if self.pk is None:
            return self.k, self.v
        exp = (self.b, -1, -1, -1)
        return torch.cat([self.pk.expand(*exp), self.k], 2), torch.cat([self.pv.expand(*exp), self.v], 2)


class KnockoutRunner:
    """Answer probabilities under many knockouts of one input.

    What cannot change is not computed again. One clean run keeps, for every
    layer l, its input residual stream h_l [1, T, d] and its keys and values
    [1, H_kv, T, hd] (after RoPE). A knockout whose first blocked query is q0
    and whose first layer is l0 leaves every position below l0, and every
    position < q0 in every layer, as in the clean run. So from layer l0 on
    only positions q0..last are recomputed, by calling the decoder layers
    directly with the clean keys/values of 0..q0-1 as a cache prefix
    (positions after the last one cannot reach the answer).

    More savings, all exact:
    - the final layer is needed at the last position only: for the other
      positions only its keys and values are computed (the layer is stopped
      right after its cache update);
    - positions go through the layers one layer at a time, in chunks of
      ``chunk`` queries, each against the keys up to its own end (chunked
      prefill), so most of the causally masked upper triangle of the scores
      is never computed, and only one layer's recomputed keys/values are held
      at a time; the clean run itself is done this way (the model's forward
      is stopped at layer 0, after the video encoder and the rotary
      embedding). In a layer where some query has every key cut (its row of
      the paper's mask is uniform over all T keys), all positions' keys and
      values are computed first and every chunk reads them all;
    - conditions with the same q0 share one batch; a condition joins at its
      first layer (its h_l taken from the clean run), so no layer below its
      window runs for it; rows with nothing blocked in a layer get the plain
      causal mask;
    - the final norm and the unembedding run at the last position only.

    lm:     a ``tracing.registry.LoadedModel`` (eager or sdpa: the layers run
            the model's own attention implementation).
    inputs: ``build_inputs`` kwargs, batch 1.
    layout: its ``TokenLayout``.
    max_batch: conditions per batch.
    chunk:  queries per chunk (None: all at once).
    max_scores: cap on one batch's attention scores (B x heads x chunk x T
            elements); default 2**21 on CPU, where larger temporaries cost
            page faults more than batching saves, and 2**28 elsewhere.
    """

    def __init__(self, lm, inputs: dict, layout: TokenLayout, max_batch: int = 16, chunk: int | None = 128,
                 max_scores: int | None = None):
        T = inputs["input_ids"].shape[1]
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError(f"inputs: batch size must be 1, got {inputs['input_ids'].shape[0]}")
        if T != layout.n_tokens:
            raise ValueError(f"inputs have {T} tokens but layout has {layout.n_tokens}")
        if max_batch < 1 or (chunk is not None and chunk < 1):
            raise ValueError(f"max_batch ({max_batch}) and chunk ({chunk}) must be >= 1")
        types = set(getattr(lm.text_config, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            raise NotImplementedError(f"KnockoutRunner: layer types {sorted(types)}: only full attention is supported")
        self.lm, self.inputs, self.layout, self.T = lm, inputs, layout, T
        self.end = layout.last + 1  # positions after the last one cannot reach the answer
        self.max_batch, self.chunk = max_batch, chunk
        self.max_scores = max_scores or (2**21 if lm.device.type == "cpu" else 2**28)
        self.last_stats: dict = {}
        self._clean_pass()

    # -- the clean run -------------------------------------------------------
    @torch.no_grad()
    def _clean_pass(self):
        lm = self.lm
        lang = lm.module(lm.family.layers.rsplit(".", 1)[0])
        seen: dict = {}

        def grab_lang(mod, args, kwargs):
            seen["lang"] = dict(kwargs)

        def grab_layer(mod, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            seen["layer"] = dict(kwargs)
            raise _Stop  # the layers are run below, chunk by chunk

        hooks = [lang.register_forward_pre_hook(grab_lang, with_kwargs=True),
                 lm.layers[0].register_forward_pre_hook(grab_layer, with_kwargs=True)]
        try:
            lm.model(**self.inputs, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        if "layer" not in seen:
            raise RuntimeError(f"{lm.name}: the forward never reached decoder layer 0")
        # What every layer receives (the same in all layers): rotary cos/sin
        # [.., T, hd] (M-RoPE already applied on Qwen2-VL) and the position ids.
        self.rope = seen["layer"]["position_embeddings"]
        self.position_ids = seen["layer"].get("position_ids")
        self.dtype = seen["h"].dtype
        self._lang_kwargs = {k: seen["lang"].get(k) for k in ("attention_mask", "position_ids")}
        self._lang_kwargs["inputs_embeds"] = seen["h"]
        self.hidden = [seen["h"]]  # input of layer l, [1, last + 1, d]; filled by the pass below
        self.keys = self.values = None
        self.clean_logits = self._layers(0, [[()] * lm.n_layers], [0], {"token_layers": 0}, record=True)[0]

    def _probs(self, logits: torch.Tensor, token_ids) -> torch.Tensor:
        p = torch.softmax(logits.float(), -1)
        return p if token_ids is None else p[..., list(token_ids)]

    def clean(self, token_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Full-vocabulary probabilities [n] of the option letters (or of
        ``token_ids``) at the last position, no knockout."""
        return self._probs(self.clean_logits, self.layout.option_ids if token_ids is None else token_ids)

    # -- the fast path -------------------------------------------------------
    def run(self, conditions, token_ids: Sequence[int] | None = None) -> torch.Tensor:
        """conditions: list of ``Knockout``, ``LayeredKnockout`` or
        (EdgeSet | DenseEdges, layers).
        -> full-vocabulary probabilities [n_conditions, n_options] of the
        option letters (or [n_conditions, len(token_ids)]), in order."""
        return self._probs(self.logits(conditions), self.layout.option_ids if token_ids is None else token_ids)

    @torch.no_grad()
    def logits(self, conditions) -> torch.Tensor:
        """Last-position logits [n_conditions, V] under each knockout.
        ``last_stats`` then holds the token-layers recomputed, the minimum
        the knockouts require (sum of (last + 1 - q0) x (L - l0)), the naive
        count (T x L per condition), the token-layers whose keys and values
        were computed ahead for fully blocked rows (``kv_ahead``) and the
        conditions run the naive way (``naive_conditions``, see below).

        A condition whose edges differ by layer (``LayeredKnockout``) is exact
        the same way: q0 is its first blocked query over all layers, l0 its
        first layer that cuts anything; each layer gets its own mask.

        Fully blocked rows (a query whose every key, itself included, is cut)
        are exact too: as in the paper's [T, T] mask, such a row is uniform
        over all T keys, future ones included, so in a layer where some row
        of the batch is fully blocked the keys and values of every position
        are computed first and every chunk reads all of them. Only if the
        prompt goes on past the last position (``layout.last < T - 1``) does
        such a condition run the paper's way (one full forward), since the
        positions after the last one are not recomputed here."""
        conds = [Knockout.of(c) for c in conditions]
        L, end = self.lm.n_layers, self.end
        for c in conds:
            if c.layers and not 0 <= c.layers[0] <= c.layers[-1] < L:
                raise ValueError(f"condition {c.name!r}: layers {list(c.layers)} outside [0, {L})")
        out = self.clean_logits.expand(len(conds), -1).clone()
        plans = [_plan(c, end, L) for c in conds]
        self._full = {}  # edge sets of one layer -> whether they block some row fully (for this call only)
        firsts, groups = {}, {}
        stats = {"token_layers": 0, "minimum": 0, "naive": len(conds) * self.T * L, "kv_ahead": 0,
                 "naive_conditions": 0}
        for i, plan in enumerate(plans):
            qs = [es.first_query(end) for sets in plan for es in sets]
            if not qs:  # the answer cannot change: the clean logits
                continue
            if end < self.T and any(self._fully_blocked(sets) for sets in plan if sets):
                out[i] = self._naive_logits(conds[i], reencode=False)
                stats["naive_conditions"] += 1
                continue
            firsts[i] = next(l for l in range(L) if plan[l])
            groups.setdefault(min(qs), []).append(i)
        for q0, idx in groups.items():
            idx.sort(key=lambda i: firsts[i])
            stats["minimum"] += sum((end - q0) * (L - firsts[i]) for i in idx)
            scores = self.lm.text_config.num_attention_heads * min(self.chunk or end, end - q0) * end
            size = max(1, min(self.max_batch, self.max_scores // scores))
            for b in range(0, len(idx), size):
                part = idx[b : b + size]
                out[part] = self._layers(q0, [plans[i] for i in part], [firsts[i] for i in part], stats)
        self.last_stats, self._full = stats, {}
        return out

    def _fully_blocked(self, sets: tuple) -> bool:
        """Whether the union of ``sets`` cuts every key of some query < last + 1."""
        if sets not in self._full:
            n = self.end
            cut = union_blocked(sets, 0, n, n, device=self.hidden[0].device)
            cut |= torch.ones(n, n, dtype=torch.bool, device=cut.device).triu_(1)
            self._full[sets] = bool(cut.all(1).any())
        return self._full[sets]

    def _layers(self, q0: int, plans: list[list[tuple]], firsts: list[int], stats: dict,
                record: bool = False) -> torch.Tensor:
        """Positions q0..last through the layers from the first condition's
        first layer on, one layer at a time (each in chunks of queries),
        each condition joining at its own first layer.
        plans: per condition, per layer, the edge sets cut (``_plan``);
        firsts: each condition's first layer, sorted; every blocked query >= q0.
        record: keep every layer's input and keys/values (the clean run).
        -> last-position logits [B, V]."""
        lm, L, end = self.lm, self.lm.n_layers, self.end
        dev, fmin = self.hidden[0].device, torch.finfo(self.dtype).min
        first = firsts[0]
        rows = [sum(f <= l for f in firsts) for l in range(L)]  # batch rows at layer l
        step = self.chunk or end - q0
        chunks = [(a, min(a + step, end)) for a in range(q0, end, step)]
        causal: dict = {}  # (a, key end) -> [1, 1, b - a, key end]
        kept_masks: dict = {}  # chunk start -> ((key end, edge sets), mask) of the previous layer, reused if equal
        kept_cut: dict = {}  # (a, key end, edge sets) -> bool [b - a, key end] of the previous layer
        inputs, keys, values = [], [], []
        h = self.hidden[first][:, q0:end].expand(rows[first], -1, -1)
        for l in range(first, L):
            if h.shape[0] < rows[l]:  # conditions whose window starts here join
                h = torch.cat([h, self.hidden[l][:, q0:end].expand(rows[l] - h.shape[0], -1, -1)])
            B = rows[l]
            sets = tuple(plans[i][l] for i in range(B))
            cache = _SuffixCache(None if q0 == 0 else self.keys[l][:, :, :q0],
                                 None if q0 == 0 else self.values[l][:, :, :q0], B)
            kw = [self._chunk_kw(a, b, cache) for a, b in chunks]
            # A fully blocked row is uniform over all keys, future ones included:
            # then every position's keys and values first, and every chunk reads them all.
            full = any(self._fully_blocked(s) for s in set(sets) if s)
            if full:
                cache.capture = True
                for (a, b), k in zip(chunks, kw):
                    try:
                        _call(lm.layers[l], h[:, a - q0 : b - q0], None, k)
                    except _Stop:
                        pass
                    stats["kv_ahead"] += B * (b - a)
                cache.capture, cache.frozen = False, True
            cut_now, masks_now, outs = {}, {}, []
            for (a, b), k in zip(chunks, kw):
                kend = end if full else b
                if (a, kend) not in causal:
                    causal[a, kend] = causal_mask(a, b, kend, self.dtype, dev)[None, None]
                mask = causal[a, kend]
                if any(sets):  # else nothing blocked in this layer: the plain causal mask, shared
                    for es in set(sets):  # bool cuts of the previous layer are kept for this one
                        ck = (a, kend, es)
                        cut_now[ck] = kept_cut[ck] if ck in kept_cut else cut_now.get(ck)
                    prev = kept_masks.get(a)
                    if prev is None or prev[0] != (kend, sets):  # else the previous layer's cuts: its mask
                        for es in set(sets):
                            if cut_now[a, kend, es] is None:
                                cut_now[a, kend, es] = union_blocked(es, a, b, kend, device=dev)
                        cut = torch.stack([cut_now[a, kend, es] for es in sets])[:, None]  # () -> nothing blocked
                        prev = ((kend, sets), mask.expand(B, 1, -1, -1).masked_fill(cut, fmin))
                    masks_now[a], mask = prev, prev[1]
                stats["token_layers"] += B * (b - a)
                x = h[:, a - q0 : b - q0]
                if l < L - 1:
                    outs.append(_call(lm.layers[l], x, mask, k))
                    continue
                # The final layer: only the last position's output is used;
                # the others need only their keys and values (for it to read).
                n_kv = b - a - (1 if b == end else 0)
                if n_kv and not full:
                    cache.capture = True
                    try:
                        _call(lm.layers[l], x[:, :n_kv], mask[..., :n_kv, :], _rows(k, 0, n_kv))
                    except _Stop:
                        pass
                    cache.capture = False
                if b == end:
                    outs.append(_call(lm.layers[l], x[:, n_kv:], mask[..., n_kv:, :], _rows(k, n_kv, n_kv + 1)))
            kept_masks, kept_cut = masks_now, cut_now
            if record:
                inputs.append(h)
                keys.append(cache.k)
                values.append(cache.v)
            h = torch.cat(outs, 1)
        if record:
            self.hidden, self.keys, self.values = inputs, keys, values
        x = lm.module(lm.family.final_norm)(h[:, -1])
        return lm.module(lm.family.unembed)(x).float()

    def _chunk_kw(self, a: int, b: int, cache) -> dict:
        """A decoder layer's arguments for the queries a..b-1."""
        pos = None if self.position_ids is None else self.position_ids[..., a:b]
        return dict(position_embeddings=tuple(x[..., a:b, :] for x in self.rope), position_ids=pos,
                    past_key_values=cache, use_cache=True)

    # -- the paper's method --------------------------------------------------
    @torch.no_grad()
    def naive_run(self, conditions, token_ids: Sequence[int] | None = None, reencode: bool = True) -> torch.Tensor:
        """As the paper's code: one full forward of the model per condition,
        the selected layers patched to use a knockout mask repeated per head
        ([1, H, T, T]; per layer for a ``LayeredKnockout``). reencode=False reuses the clean run's video features
        and runs only the language model. -> probabilities as ``run``."""
        rows = [self._naive_logits(c, reencode) for c in map(Knockout.of, conditions)]
        return self._probs(torch.stack(rows), self.layout.option_ids if token_ids is None else token_ids)

    def _naive_logits(self, c, reencode: bool) -> torch.Tensor:
        """One full forward under condition ``c`` -> last-position logits [V]."""
        lm, T = self.lm, self.T
        lang = lm.module(lm.family.layers.rsplit(".", 1)[0])
        H = lm.text_config.num_attention_heads
        masks = {}  # edge sets -> [1, H, T, T], shared by the layers that cut the same ones
        for l in c.layers:
            sets = c.at(l)
            if sets not in masks:
                m = causal_mask(0, T, T, self.dtype, self.hidden[0].device)
                m.masked_fill_(union_blocked(sets, 0, T, T, device=m.device), torch.finfo(self.dtype).min)
                masks[sets] = m[None, None].repeat(1, H, 1, 1)

        def patch(mask, mod, args, kwargs):
            kwargs["attention_mask"] = mask
            return args, kwargs

        hooks = [lm.layers[l].register_forward_pre_hook(partial(patch, masks[c.at(l)]), with_kwargs=True)
                 for l in c.layers]
        try:
            if reencode:
                return lm.model(**self.inputs, use_cache=False).logits[0, self.layout.last].float()
            # the language model's output is already final-normed
            h = lang(**self._lang_kwargs, use_cache=False).last_hidden_state[0, self.layout.last]
            return lm.module(lm.family.unembed)(h).float()
        finally:
            for hk in hooks:
                hk.remove()


def _call(layer, h, mask, kw):
    out = layer(h, attention_mask=mask, **kw)
    return out[0] if isinstance(out, tuple) else out


def _rows(kw: dict, i: int, j: int) -> dict:
    """Rows i..j of a chunk's per-position layer arguments."""
    out = dict(kw)
    out["position_embeddings"] = tuple(x[..., i:j, :] for x in kw["position_embeddings"])
    if kw["position_ids"] is not None:
        out["position_ids"] = kw["position_ids"][..., i:j]
    return out
