"""Exact attention statistics streamed inside the forward (WAAD / FAI, Li et al. 2025).

The paper's metrics need every attention map A^(l,h) [T, T]; materialising
them (``output_attentions=True``) costs L * H * T^2 floats, ~490 GB for a
12.5k-token video on a 7B model. Here each layer's attention call is
overridden (``tracing.attention``, the mechanism the knockout uses): the
layer's output is the model's own (its usual eager or sdpa function is
called unchanged), and beside it the softmax is recomputed query chunk by
query chunk in float32, keys only up to the chunk's end (the model is causal),
and reduced at once. At most one chunk's ``[B, H, chunk, keys]`` scores and
two temporaries of that size exist at a time.

Per layer, head and query position t (every position; the analysis averages
over its rows R):

    span_term[t] = sum_{s<=t} A_ts (t - s)             (head span d = mean over R)
    waad[t]      = sum_{s<=t} A_ts min(t - s, W)        (WAAD_t, window W)
    entropy[t]   = -sum_s A_ts log A_ts                 (nats; the attention row's)

per layer, head and key position s, for each horizon [lo, hi] (hi None = to
the end of the sequence):

    fai[s]       = mean over t in T(s) of A_ts,  T(s) = {t in R : s + lo <= t <= s + hi}
    fai_count[s] = |T(s)|  (the same for every head); fai is NaN where it is 0
                   (FAI is undefined there: the paper leaves it open, a
                   third-party version writes 0; NaN keeps "undefined" apart
                   from "never read")

and per layer and head, the attention mass between position groups: summed
attention from the queries of group i to the keys of group j (``[G, G]``),
for the frames (frame x frame) and for named layout spans (system, video,
question, ..., response) separately. Sums, not means: divide by the group's
row count for a mean row.

How the sums stay exact and cheap (each a pass over the chunk at most, no
log over the whole chunk): the span term is a matrix-vector product over the
keys before the chunk (``A @ (i - s) + (t - i) * mass``, every term
non-negative: no float32 cancellation) plus the chunk's own triangle; WAAD
is ``W * rowsum - sum_{o<W} (W - o) A_{t,t-o}`` from a W-wide gather; the
entropy is ``lse - sum_s A_ts S_ts`` over scores shifted by the row's
maximum, with the log-sum-exp taken from the row's largest probability; FAI
over the keys every row of the chunk reaches is one row of a product that
also gives, for each query group present in the chunk, its rows' mass by
key (then summed into key groups: the group masses), and a masked sum over
the band at the horizon's edges. Chunks take as many rows as keep them near
512k scores (early ones, reading fewer keys, take more rows).

Two computations of the same sums. Where the forward has no attention mask
(sdpa's plain causal case: one sequence or an unpadded batch) on CPU, a fused
C kernel (``tracing/stats_kernel.py``, built on first use) takes four query
rows at a time with their scores in cache and reduces every statistic in the
pass that computes its exponentials. Elsewhere (eager's mask, left padding, a
GPU, or no C compiler) the chunked torch path above runs. ``attention_stats(...,
kernel=)`` picks one; both are checked against eager maps.

Cost (``bench/attention.py``, 2026-12-01, 2 threads): memory linear in T
(0.013-0.07x the materialised maps at 4k tokens) on both paths. Time against
an sdpa forward at 4k: the fused kernel 1.5-1.6x (reasoner) and 1.5-1.9x
(tiny-llava-next), at 1k and 16k 1.4-1.9x; the torch path, which computes
the scores and softmax again beside sdpa's fused kernel and reads them back
some ten times, 3.1-3.3x and 3.6-4.6x.

A query row with no key to read (left padding of a batch) is no part of
any sequence: its own statistics are NaN and it adds nothing to FAI or the
masses.

Grouped-query attention is handled by grouping query heads over their
key/value head (no ``repeat_kv`` copy). Models with logit soft-capping or
attention sinks are refused (their softmax differs from the one here).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Iterable, Sequence

import numpy as np
import torch

from . import stats_kernel
from .attention import attention_overrides

KERNELS = ("auto", "c", "torch")  # attention_stats(kernel=...): the fused C kernel where it applies, or always one


@dataclass(frozen=True)
class Horizon:
    """FAI's horizon: rows t with s + lo <= t <= s + hi (hi None: to the end)."""

    name: str
    lo: int
    hi: int | None = None

    def __post_init__(self):
        if self.lo < 0 or (self.hi is not None and self.hi < self.lo):
            raise ValueError(f"horizon {self.name!r}: need 0 <= lo <= hi, got [{self.lo}, {self.hi}]")


# The paper's versions: v1 and v2 of the RL method, and its analysis section (App. A.1), to the end.
HORIZONS = {"v1": Horizon("v1", 10, 50), "v2": Horizon("v2", 10, 100), "end": Horizon("end", 10, None)}


@dataclass
class StatsSpec:
    """What to compute for one input of T tokens.

    rows:     the rows R that FAI averages over (bool [T]; None = every position).
    window:   WAAD's W (the paper's 10).
    horizons: FAI horizons (names of ``HORIZONS`` or ``Horizon`` objects).
    frames:   [start, end) token ranges of the frames, for the frame x frame mass.
    spans:    name -> [start, end) token range, for the span x span mass
              (ranges may leave positions out; they should not overlap).
    chunk:    query rows per chunk; None picks about 512k scores per chunk.
    """

    rows: Sequence[bool] | torch.Tensor | None = None
    window: int = 10
    horizons: Sequence[Horizon | str] = ("end",)
    frames: Sequence[tuple[int, int]] = ()
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    chunk: int | None = None

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        hs = []
        for h in self.horizons:
            if isinstance(h, str):
                if h not in HORIZONS:
                    raise ValueError(f"unknown FAI horizon {h!r}; known: {', '.join(HORIZONS)}")
                h = HORIZONS[h]
            hs.append(h)
        if len({h.name for h in hs}) != len(hs):
            raise ValueError(f"FAI horizons need distinct names, got {[h.name for h in hs]}")
        self.horizons = tuple(hs)
        self.frames = tuple((int(a), int(b)) for a, b in self.frames)
        self.spans = {str(k): (int(a), int(b)) for k, (a, b) in self.spans.items()}


SCORES_PER_CHUNK = 1 << 19  # ~512k scores (2 MB): a chunk's passes run from cache, per-chunk overhead stays small


def chunk_plan(heads: int, T: int, rows: int | None = None) -> list[tuple[int, int]]:
    """Query chunks [i, j) over T positions: ``rows`` rows each when given, else
    as many rows as keep a chunk's scores ``[heads, rows, j]`` near
    ``SCORES_PER_CHUNK`` (the model is causal: a chunk reads keys up to its
    end, so early chunks take more rows; the number of chunks, and with it
    the per-chunk overhead, halves against a fixed row count)."""
    plan, i = [], 0
    while i < T:
        if rows:
            c = rows
        else:  # the largest c with heads * c * (i + c) <= budget, at least 16
            c = int((-i + (i * i + 4 * SCORES_PER_CHUNK / max(1, heads)) ** 0.5) / 2)
            c = max(16, c)
        j = min(T, i + c)
        plan.append((i, j))
        i = j
    return plan


class _Tables:
    """Per-forward tables shared by every layer: rows, group one-hots and FAI
    row counts (all linear in T), and the per-chunk FAI masks."""

    def __init__(self, spec: StatsSpec, T: int, device):
        self.T = T
        rows = torch.ones(T, dtype=torch.bool) if spec.rows is None else torch.as_tensor(spec.rows, dtype=torch.bool)
        if rows.shape != (T,):
            raise ValueError(f"StatsSpec.rows has {tuple(rows.shape)} entries for a {T}-token input")
        self.rows = rows.to(device)
        groups = list(spec.frames) + list(spec.spans.values())
        for a, b in groups:
            if not 0 <= a <= b <= T:
                raise ValueError(f"group range [{a}, {b}) outside the {T}-token input")
        self.n_frames, self.n_spans = len(spec.frames), len(spec.spans)
        onehot = torch.zeros(T, len(groups), device=device)
        for g, (a, b) in enumerate(groups):
            onehot[a:b, g] = 1.0
        self.onehot = onehot  # [T, G]
        pos = torch.arange(T, device=device)
        self.count = {}  # horizon name -> |T(s)| [T]
        for h in spec.horizons:  # |T(s)| = number of rows t in R within [s + lo, s + hi]
            c = torch.cumsum(torch.cat([torch.zeros(1, device=device), self.rows.float()]), 0)  # c[i] = |R & [0, i)|
            lo = (pos + h.lo).clamp(max=T)
            hi = T if h.hi is None else (pos + h.hi + 1).clamp(max=T)
            self.count[h.name] = (c[hi] - c[lo]).clamp(min=0)
        self.spec = spec
        self._pieces: dict = {}

    def query_groups(self, i: int, j: int) -> torch.Tensor:
        """The groups (frames, then spans) that hold a row in [i, j)."""
        key = (i, j, "groups")
        if key not in self._pieces:
            self._pieces[key] = torch.nonzero(self.onehot[i:j].sum(0) > 0)[:, 0]
        return self._pieces[key]

    def fai_pieces(self, i: int, j: int, h: Horizon) -> list[tuple[int, int, torch.Tensor | None]]:
        """How the rows [i, j) reach the keys for horizon ``h``: a list of
        (key start, key end, mask [j-i, end-start] or None). None marks the
        keys every row of the chunk reads within the horizon (a plain column
        sum over the rows in R, done as one matrix-vector product); a mask
        marks the band at the edges, at most (j - i) x (j - i + hi - lo)
        entries: linear in T over all chunks, kept for every layer."""
        key = (i, j, h.name)
        if key not in self._pieces:
            self._pieces[key] = self._fai_pieces(i, j, h)
        return self._pieces[key]

    def _fai_pieces(self, i: int, j: int, h: Horizon) -> list[tuple[int, int, torch.Tensor | None]]:
        lo, hi = h.lo, (j if h.hi is None else h.hi)
        p0, p1 = max(0, i - hi), max(0, j - lo)  # keys some row reaches: s in [t - hi, t - lo]
        f0, f1 = max(0, j - 1 - hi), max(0, i - lo + 1)  # keys every row reaches
        if f0 >= f1:
            edges = [(p0, p1)]
            f0 = f1 = None
        else:
            edges = [(p0, f0), (f1, p1)]
        out = [] if f0 is None else [(f0, f1, None)]
        t = torch.arange(i, j, device=self.rows.device)[:, None]
        for x, y in edges:
            if x < y:
                d = t - torch.arange(x, y, device=self.rows.device)[None, :]
                out.append((x, y, ((d >= lo) & (d <= hi) & self.rows[i:j, None]).float()))
        return out


class AttentionStats:
    """The statistics of one forward, filled layer by layer; read with
    ``numpy()`` once the forward is done."""

    def __init__(self, spec: StatsSpec, layers: Sequence[int], kernel: str = "auto"):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
        self.spec = spec
        self.layers = tuple(layers)
        self.kernel = kernel
        self.path: dict[int, str] = {}  # layer -> "c" or "torch": which computation the last forward used
        self._per_layer: dict[int, dict[str, torch.Tensor]] = {}
        self._tables: _Tables | None = None

    def _fused(self, query, attention_mask) -> bool:
        """Whether this call takes the fused C kernel (tracing/stats_kernel.py)."""
        if self.kernel == "torch":
            return False
        fits = attention_mask is None and query.device.type == "cpu"
        if self.kernel == "c" and not fits:
            raise ValueError("kernel='c' covers a causal forward with no attention mask on CPU (sdpa, one sequence "
                             f"or a batch without padding); this call has a mask: {attention_mask is not None}, "
                             f"device {query.device.type}. Use kernel='auto' or 'torch'")
        if not fits:
            return False
        if stats_kernel.library() is None:
            if self.kernel == "c":
                raise RuntimeError(f"kernel='c': the fused kernel is unavailable: {stats_kernel.why()}")
            stats_kernel.warn_unavailable()
            return False
        return True

    def _record_fused(self, layer: int, query, key, scaling: float) -> None:
        tab, spec = self._tables, self.spec
        nf = tab.n_frames
        r = stats_kernel.row_stats(query, key, scaling, spec.window, tab.rows.cpu(),
                                   [(h.lo, h.hi) for h in spec.horizons], list(spec.frames) + list(spec.spans.values()))
        rec = {n: r[n] for n in ("span_term", "waad", "entropy")}
        for x, h in enumerate(spec.horizons):
            c = tab.count[h.name]
            rec[f"fai_{h.name}"] = torch.where(c > 0, r["fai_sum"][x] / c.clamp(min=1), torch.nan)
        rec["frame_mass"] = r["mass"][:, :, :nf, :nf]
        rec["span_mass"] = r["mass"][:, :, nf:, nf:]
        self._per_layer[layer] = rec
        self.path[layer] = "c"

    # called from the attention override
    def _record(self, layer: int, module, query, key, attention_mask, scaling: float) -> None:
        B, H, Q, _ = query.shape
        Hkv, K = key.shape[1], key.shape[2]
        if Q != K:
            raise ValueError(f"attention statistics need one whole forward (queries = keys), got {Q} queries over "
                             f"{K} keys: run them without a cache, not inside generate()")
        if self._tables is None or self._tables.T != K:
            self._tables = _Tables(self.spec, K, query.device)
        if self._fused(query, attention_mask):
            return self._record_fused(layer, query, key, scaling)
        self.path[layer] = "torch"
        tab, spec = self._tables, self.spec
        W, G, nf = spec.window, tab.onehot.shape[1], tab.n_frames
        plan = chunk_plan(H, K, spec.chunk)
        chunk = max(j - i for i, j in plan)
        dev = query.device
        out = {n: torch.zeros(B, H, K, device=dev) for n in ("span_term", "waad", "entropy")}
        fai = {h.name: torch.zeros(B, H, K, device=dev) for h in spec.horizons}
        mass = torch.zeros(B, H, G, G, device=dev)
        groups = H // Hkv
        # the scaling folded into the queries (eager scales the product: equal to float32 rounding)
        # grouped-query heads stacked over their key/value head: one product per kv head, no key copies
        q = (query.float() * scaling).reshape(B, Hkv, groups, Q, -1)
        kt = key.float().transpose(-1, -2)  # [B, Hkv, d, K]
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ValueError(f"expected a 4D attention mask, got {tuple(attention_mask.shape)}")
        fmin = torch.finfo(torch.float32).min
        o = torch.arange(W, device=dev)
        tri_dist = (o.new_tensor(range(chunk))[:, None] - o.new_tensor(range(chunk))[None, :]).clamp(min=0).float()
        tri_mask = tri_dist.eq(0) & ~torch.eye(chunk, dtype=torch.bool, device=dev)  # keys after the query
        weight = (W - o).float()
        for i, j in plan:
            c = j - i
            t = torch.arange(i, j, device=dev)
            s = torch.matmul(q[:, :, :, i:j].reshape(B, Hkv, groups * c, -1), kt[..., :j]).view(B, H, c, j)
            if attention_mask is None:  # sdpa's plain causal case: only the chunk's own triangle
                s[..., i:j].masked_fill_(tri_mask[:c, :c], fmin)
            elif attention_mask.dtype == torch.bool:  # sdpa's: True = attend
                s.masked_fill_(~attention_mask[:, :, i:j, :j], fmin)
            else:  # eager's additive mask
                s += attention_mask[:, :, i:j, :j].float()
            top = s.amax(-1, keepdim=True)
            s -= top  # softmax does not change; the entropy's sum below stays small (no cancellation)
            a = torch.softmax(s, dim=-1)
            # log-sum-exp of the shifted row from its largest probability (>= 1/j,
            # never 0): entropy = lse - sum_s a s, without a log over the whole row
            lse = -a.amax(-1).log()
            top = top[..., 0]
            # a row with no key to read (left padding) is no part of the sequence:
            # it adds nothing, and its own statistics are NaN (eager would spread
            # it over all T keys, sdpa differently)
            dead = top <= fmin / 2 if attention_mask is not None else None
            if dead is not None and dead.any():
                a.masked_fill_(dead[..., None], 0.0)
                s.masked_fill_(dead[..., None], 0.0)
            else:
                dead = None
            rowsum = a.sum(-1)
            out["entropy"][..., i:j] = lse * rowsum - torch.linalg.vecdot(a, s)
            del s
            # span term, all terms >= 0 (no cancellation): keys before the chunk at
            # distance (i - s) + (t - i), keys inside it through the chunk's own triangle
            own = a[..., i:j]
            span = (own * tri_dist[:c, :c]).sum(-1)
            if i:
                span += torch.matmul(a[..., :i], torch.arange(i, 0, -1, device=dev, dtype=torch.float32))
                span += (t - i).float() * (rowsum - own.sum(-1))
            out["span_term"][..., i:j] = span
            idx = t[:, None] - o[None, :]  # keys t - o, o < W
            near = a.gather(-1, idx.clamp(min=0).expand(B, H, c, W))
            out["waad"][..., i:j] = W * rowsum - torch.matmul(near.masked_fill(idx < 0, 0.0), weight)
            # row-weighted column sums in one product: the FAI rows (every horizon's keys that all
            # rows of the chunk reach) and each query group present in the chunk (its rows' mass by
            # key, then into key groups: a few rows of [j] instead of a [G, j] x [j, c] product)
            r, present = tab.rows[i:j], tab.query_groups(i, j)
            weights = torch.cat([r[None].float(), tab.onehot[i:j, present].T])  # [1 + groups here, c]
            cols = torch.matmul(weights, a)  # [B, H, 1 + groups here, j]
            if r.any():
                for h in spec.horizons:
                    for x, y, m in tab.fai_pieces(i, j, h):
                        if m is None:
                            fai[h.name][..., x:y] += cols[..., 0, x:y]
                        else:
                            fai[h.name][..., x:y] += (a[..., x:y] * m).sum(-2)
            if present.numel():  # [B, H, G_query, G_key]
                mass.index_add_(2, present, torch.matmul(cols[..., 1:, :], tab.onehot[:j]))
            if dead is not None:
                for n in out:
                    out[n][..., i:j].masked_fill_(dead, torch.nan)
            del a
        rec = {n: v for n, v in out.items()}
        for h in spec.horizons:
            c = tab.count[h.name]
            rec[f"fai_{h.name}"] = torch.where(c > 0, fai[h.name] / c.clamp(min=1), torch.nan)
        rec["frame_mass"] = mass[:, :, :nf, :nf]
        rec["span_mass"] = mass[:, :, nf:, nf:]
        self._per_layer[layer] = rec

    # -- reading
    @property
    def names(self) -> list[str]:
        return ["span_term", "waad", "entropy"] + [f"fai_{h.name}" for h in self.spec.horizons] + [
            "frame_mass", "span_mass"]

    def fai_count(self, horizon: str) -> np.ndarray:
        """|T(s)| [T] of a horizon."""
        if self._tables is None:
            raise RuntimeError("no forward has run inside attention_stats() yet")
        return self._tables.count[horizon].cpu().numpy()

    def numpy(self, batch: int | None = 0) -> dict[str, np.ndarray]:
        """name -> array with a leading layer axis (in ``self.layers`` order):
        per-position statistics [L, H, T], masses [L, H, G, G]; ``batch`` picks
        one row of the batch (None keeps the batch axis first)."""
        missing = [l for l in self.layers if l not in self._per_layer]
        if missing:
            raise RuntimeError(f"layers {missing} recorded nothing: did a forward run inside attention_stats()?")
        res = {}
        for n in self.names:
            x = torch.stack([self._per_layer[l][n] for l in self.layers], 1)  # [B, L, ...]
            res[n] = (x if batch is None else x[batch]).cpu().numpy()
        return res


def _unsupported(module) -> str | None:
    cfg = getattr(module, "config", None)
    if getattr(cfg, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    if getattr(module, "sinks", None) is not None:
        return "attention sinks"
    return None


@contextmanager
def attention_stats(lm, spec: StatsSpec, layers: Iterable[int] | None = None, kernel: str = "auto"):
    """Compute the statistics of ``spec`` for every forward inside the block,
    in ``layers`` (default: all); the model's outputs are its own.

    ``kernel``: "auto" takes the fused C kernel (``tracing/stats_kernel.py``)
    where it applies (no attention mask: sdpa without padding, on CPU) and can
    be built, else the chunked torch path; "c" requires the kernel; "torch"
    always takes the torch path. Both give the same statistics to float32
    rounding; ``stats.path`` says which ran for each layer.

        with attention_stats(lm, StatsSpec(rows=rows, horizons=("v1", "end"))) as st:
            lm.model(**inputs)
        arrays = st.numpy()   # {"waad": [L, H, T], "fai_end": [L, H, T], ...}
    """
    layers = tuple(range(lm.n_layers) if layers is None else sorted(set(layers)))
    stats = AttentionStats(spec, layers, kernel)

    def fn(layer, base, module, query, key, value, attention_mask, **kwargs):
        why = _unsupported(module)
        if why:
            raise NotImplementedError(f"attention statistics: {type(module).__name__} uses {why}, which this "
                                      f"softmax does not reproduce")
        scaling = kwargs.get("scaling")
        scaling = getattr(module, "scaling", query.shape[-1] ** -0.5) if scaling is None else scaling
        with torch.no_grad():
            stats._record(layer, module, query.detach(), key.detach(), attention_mask, scaling)
        return base(module, query, key, value, attention_mask, **kwargs)

    with attention_overrides(lm, {l: partial(fn, l) for l in layers}, native_mask=True):
        yield stats
