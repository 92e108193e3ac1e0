"""analyses/rhythm_metrics.py (WAAD / FAI, PAPERS.md section 4) against values
worked by hand.

The independent reference: a hand-made causal attention map (T = 6, 2 layers x
2 heads, integer weights normalised per row), from which the per-head arrays
(span term, WAAD, FAI with a horizon over the response rows) are computed here
by explicit Python loops straight from the formulas; the module never sees the
maps. The rhythm statistics (coupling, peak follow, AUROC, boundary rate) are
checked on small vectors whose answers are counted by hand in the comments.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from analyses import rhythm_metrics as R

T = 6
ROWS = np.array([False, False, True, True, True, True])   # prompt 0..1, response R = {2, 3, 4, 5}
W, LO, HI = 2, 1, 2                                          # small window and horizon so both bite
RAW = {  # (layer, head): one list of raw weights per query row t (keys 0..t)
    (0, 0): [[1], [1, 3], [1, 1, 2], [1, 2, 3, 4], [1, 1, 1, 2, 5], [1, 1, 1, 1, 2, 4]],
    (0, 1): [[1], [3, 1], [4, 1, 1], [5, 1, 1, 1], [6, 1, 1, 1, 1], [5, 2, 1, 1, 1, 1]],
    (1, 0): [[1], [1, 1], [2, 1, 1], [1, 1, 1, 1], [2, 2, 1, 1, 4], [1, 2, 3, 1, 1, 2]],
    (1, 1): [[1], [1, 1], [1, 2, 1], [3, 1, 1, 3], [1, 3, 1, 3, 2], [2, 1, 1, 2, 2, 2]],
}


def attention(raw) -> np.ndarray:
    A = np.zeros((T, T))
    for t, r in enumerate(raw):
        A[t, :len(r)] = np.array(r, float) / sum(r)
    return A


def per_head_arrays(A: np.ndarray):
    """span_term, waad, entropy, fai, fai_count of one map, by loops over the formulas."""
    span, waad, ent, fai, count = (np.zeros(T) for _ in range(5))
    for t in range(T):
        for s in range(t + 1):
            span[t] += A[t, s] * (t - s)
            waad[t] += A[t, s] * min(t - s, W)
            if A[t, s] > 0:
                ent[t] -= A[t, s] * math.log(A[t, s])
    for s in range(T):
        ts = [t for t in range(T) if ROWS[t] and s + LO <= t <= s + HI]
        count[s] = len(ts)
        fai[s] = sum(A[t, s] for t in ts) / len(ts) if ts else float("nan")
    return span, waad, ent, fai, count


MAPS = {lh: attention(raw) for lh, raw in RAW.items()}
ARR = {lh: per_head_arrays(A) for lh, A in MAPS.items()}
SPAN, WAAD, ENT, FAI = (np.array([[ARR[(l, h)][i] for h in range(2)] for l in range(2)]) for i in range(4))
FAI_COUNT = ARR[(0, 0)][4]


# ---------------------------------------------------------------- the hand map

def test_the_reference_arrays_match_hand_arithmetic():
    # head (0,0), t = 3: A_3. = [1, 2, 3, 4] / 10, distances 3, 2, 1, 0, capped at W = 2: 2, 2, 1, 0
    # WAAD_3 = 0.1*2 + 0.2*2 + 0.3*1 + 0.4*0 = 0.2 + 0.4 + 0.3 = 0.9; span term = 0.1*3 + 0.2*2 + 0.3*1 = 1.0
    assert WAAD[0, 0, 3] == pytest.approx(0.9)
    assert SPAN[0, 0, 3] == pytest.approx(1.0)
    # FAI of head (0,0) at s = 2: T(2) = {t in R : 3 <= t <= 4} = {3, 4}; A_32 = 3/10, A_42 = 1/10
    # FAI_2 = (0.3 + 0.1) / 2 = 0.2; s = 4: T(4) = {5}, A_54 = 2/10 = 0.2; s = 5: T(5) empty -> NaN
    assert FAI[0, 0, 2] == pytest.approx(0.2)
    assert FAI[0, 0, 4] == pytest.approx(0.2)
    assert np.isnan(FAI[:, :, 5]).all() and np.isfinite(FAI[:, :, :5]).all()
    # |T(s)|: s=0 -> {2}, s=1 -> {2,3}, s=2 -> {3,4}, s=3 -> {4,5}, s=4 -> {5}, s=5 -> {}
    assert FAI_COUNT.tolist() == [1, 2, 2, 2, 1, 0]
    # head (1,0), t = 3 is uniform over 4 keys: entropy log 4
    assert ENT[1, 0, 3] == pytest.approx(math.log(4))


def test_head_span_is_the_mean_over_response_rows():
    d = R.head_span(SPAN, ROWS)
    assert d.shape == (2, 2)
    # head (0,0): t2 = 0.25*2 + 0.25*1 = 0.75, t3 = 1.0, t4 = 0.1*4 + 0.1*3 + 0.1*2 + 0.2*1 = 1.1,
    # t5 = 0.1*5 + 0.1*4 + 0.1*3 + 0.1*2 + 0.2*1 = 1.6; d = (0.75 + 1.0 + 1.1 + 1.6) / 4 = 1.1125
    assert d[0, 0] == pytest.approx(1.1125)
    for (l, h), arrs in ARR.items():
        assert d[l, h] == pytest.approx(sum(arrs[0][t] for t in range(T) if ROWS[t]) / 4)
    with pytest.raises(ValueError, match="rows is empty"):
        R.head_span(SPAN, np.zeros(T, bool))
    with pytest.raises(ValueError, match="rows"):
        R.head_span(SPAN, ROWS.astype(int))


def test_group_mean_is_the_statistic_of_the_group_mean_map():
    """Linearity: the mean of per-head WAAD / FAI / span over a group equals the
    value computed from the group's mean attention map."""
    mask = np.array([[True, False], [False, True]])
    Abar = (MAPS[(0, 0)] + MAPS[(1, 1)]) / 2
    span, waad, _, fai, _ = per_head_arrays(Abar)
    np.testing.assert_allclose(R.group_mean(WAAD, mask), waad, rtol=1e-12)
    np.testing.assert_allclose(R.group_mean(SPAN, mask), span, rtol=1e-12)
    g = R.group_mean(FAI, mask)
    np.testing.assert_allclose(g, fai, rtol=1e-12)          # NaN at s = 5 on both sides
    assert np.isnan(g[5]) and np.isfinite(g[:5]).all()
    # by hand, t = 3: head (0,0) 0.9; head (1,1) A_3. = [3,1,1,3]/8 -> 3/8*2 + 1/8*2 + 1/8*1 = 9/8
    assert R.group_mean(WAAD, mask)[3] == pytest.approx((0.9 + 9 / 8) / 2)
    with pytest.raises(ValueError, match="no head"):
        R.group_mean(WAAD, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="mask"):
        R.group_mean(WAAD, np.ones((2, 3), bool))


# ---------------------------------------------------------------- layers and head groups

def test_select_layers():
    # L = 32: lo = 10, hi = 21, linspace = 10, 12.75, 15.5, 18.25, 21 -> half up 10, 13, 16, 18, 21
    assert R.select_layers(32, "middle") == [10, 13, 16, 18, 21]
    # L = 26: lo = 8, hi = 17, linspace = 8, 10.25, 12.5, 14.75, 17 -> 8, 10, 13, 15, 17 (np.round: 12)
    assert R.select_layers(26, "middle") == [8, 10, 13, 15, 17]
    # L = 3: lo = 1, hi = 2 -> 1, 1.25, 1.5, 1.75, 2 -> 1, 1, 2, 2, 2 -> deduplicated 1, 2
    assert R.select_layers(3, "middle") == [1, 2]
    assert R.select_layers(1, "middle") == [0]
    assert R.select_layers(4) == R.select_layers(4, "all") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="how"):
        R.select_layers(32, "first")
    with pytest.raises(ValueError, match="n_layers"):
        R.select_layers(0)


def test_layer_positions_map_model_layers_to_the_held_axis():
    assert R.layer_positions([4, 9, 13], [9, 13]).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"\[5\]"):
        R.layer_positions([4, 9, 13], [9, 5])


def test_head_groups_on_a_known_span():
    d = np.array([[3.0, 1.0, 1.0], [2.0, 1.0, 5.0]])   # flat: 0:3, 1:1, 2:1, 3:2, 4:1, 5:5
    loc, glob = R.head_groups(d, local=0.5, global_=0.3)
    # local: 0.5 * 6 = 3 heads, the three 1.0 spans (flat 1, 2, 4)
    assert np.flatnonzero(loc).tolist() == [1, 2, 4]
    # global: 0.3 * 6 = 1.8 -> 2 heads: the two largest, 5.0 (flat 5) and 3.0 (flat 0)
    assert np.flatnonzero(glob).tolist() == [0, 5]
    # ties: one stable ascending ranking by flat index, the lower index the more local
    loc, glob = R.head_groups(np.ones((2, 2)), 0.5, 0.25)
    assert np.flatnonzero(loc).tolist() == [0, 1] and np.flatnonzero(glob).tolist() == [3]
    # ascending: 0.0 (flat 2, 4), 1.0 (flat 0, 3), 2.0 (flat 1, 5); 3 heads each: the tied 1.0's split 0 | 3
    loc, glob = R.head_groups(np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 2.0]]), 0.5, 0.5)
    assert np.flatnonzero(loc).tolist() == [0, 2, 4] and np.flatnonzero(glob).tolist() == [1, 3, 5]
    # counts: 0.3 * 10 = 3 (ceil of the float 3.0000000000000004 would give 4); 0.25 * 10 = 2.5 -> 3;
    # 0.05 * 4 = 0.2 -> 0 -> at least 1
    ten = np.arange(10.0).reshape(2, 5)
    assert R.head_groups(ten, 0.3, 0.3)[0].sum() == 3
    assert R.head_groups(ten, 0.25, 0.3)[0].sum() == 3
    assert R.head_groups(np.arange(4.0).reshape(2, 2), 0.05, 0.05)[0].sum() == 1
    # the hand map, one head each: the smallest and largest span
    d = R.head_span(SPAN, ROWS)
    loc, glob = R.head_groups(d, 0.25, 0.25)
    assert loc[np.unravel_index(np.argmin(d), d.shape)] and loc.sum() == 1
    assert glob[np.unravel_index(np.argmax(d), d.shape)] and glob.sum() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(local=0.0), "local"), (dict(local=1.5), "local"), (dict(global_=-0.1), "global_"),
    (dict(global_=2.0), "global_"), (dict(local=0.6, global_=0.5), r"local \+ global_"),
])
def test_head_groups_refuse_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.head_groups(np.arange(10.0).reshape(2, 5), **kwargs)


def test_head_groups_refuse_overlap_and_nan():
    # 3 heads, 0.5 each: 1.5 -> 2 + 2 > 3
    with pytest.raises(ValueError, match="overlap"):
        R.head_groups(np.array([[1.0, 2.0, 3.0]]), 0.5, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        R.head_groups(np.array([[1.0, np.nan]]), 0.5, 0.5)


# ---------------------------------------------------------------- delta, top fraction

def test_waad_delta():
    w = np.array([9.0, 9.0, 1.0, 1.5, 0.5, 0.7])
    dl = R.waad_delta(w, ROWS)
    # t=0,1: t not in R (or t+1 = 2 in R but t = 1 not); 2: |1 - 1.5|; 3: |1.5 - 0.5|; 4: |0.5 - 0.7|; 5: last
    np.testing.assert_allclose(dl, [np.nan, np.nan, 0.5, 1.0, 0.2, np.nan])
    g = R.group_mean(WAAD, np.array([[True, True], [False, False]]))
    dl = R.waad_delta(g, ROWS)
    for t in range(2, 5):
        assert dl[t] == pytest.approx(abs(g[t] - g[t + 1]))
    # a gap in R: t = 3 outside R makes Delta_2 and Delta_3 undefined
    gap = np.array([True, True, True, False, True, True])
    assert np.isnan(R.waad_delta(w, gap)).tolist() == [False, False, True, True, False, True]


def test_top_fraction():
    v = np.array([np.nan, 3, 1, 3, 2, np.nan, 0])
    # 5 defined values, 0.4 * 5 = 2: the two 3's
    assert np.flatnonzero(R.top_fraction(v, 0.4)).tolist() == [1, 3]
    # ties: 0.4 * 5 = 2 of [1, 2, 2, 2, 0]: the earlier two 2's; 0.5 * 5 = 2.5 -> 3: all three
    assert np.flatnonzero(R.top_fraction(np.array([1.0, 2, 2, 2, 0]), 0.4)).tolist() == [1, 2]
    assert np.flatnonzero(R.top_fraction(np.array([1.0, 2, 2, 2, 0]), 0.5)).tolist() == [1, 2, 3]
    within = np.array([True, False, True, True, True, True, True])
    # defined within: 1, 3, 2, 0 at positions 2, 3, 4, 6 -> 0.4 * 4 = 1.6 -> 2: positions 3, 4
    assert np.flatnonzero(R.top_fraction(v, 0.4, within=within)).tolist() == [3, 4]
    assert not R.top_fraction(np.full(4, np.nan)).any()
    # anchors on the hand map's group FAI: defined over R at s = 2, 3, 4 -> 0.4 * 3 = 1.2 -> 1
    g = R.group_mean(FAI, np.ones((2, 2), bool))
    top = R.top_fraction(g, 0.4, within=ROWS)
    assert np.flatnonzero(top).tolist() == [2 + int(np.argmax(g[2:5]))]
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="frac"):
            R.top_fraction(v, bad)


# ---------------------------------------------------------------- the rhythm statistics

RROWS = np.array([False] + [True] * 9)                                   # R = {1, ..., 9}
RWAAD = np.array([0, 1, 5, 2, 1, 6, 1, 0, 4, 3], float)
RDELTA = np.array([9, 0, 3, 1, 0, 2, 4, 0, 1, np.nan])                   # Delta_0 = 9 lies outside R
RFAI = np.array([9, 0.1, 0.9, 0.2, 0.8, 0.3, 0.1, 0.7, 0.2, 0.6])        # FAI_0 = 9 lies outside R
# anchors: top 40% of FAI over R: 0.4 * 9 = 3.6 -> 4 tokens: 0.9 (t2), 0.8 (t4), 0.7 (t7), 0.6 (t9)


def test_coupling_counted_by_hand():
    c = R.coupling(RWAAD, RDELTA, RFAI, RROWS, k=(1, 2, 3), tau_waad=2, tau_delta=2, n_draws=1000, seed=7)
    assert np.flatnonzero(c.anchors).tolist() == [2, 4, 7, 9]
    # coupled = WAAD_t <= 2 and max Delta over t-k..t-1 (in R) >= 2:
    # t2: WAAD 5 no. t4: WAAD 1; k=1: Delta_3 = 1 no; k=2: max(3, 1) = 3 yes; k=3 yes.
    # t7: WAAD 0; k=1: Delta_6 = 4 yes. t9: WAAD 3 no.   -> 1/4, 2/4, 2/4
    assert [c.by_k[k].observed for k in (1, 2, 3)] == [0.25, 0.5, 0.5]
    # all of R: t1 (WAAD 1, but its only earlier Delta_0 is outside R: no), t3 (WAAD 2 <= 2, Delta_2 = 3),
    # t4 (k >= 2), t6 (Delta_5 = 2 >= 2), t7 -> k=1: {3, 6, 7} = 3/9; k=2, 3: {3, 4, 6, 7} = 4/9
    assert [c.by_k[k].baseline_exact for k in (1, 2, 3)] == pytest.approx([3 / 9, 4 / 9, 4 / 9])
    for k in (1, 2, 3):
        r = c.by_k[k]
        assert (r.k, r.n_anchors, r.n_pool, r.n_draws) == (k, 4, 9, 1000)
        assert r.baseline == pytest.approx(r.baseline_exact, abs=0.03)
        assert 0 < r.p_value <= 1
    again = R.coupling(RWAAD, RDELTA, RFAI, RROWS, tau_waad=2, tau_delta=2, n_draws=1000, seed=7)
    assert again.by_k[1].baseline == c.by_k[1].baseline
    assert R.coupling(RWAAD, RDELTA, RFAI, RROWS, tau_waad=2, tau_delta=2, n_draws=1000,
                      seed=8).by_k[1].baseline != c.by_k[1].baseline


def test_coupling_default_taus_are_medians_over_r():
    c = R.coupling(RWAAD, RDELTA, RFAI, RROWS, k=1, n_draws=10)
    # WAAD over R sorted: 0 1 1 1 [2] 3 4 5 6 -> 2; defined Delta over R (t1..8) sorted: 0 0 0 [1 1] 2 3 4 -> 1
    assert (c.tau_waad, c.tau_delta) == (2.0, 1.0)
    # k=1 with tau_delta = 1: t4 now coupled (Delta_3 = 1), t7 too -> 2/4
    assert c.by_k[1].observed == 0.5


def test_coupling_without_anchors_and_bad_arguments():
    c = R.coupling(RWAAD, RDELTA, np.full(10, np.nan), RROWS, k=1, n_draws=5)
    assert not c.anchors.any() and np.isnan(c.by_k[1].observed) and np.isnan(c.by_k[1].baseline)
    with pytest.raises(ValueError, match="k >= 1"):
        R.coupling(RWAAD, RDELTA, RFAI, RROWS, k=0)
    with pytest.raises(ValueError, match="n_draws"):
        R.coupling(RWAAD, RDELTA, RFAI, RROWS, n_draws=0)
    with pytest.raises(ValueError, match="one length"):
        R.coupling(RWAAD, RDELTA[:5], RFAI, RROWS)
    with pytest.raises(ValueError, match="rows"):
        R.coupling(RWAAD, RDELTA, RFAI, RROWS[:5])


def test_peak_follow_rate_counted_by_hand():
    # preplan: top 40% of the defined Delta over R (t1..8): 0.4 * 8 = 3.2 -> 3: 4 (t6), 3 (t2), 2 (t5)
    # anchors {2, 4, 7, 9}; a hit when a preplan token lies in t-k .. t:
    # k=0: t2 only -> 1/4; k=1: t2, t7 (t6) -> 2/4; k=2: t2, t4 (t2), t7 -> 3/4
    r = R.peak_follow_rate(RDELTA, RFAI, RROWS, k=(0, 1, 2), n_draws=500, seed=1)
    assert [r[k].observed for k in (0, 1, 2)] == [0.25, 0.5, 0.75]
    # over R: k=0 {2,5,6} 3/9; k=1 {2,3,5,6,7} 5/9; k=2 {2,3,4,5,6,7,8} 7/9
    assert [r[k].baseline_exact for k in (0, 1, 2)] == pytest.approx([3 / 9, 5 / 9, 7 / 9])
    for k in (0, 1, 2):
        assert r[k].baseline == pytest.approx(r[k].baseline_exact, abs=0.04)
    with pytest.raises(ValueError, match="k must be >= 0"):
        R.peak_follow_rate(RDELTA, RFAI, RROWS, k=-1)


def test_entropy_at_peaks():
    ent = np.array([9, 0.1, 0.5, 0.2, 0.3, 0.6, 0.4, 0.1, 0.2, 0.3])
    pre = np.zeros(10, bool)
    pre[[0, 2, 5, 6]] = True                                    # t0 lies outside R: ignored
    # at peaks (0.5 + 0.6 + 0.4) / 3 = 0.5; elsewhere in R t1,3,4,7,8,9: (0.1+0.2+0.3+0.1+0.2+0.3) / 6 = 0.2
    at, elsewhere = R.entropy_at_peaks(ent, pre, RROWS)
    assert (at, elsewhere) == pytest.approx((0.5, 0.2))
    assert np.isnan(R.entropy_at_peaks(ent, np.zeros(10, bool), RROWS).observed)


def test_dependency_auroc_against_a_pair_count():
    fai = np.array([0.5, 0.3, 0.1, 0.3, 0.4, np.nan, 0.9])
    src = np.array([True, True, False, False, False, True, False])
    cand = np.array([True, True, True, True, True, True, False])   # t6 is no candidate; t5 has NaN FAI
    # positives 0.5, 0.3 vs negatives 0.1, 0.3, 0.4: 0.5 beats 3; 0.3 beats 0.1, ties 0.3 (1/2), loses to 0.4
    # -> (3 + 1 + 0.5) / 6 = 0.75
    assert R.dependency_auroc(fai, src, cand) == pytest.approx(0.75)
    pos, neg = [0.5, 0.3], [0.1, 0.3, 0.4]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / 6
    assert R.dependency_auroc(fai, src, cand) == pytest.approx(pairs)
    assert np.isnan(R.dependency_auroc(fai, np.zeros(7, bool), cand))
    assert np.isnan(R.dependency_auroc(fai, cand, cand))
    with pytest.raises(ValueError, match="sources"):
        R.dependency_auroc(fai, src[:3], cand)


def test_boundary_rate():
    pre = np.zeros(10, bool)
    pre[[0, 2, 5, 6]] = True
    bnd = np.zeros(10, bool)
    bnd[[0, 2, 5, 8]] = True
    # preplan in R: t2, t5, t6 -> on boundaries t2, t5: 2/3; R = t1..9 holds boundaries t2, t5, t8: 3/9
    assert tuple(R.boundary_rate(pre, bnd, RROWS)) == pytest.approx((2 / 3, 1 / 3))
    with pytest.raises(ValueError, match="boundaries"):
        R.boundary_rate(pre, bnd.astype(int), RROWS)
