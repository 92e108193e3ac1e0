"""The preplan-and-anchor rhythm (Li et al., "Attention Illuminates LLM Reasoning",
arXiv 2510.13554; PAPERS.md section 4), as pure functions over per-head arrays.

Inputs, per trace of T tokens (L layers held, H heads), computed elsewhere from
the exact causal attention maps A^(l,h) (rows = queries t, cols = keys s):

    span_term [L,H,T]  sum_{s<=t} A_ts (t - s)
    waad      [L,H,T]  sum_{s<=t} A_ts min(t - s, W)                 (W = 10)
    entropy   [L,H,T]  -sum_s A_ts log A_ts
    fai       [L,H,T]  FAI_s = mean_{t in T(s)} A_ts,  T(s) = {t in R : s+lo <= t <= s+hi};
                       NaN where T(s) is empty (kept NaN here, never 0: an undefined
                       value is not "no attention")
    rows      bool [T] the set R (response positions)
    layers    int [L]  which model layers the first axis holds

WAAD and FAI are linear in the attention map, so a head group's value is the
plain mean of its heads' values (``group_mean``): the per-head arrays are
regrouped without another pass over the model.

Counting rule (head groups, top fractions): a fraction f of N items is
n = floor(f N + 1/2) (round half up, with f N first rounded to 9 decimals so
that 0.3 * 10 counts 3, not 3.0000000000000004), and at least 1: a positive
fraction of a non-empty set never selects nothing. Ties are broken by
position (stable sorts), so results never depend on the sort algorithm.
Numpy only (scikit-learn for the AUROC).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def _fraction(frac: float, name: str) -> float:
    if not (0.0 < float(frac) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {frac!r}")
    return float(frac)


def _count(frac: float, n: int) -> int:
    """floor(frac * n + 1/2), at least 1 when n > 0 (the module's counting rule)."""
    if n == 0:
        return 0
    return max(1, math.floor(round(frac * n, 9) + 0.5))


def _mask(m, T: int, name: str) -> np.ndarray:
    m = np.asarray(m)
    if m.dtype != bool or m.shape != (T,):
        raise ValueError(f"{name} must be a bool array of shape ({T},), got {m.dtype} {m.shape}")
    return m


def _vector(v, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D [T], got shape {v.shape}")
    return v


def _mean(v: np.ndarray) -> float:
    """Mean, NaN (without a warning) for an empty selection."""
    return float(v.mean()) if v.size else float("nan")


def head_span(span_term: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """d^(l,h) = (1/|R|) sum_{t in R} sum_{s<=t} A_ts (t - s)  ->  float [L, H].

    The paper's head span: mean attention distance over the response rows only
    (prompt rows would mix in how the head reads the question)."""
    span_term = np.asarray(span_term, dtype=float)
    if span_term.ndim != 3:
        raise ValueError(f"span_term must be [L, H, T], got shape {span_term.shape}")
    rows = _mask(rows, span_term.shape[2], "rows")
    if not rows.any():
        raise ValueError("rows is empty: the head span needs at least one row in R")
    return span_term[:, :, rows].mean(axis=2)


def select_layers(n_layers: int, how: str = "all") -> list[int]:
    """Model layers to group heads over.

    "all": range(L) (the paper's analysis section). "middle": 5 evenly spaced
    layers in [floor(L/3), floor(2L/3)] (the paper's RL runs, which scored
    better than all layers, their Table 9): np.linspace(lo, hi, 5) rounded
    half up and deduplicated, so a small L gives fewer (L=32 -> 10, 13, 16, 18, 21).
    """
    if int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    n_layers = int(n_layers)
    if how == "all":
        return list(range(n_layers))
    if how == "middle":
        lo, hi = n_layers // 3, (2 * n_layers) // 3
        # floor(x + 1/2), not np.round: numpy rounds halves to even (26 layers: 12.5 -> 12)
        return sorted({int(math.floor(x + 0.5)) for x in np.linspace(lo, hi, 5)})
    raise ValueError(f"how must be 'all' or 'middle', got {how!r}")


def layer_positions(layers: Sequence[int], wanted: Sequence[int]) -> np.ndarray:
    """Positions along the first axis of the model layers ``wanted``, given that
    the arrays hold the model layers ``layers``; ValueError naming any not held."""
    layers = [int(x) for x in layers]
    missing = [int(w) for w in wanted if int(w) not in layers]
    if missing:
        raise ValueError(f"wanted layers {missing} are not among the layers held {layers}")
    return np.array([layers.index(int(w)) for w in wanted], dtype=int)


def head_groups(d: np.ndarray, local: float = 0.3, global_: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(local_mask, global_mask), bool [L, H]: heads ranked across all (l, h) by
    their span d; the bottom ``local`` fraction is locally focused (H_loc, for
    WAAD), the top ``global_`` fraction globally focused (H_glob, for FAI).

    30% each is the paper's example. Counts follow the module's rule (round half
    up, at least 1). Ranking is one ascending stable sort of d over the flat
    index l * H + h: among equal spans the lower flat index ranks lower (more
    local). The groups must be disjoint: overlapping counts raise ValueError."""
    d = np.asarray(d, dtype=float)
    if d.ndim != 2:
        raise ValueError(f"d must be [L, H], got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("d has non-finite head spans")
    local, global_ = _fraction(local, "local"), _fraction(global_, "global_")
    if local + global_ > 1.0 + 1e-12:
        raise ValueError(f"local + global_ must be <= 1, got {local} + {global_}")
    n = d.size
    n_loc, n_glob = _count(local, n), _count(global_, n)
    if n_loc + n_glob > n:
        raise ValueError(f"local and global_ groups overlap: {n_loc} + {n_glob} heads of {n}")
    order = np.argsort(d.ravel(), kind="stable")
    loc, glob = np.zeros(n, bool), np.zeros(n, bool)
    loc[order[:n_loc]] = True
    glob[order[n - n_glob:]] = True
    return loc.reshape(d.shape), glob.reshape(d.shape)


def group_mean(stat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain mean over the group's heads: [L, H, T] x bool [L, H] -> [T].

    By linearity this is WAAD / FAI of the group-mean attention map Abar. Not
    NaN-aware on purpose: FAI is NaN at the same positions for every head, so
    those positions stay NaN."""
    stat, mask = np.asarray(stat, dtype=float), np.asarray(mask)
    if stat.ndim != 3 or mask.dtype != bool or mask.shape != stat.shape[:2]:
        raise ValueError(f"need stat [L, H, T] and a bool mask [L, H], got {stat.shape} and {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ValueError("mask selects no head")
    return stat[mask].mean(axis=0)


def waad_delta(waad_t: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Delta_t = |WAAD_t - WAAD_{t+1}| where t and t+1 are both in R, else NaN
    (so always NaN at the last token): float [T]."""
    waad_t = _vector(waad_t, "waad_t")
    rows = _mask(rows, waad_t.size, "rows")
    delta = np.full(waad_t.size, np.nan)
    both = rows[:-1] & rows[1:]
    delta[:-1][both] = np.abs(waad_t[:-1] - waad_t[1:])[both]
    return delta


def top_fraction(values: np.ndarray, frac: float = 0.4, within: np.ndarray | None = None) -> np.ndarray:
    """bool [T]: the top ``frac`` of the defined (finite) values, restricted to
    ``within`` when given. Count by the module's rule; among equal values the
    earlier position wins. Preplan tokens: top 40% of Delta; anchors: top 40%
    of FAI over R (the paper's 40%)."""
    values = _vector(values, "values")
    frac = _fraction(frac, "frac")
    ok = np.isfinite(values)
    if within is not None:
        ok &= _mask(within, values.size, "within")
    idx = np.flatnonzero(ok)
    out = np.zeros(values.size, bool)
    out[idx[np.argsort(-values[idx], kind="stable")[:_count(frac, idx.size)]]] = True
    return out


@dataclass(frozen=True)
class Rate:
    """How often anchors meet a condition, against random token sets of the same
    size drawn from R. ``baseline`` is the mean over ``n_draws`` draws,
    ``baseline_exact`` its expectation (the condition's rate over all of R),
    ``p_value`` = (1 + #draws with a rate >= observed) / (1 + n_draws)."""
    k: int
    observed: float
    baseline: float
    baseline_exact: float
    p_value: float
    n_anchors: int
    n_pool: int
    n_draws: int


@dataclass(frozen=True)
class Coupling:
    """The thresholds used, the anchors (bool [T]) and the rate per k."""
    tau_waad: float
    tau_delta: float
    anchors: np.ndarray          # bool [T]
    by_k: dict[int, Rate]


def _rates(hits: dict[int, np.ndarray], anchors: np.ndarray, rows: np.ndarray, n_draws: int, seed) -> dict[int, Rate]:
    """Observed rate over the anchors and the random baseline, per k. One set of
    draws serves every k (so the k's are compared on the same random sets)."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws!r}")
    pool = np.flatnonzero(rows)
    m = int(anchors.sum())
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(pool, size=m, replace=False) for _ in range(n_draws)]) if m else None
    out = {}
    for k, h in hits.items():
        obs = _mean(h[anchors])
        if draws is None:
            base, p = np.full(n_draws, np.nan), float("nan")
        else:
            base = h[draws].mean(axis=1)
            p = float((1 + np.sum(base >= obs - 1e-12)) / (1 + n_draws))
        out[k] = Rate(k, obs, float(base.mean()), _mean(h[pool]), p, m, pool.size, n_draws)
    return out


def _ks(k) -> list[int]:
    ks = [int(x) for x in np.atleast_1d(k)]
    if any(x < 0 for x in ks):
        raise ValueError(f"k must be >= 0, got {k!r}")
    return ks


def coupling(waad_t: np.ndarray, delta: np.ndarray, fai_t: np.ndarray, rows: np.ndarray, k=(1, 2, 3),
             tau_waad: float | None = None, tau_delta: float | None = None, frac: float = 0.4,
             n_draws: int = 1000, seed=0) -> Coupling:
    """The paper's "locally dominated anchor" rate, per k.

    Anchors = top ``frac`` of FAI over R. An anchor t is coupled when
    WAAD_t <= tau_waad and max(Delta_{t-k} .. Delta_{t-1}) >= tau_delta (over
    the defined Delta in that window within R; none defined -> not coupled).
    The taus are not given in the paper; they default to the medians of WAAD
    and of the defined Delta over R. Baseline: random sets of the anchors'
    size drawn from R (seeded numpy Generator ``seed``)."""
    waad_t, delta, fai_t = _vector(waad_t, "waad_t"), _vector(delta, "delta"), _vector(fai_t, "fai_t")
    T = waad_t.size
    if delta.size != T or fai_t.size != T:
        raise ValueError(f"waad_t, delta and fai_t must have one length, got {T}, {delta.size}, {fai_t.size}")
    rows = _mask(rows, T, "rows")
    if not rows.any():
        raise ValueError("rows is empty")
    d = np.where(rows & np.isfinite(delta), delta, np.nan)
    tw = float(np.median(waad_t[rows])) if tau_waad is None else float(tau_waad)
    td = (float(np.median(d[np.isfinite(d)])) if np.isfinite(d).any() else float("nan")) \
        if tau_delta is None else float(tau_delta)
    anchors = top_fraction(fai_t, frac, within=rows)
    hits = {}
    for kk in _ks(k):
        if kk < 1:
            raise ValueError(f"coupling needs k >= 1 (tokens before the anchor), got {kk}")
        before = np.full(T, -np.inf)
        for t in range(T):
            win = d[max(0, t - kk):t]
            win = win[np.isfinite(win)]
            if win.size:
                before[t] = win.max()
        hits[kk] = (waad_t <= tw) & (before >= td)
    return Coupling(tw, td, anchors, _rates(hits, anchors, rows, n_draws, seed))


def peak_follow_rate(delta: np.ndarray, fai_t: np.ndarray, rows: np.ndarray, k=(1, 2, 3), frac: float = 0.4,
                     n_draws: int = 1000, seed=0) -> dict[int, Rate]:
    """Fraction of FAI peaks (anchors: top ``frac`` of FAI over R) at or right
    after a WAAD peak (preplan token: top ``frac`` of Delta), i.e. with a
    preplan token among t-k .. t (k = 0: at t only), per k; random baseline as
    in ``coupling``. The paper: 52.53% observed vs 36.87% random (k not given)."""
    delta, fai_t = _vector(delta, "delta"), _vector(fai_t, "fai_t")
    rows = _mask(rows, delta.size, "rows")
    if fai_t.size != delta.size:
        raise ValueError(f"delta and fai_t must have one length, got {delta.size} and {fai_t.size}")
    if not rows.any():
        raise ValueError("rows is empty")
    preplan = top_fraction(delta, frac, within=rows)
    anchors = top_fraction(fai_t, frac, within=rows)
    hits = {kk: np.array([preplan[max(0, t - kk):t + 1].any() for t in range(delta.size)]) for kk in _ks(k)}
    return _rates(hits, anchors, rows, n_draws, seed)


class Comparison(NamedTuple):
    observed: float
    baseline: float


def entropy_at_peaks(entropy_t: np.ndarray, preplan: np.ndarray, rows: np.ndarray) -> Comparison:
    """(mean entropy at preplan tokens in R, mean at the other tokens of R); NaN
    for an empty side. Meant for the model's next-token predictive entropy
    (paper: 0.3608 at WAAD peaks vs 0.2386); the caller aligns it to positions."""
    entropy_t = _vector(entropy_t, "entropy_t")
    preplan, rows = _mask(preplan, entropy_t.size, "preplan"), _mask(rows, entropy_t.size, "rows")
    return Comparison(_mean(entropy_t[preplan & rows]), _mean(entropy_t[~preplan & rows]))


def dependency_auroc(fai_t: np.ndarray, sources: np.ndarray, candidates: np.ndarray) -> float:
    """AUROC of FAI ranking source tokens (those later steps read) above the
    other candidates: positives = sources & candidates, negatives = the rest of
    the candidates, positions with NaN FAI dropped (sources outside the
    candidates are ignored). Ties count one half. NaN when a class is empty."""
    fai_t = _vector(fai_t, "fai_t")
    sources, candidates = _mask(sources, fai_t.size, "sources"), _mask(candidates, fai_t.size, "candidates")
    pool = candidates & np.isfinite(fai_t)
    y = sources[pool]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, fai_t[pool]))


def boundary_rate(preplan: np.ndarray, boundaries: np.ndarray, rows: np.ndarray) -> Comparison:
    """(fraction of preplan tokens in R on step boundaries, fraction of all R
    tokens on step boundaries, the baseline); NaN for an empty set."""
    T = np.asarray(preplan).size
    preplan, boundaries, rows = (_mask(preplan, T, "preplan"), _mask(boundaries, T, "boundaries"),
                                 _mask(rows, T, "rows"))
    return Comparison(_mean(boundaries[preplan & rows].astype(float)), _mean(boundaries[rows].astype(float)))
