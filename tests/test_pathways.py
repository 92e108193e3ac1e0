"""analyses/pathways.py and the per-layer knockout conditions it needs
(tracing/knockout.py LayeredKnockout, DenseEdges).

Independent references: per-layer additive masks (finfo.min assigned on top
of the causal triangle) built here from the layout's spans by the paper's
rules, put into each decoder layer of a plain eager forward (the paper's
per-layer patching); edge counts worked by hand on a 14-token layout; random
edges drawn here with their own generator.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from analyses import pathways as P
from tasks.datasets import load_dataset
from tracing.inputs import build_inputs, build_sample_inputs
from tracing.edges import DenseEdges, edges
from tracing.knockout import Knockout, KnockoutRunner, LayeredKnockout, condition_from_dict, knockout
from tracing.layout import Span, TokenLayout
from tracing.registry import load_model

torch.set_num_threads(1)
FMIN = torch.finfo(torch.float32).min
TOL = 1e-5
_MODELS: dict = {}


def model(name, attn="eager"):
    if (name, attn) not in _MODELS:
        _MODELS[name, attn] = load_model(name, attn=attn)
    return _MODELS[name, attn]


def prompt(lm, n_frames, seed=0):
    size = lm.config.vision_config.image_size
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8)
    return build_inputs(lm, frames, "Which way does the object move ?", ["left", "right", "up"], answer=1)


# ---------------------------------------------------------------- the reference
def hand_pathway_allowed(layout, L, cf, vq, ql, vl=None):
    """Per layer (0-indexed list), bool [T, T] allowed entries by the paper's
    rules, read from the spans (cf, vq, ql: 1-indexed inclusive ranges; vl:
    where video -> last is kept, None: nowhere)."""
    T, last = layout.n_tokens, layout.last
    V, Q = list(layout.video.range()), list(layout.question.range())
    frames = sorted({(s.start, s.end) for s in layout.frames})
    out = []
    for l in range(1, L + 1):
        ok = torch.ones(T, T).tril().bool()

        def cut(qs, ks):
            ok[torch.tensor(list(qs))[:, None], torch.tensor(list(ks))[None, :]] = False

        if vl is None or not vl[0] <= l <= vl[1]:
            cut([last], V)
        cut([last], [last])
        if not cf[0] <= l <= cf[1]:
            for i, (a, b) in enumerate(frames):
                for c, d in frames[:i]:
                    cut(range(a, b), range(c, d))
        if not vq[0] <= l <= vq[1]:
            cut(Q, V)
        if not ql[0] <= l <= ql[1]:
            cut([last], Q)
        if l > vq[1]:
            cut(V, V)
        if l > ql[1]:
            cut(Q, Q)
        out.append(ok)
    return out


def additive(allowed):
    return torch.where(allowed, 0.0, FMIN)[None, None]


@torch.no_grad()
def reference_probs(lm, inputs, masks, at):
    """Plain eager forward; decoder layer l gets masks[l] ([1, 1, T, T]) as its attention mask."""
    def patch(mask, mod, args, kwargs):
        kwargs["attention_mask"] = mask
        return args, kwargs

    hooks = [lm.layers[l].register_forward_pre_hook(partial(patch, m), with_kwargs=True) for l, m in enumerate(masks)]
    try:
        return lm.model(**inputs).logits[0, at].float().softmax(-1)
    finally:
        for h in hooks:
            h.remove()


def random_entries(layout, L, n_per_layer, seed):
    """Random causal (query, key) entries with both at or after the first video token, drawn here."""
    rng = np.random.default_rng(seed)
    T, v0 = layout.n_tokens, layout.video.start
    out = []
    for _ in range(L):
        q = rng.integers(v0, T, n_per_layer)
        k = v0 + (rng.random(n_per_layer) * (q - v0 + 1)).astype(int)
        m = torch.zeros(T, T, dtype=torch.bool)
        m[torch.from_numpy(q), torch.from_numpy(k)] = True
        out.append(m)
    return out


CASES = {"tiny-llava-next": (2, ((2, 3), (2, 5), (4, 6))), "organism": (8, ((1, 2), (2, 3), (3, 5)))}


def check_exact(name):
    lm = model(name)
    n_frames, ranges = CASES[name]
    inputs, layout = prompt(lm, n_frames)
    L, T = lm.n_layers, layout.n_tokens
    vocab = range(lm.model.get_output_embeddings().weight.shape[0])
    p = P.Pathways(ranges)
    cond = P.pathway_knockout(p, layout, L)
    allowed = hand_pathway_allowed(layout, L, *ranges)
    ref = reference_probs(lm, inputs, [additive(a) for a in allowed], layout.last)
    # Dense random edges per layer, and a mix of span and dense edge sets in one condition.
    dense = random_entries(layout, L, 3 * T, seed=1)
    rnd = LayeredKnockout.per_layer("random", {l: DenseEdges(f"r{l}", m) for l, m in enumerate(dense) if l % 3 != 1})
    rnd_allowed = [torch.ones(T, T).tril().bool() for _ in range(L)]
    for l, m in enumerate(dense):
        if l % 3 != 1:
            rnd_allowed[l] &= ~m
    vl = edges("video_last", layout)
    mixed = LayeredKnockout.of("mixed", [(DenseEdges("d", dense[0]), [0, 2]), (vl, [2, L - 1])])
    mixed_allowed = [torch.ones(T, T).tril().bool() for _ in range(L)]
    for l in (0, 2):
        mixed_allowed[l] &= ~dense[0]
    for l in (2, L - 1):
        mixed_allowed[l][layout.last, layout.video.start:layout.video.end] = False
    vl_ranges = (*ranges, (2, L - 1))  # beyond the paper: video -> last kept in 2..L-1
    with_vl = P.pathway_knockout(P.Pathways(vl_ranges), layout, L)
    vl_allowed = hand_pathway_allowed(layout, L, *vl_ranges)
    refs = [ref] + [reference_probs(lm, inputs, [additive(a) for a in al], layout.last)
                    for al in (rnd_allowed, mixed_allowed, vl_allowed)]

    runner = KnockoutRunner(lm, inputs, layout)
    conds = [cond, rnd, mixed, with_vl]
    got = runner.run(conds, token_ids=vocab)
    small = KnockoutRunner(lm, inputs, layout, max_batch=1, chunk=17).run(conds, token_ids=vocab)
    naive = runner.naive_run(conds, token_ids=vocab)
    clean = runner.clean(vocab)
    for i, r in enumerate(refs):
        assert (got[i] - r).abs().max() < TOL, i
        assert (small[i] - r).abs().max() < TOL, i
        assert (naive[i] - r).abs().max() < TOL, i
        assert (r - clean).abs().max() > 1e-3, i  # the knockout moves the answer: the comparison says something
    with knockout(lm, layout, cond), torch.no_grad():
        reg = lm.model(**inputs).logits[0, layout.last].float().softmax(-1)
    assert (reg - ref).abs().max() < TOL
    # The pathway's blocked count is the hand masks' count.
    assert P.blocked_count(cond, T, L) == sum(int((~a).tril().sum()) for a in allowed)
    assert P.blocked_count(with_vl, T, L) == sum(int((~a).tril().sum()) for a in vl_allowed)
    # Serialisable, and equal after a round trip.
    assert condition_from_dict(cond.to_dict()) == cond and condition_from_dict(rnd.to_dict()) == rnd


def test_pathways_exact_tiny():
    check_exact("tiny-llava-next")


def test_pathways_exact_organism():
    check_exact("organism")


# ---------------------------------------------------------------- by hand
def small_layout():
    """14 tokens: system 0-1, three frames 2-3 / 4-5 / 6-7, question 8-11
    (options 10, 11), trailing 12-13, last 13."""
    return TokenLayout(n_tokens=14, system=Span(0, 2), video=Span(2, 8), frames=[Span(2, 4), Span(4, 6), Span(6, 8)],
                       frame_grid=(1, 2), question=Span(8, 12), question_text=Span(8, 10),
                       options=[Span(10, 11), Span(11, 12)], trailing=Span(12, 14), last=13, option_ids=[5, 6],
                       answer=1)


def test_parse_pathways():
    p = P.parse_pathways("CF=6-15,VQ=6-20,QL=16-25", n_layers=32)
    assert p.ranges == ((6, 15), (6, 20), (16, 25)) and str(p) == "CF=6-15,VQ=6-20,QL=16-25"
    assert list(p.kept("CF")) == list(range(5, 15))
    assert P.parse_pathways("ql=3, cf=1-2, VQ = 2-3").ranges == ((1, 2), (2, 3), (3, 3))
    p = P.parse_pathways("VL=2-4,CF=1-2,VQ=1-3,QL=2-4")
    assert p.stages == ("CF", "VQ", "QL", "VL") and p["VL"] == (2, 4) and str(p) == "CF=1-2,VQ=1-3,QL=2-4,VL=2-4"
    for bad, msg in [("CF=1-2,VQ=2-3", "missing QL"), ("CF=0-2,VQ=1-1,QL=1-1", "1-indexed"),
                     ("CF=3-2,VQ=1-1,QL=1-1", "first <= last"), ("CF=1-2,VQ=1-2,QL=1-2,CF=1-1", "twice"),
                     ("XX=1-2", "bad part")]:
        with pytest.raises(ValueError, match=msg):
            P.parse_pathways(bad)
    with pytest.raises(ValueError, match="past the model's 4 layers"):
        P.parse_pathways("CF=1-2,VQ=1-5,QL=1-1", n_layers=4)


def test_edge_share_by_hand():
    """4 layers, CF=1-1, VQ=1-2, QL=2-3. Cut per layer (1-indexed):
    always video->last (13 x 2..7: 6) and last->last (1): 7;
    L1: + question->last (13 x 8..11: 4)                       = 11
    L2: + cross-frame (4,5 x 2,3: 4; 6,7 x 2..5: 8)             = 19
    L3: + video<->video (lower triangle of 6: 21, cross-frame
          inside it) + video->question (4 x 6: 24)               = 52
    L4: + 21 + 24 + question->last 4 + question<->question 10   = 66
    148 of 4 x 14 x 15 / 2 = 420 causal edges cut: 272 / 420 kept."""
    lay = small_layout()
    cond = P.pathway_knockout(P.Pathways(((1, 1), (1, 2), (2, 3))), lay, 4)
    per_layer = [P.blocked_count(LayeredKnockout("one", tuple(Knockout(es, (0,)) for es in cond.at(l))), 14, 1)
                 for l in range(4)]
    assert per_layer == [11, 19, 52, 66]
    assert P.blocked_count(cond, 14, 4) == 148 and P.n_causal(14, 4) == 420
    assert P.edge_share(cond, 14, 4) == pytest.approx(272 / 420)
    # The entries of layer 1 (0-indexed 0), listed by hand.
    from tracing.edges import union_blocked

    got = {(q, k) for q, k in zip(*np.nonzero(union_blocked(cond.at(0), 0, 14, 14).numpy())) if k <= q}
    assert got == {(13, k) for k in range(2, 8)} | {(13, 13)} | {(13, k) for k in range(8, 12)}
    # With VL=1-2 video -> last is kept in layers 1 and 2: 6 fewer cut in each.
    vl = P.pathway_knockout(P.Pathways(((1, 1), (1, 2), (2, 3), (1, 2))), lay, 4)
    assert P.blocked_count(vl, 14, 4) == 148 - 12


def test_random_control_by_hand():
    lay = small_layout()
    L = 4
    avail = L * 12 * 13 // 2  # keys and queries in 2..13, causal: 78 per layer
    for n in (1, 148, avail):
        c = P.random_knockout(lay, n, L, seed=(3, n))
        mats = [sum_mats(c.at(l), 14) for l in range(L)]
        assert sum(int(m.sum()) for m in mats) == n == P.blocked_count(c, 14, L)
        for m in mats:
            q, k = np.nonzero(m)
            assert (k >= lay.video.start).all() and (k <= q).all()
    full = P.random_knockout(lay, avail, L, seed=0)
    want = torch.zeros(14, 14, dtype=torch.bool)
    want[2:, 2:] = torch.ones(12, 12).tril().bool()
    assert all((sum_mats(full.at(l), 14) == want.numpy()).all() for l in range(L))
    # Same seed, same edges; another seed, other edges.
    a, b, c = (P.random_knockout(lay, 148, L, seed=s) for s in (5, 5, 6))
    assert a == b and a != c
    with pytest.raises(ValueError, match="available"):
        P.random_knockout(lay, avail + 1, L, seed=0)


def sum_mats(sets, T):
    out = np.zeros((T, T), bool)
    for es in sets:
        out |= es.blocked(0, T, T).numpy()
    return out


# ---------------------------------------------------------------- the search
def hand_accuracy(lm, prepared, p):
    """Accuracy of pathways p from plain eager forwards with the hand masks."""
    L, right = lm.n_layers, 0
    for inputs, lay in prepared:
        masks = [additive(a) for a in hand_pathway_allowed(lay, L, *p.ranges)]
        probs = reference_probs(lm, inputs, masks, lay.last)[lay.option_ids]
        right += int(probs.argmax()) == lay.answer
    return right / len(prepared)


def test_find_pathways_within_tolerance():
    from analyses.flow import flow_maps

    lm = model("organism")
    samples = load_dataset("synthetic", n_frames=8, limit=2, tasks=["order", "static_color", "count"], seed=3).samples
    res = flow_maps(lm, samples, ["cross_frame", "video_question", "question_last"], progress=False,
                    layerwise=False)
    curves = {s: np.nanmean(res["flow"][P.STAGE_EDGES[s]][res["kept"]], 0) for s in P.STAGES}
    ss = P.SampleSet(lm, samples)
    tol = 20.0
    found = P.find_pathways(ss, curves, tolerance=tol, threshold=5.0)
    p = found["pathways"]
    prepared = [build_sample_inputs(lm, s) for s in samples]
    full = float(np.mean([int(ss.clean[i].argmax()) == s.answer for i, s in enumerate(samples)]))
    acc = hand_accuracy(lm, prepared, p)
    assert found["full"] == pytest.approx(full) and found["accuracy"] == pytest.approx(acc)
    assert found["within_tolerance"] and acc >= full - tol / 100 - 1e-9
    assert found["trace"][0]["step"] == "seed" and found["trace"][-1]["pathways"] == str(p)
    # Sparsest reachable by one more step: no single-layer shrink stays within tolerance.
    shrinks = P._moves(p, lm.n_layers, grow=False)
    if shrinks:
        assert (ss.accuracy(shrinks) < full - tol / 100 - 1e-9).all()
    # Deterministic.
    assert P.find_pathways(ss, curves, tolerance=tol, threshold=5.0)["trace"] == found["trace"]
