"""tracing/knockout.py: exact against a hand-built mask, fast path = naive path,
mask semantics by hand, generation.

The reference in these tests never uses the engine's code: its mask is built
here from the layout's spans ([1, 1, T, T], additive finfo.min, assigned on
top of the causal triangle) and put into the selected layers of a plain eager
model by replacing the ``attention_mask`` each decoder layer receives (the
paper's per-layer patching), or passed whole to the model forward.
"""
import json

import numpy as np
import pytest
import torch

from tracing.inputs import build_inputs
from tracing.edges import EDGE_SETS, EdgeSet, edges
from tracing.knockout import (Knockout, KnockoutRunner, bottom_up, default_window, knockout, knockout_mask, top_down,
                              window, window_sweep)
from tracing.layout import Span, TokenLayout
from tracing.registry import TINY_MODELS, load_model

torch.set_num_threads(1)
FMIN = torch.finfo(torch.float32).min
TOL = 1e-5
QUESTION = "Which way does the object move ?"
OPTIONS = ["left", "right", "up"]
N_FRAMES = {"tiny-llava-next": 3}  # 144 tokens per frame; the others are small

_MODELS: dict = {}


def model(name, attn="eager"):
    if (name, attn) not in _MODELS:
        _MODELS[name, attn] = load_model(name, attn=attn)
    return _MODELS[name, attn]


def frames(seed, n=4, size=96):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def prompt(lm, seed=0, n=None):
    return build_inputs(lm, frames(seed, n or N_FRAMES.get(lm.name, 4)), QUESTION, OPTIONS, answer=1)


# ---------------------------------------------------------------- the independent reference
def frame_groups(layout):
    """Distinct frame spans in order (Qwen2-VL: two frames share one)."""
    return sorted({(s.start, s.end) for s in layout.frames})


def hand_blocks(layout, kind):
    """[(key positions, query positions)] for an edge type, from the spans."""
    r = lambda s: list(s.range())  # noqa: E731
    last = [layout.last]
    if kind == "cross_frame":
        g = frame_groups(layout)
        return [(list(range(*g[j])), list(range(*g[i]))) for i in range(len(g)) for j in range(i)]
    return {
        "video_question": [(r(layout.video), r(layout.question))],
        "video_last": [(r(layout.video), last)],
        "question_last": [(r(layout.question), last)],
        "last_last": [(last, last)],
        "true_option_last": [(r(layout.options[layout.answer]), last)],
        "false_options_last": [(r(s), last) for i, s in enumerate(layout.options) if i != layout.answer],
        "question_text_true_option": [(r(layout.question_text), r(layout.options[layout.answer]))],
        "all_to_last": [(list(range(layout.n_tokens)), last)],  # a fully blocked row
    }[kind]


def hand_mask(T, blocks):
    allowed = torch.ones(T, T).tril().bool()
    for keys, queries in blocks:
        allowed[torch.tensor(queries)[:, None], torch.tensor(keys)[None, :]] = False
    return torch.where(allowed, 0.0, FMIN)[None, None]


@torch.no_grad()
def reference_logits(lm, inputs, mask, layers, at):
    """Eager forward; each selected layer gets ``mask`` instead of its own."""
    def patch(mod, args, kwargs):
        kwargs["attention_mask"] = mask
        return args, kwargs

    hooks = [lm.layers[l].register_forward_pre_hook(patch, with_kwargs=True) for l in layers]
    try:
        return lm.model(**inputs).logits[0, at]
    finally:
        for h in hooks:
            h.remove()


KINDS = ["cross_frame", "video_question", "video_last", "question_last", "last_last", "true_option_last",
         "question_text_true_option", "all_to_last"]


def cases(L):
    """(kind, layers): several edge types and window styles."""
    return [("cross_frame", window(1, 2, L)), ("cross_frame", bottom_up(L // 2)), ("video_question", window(1, 3, L)),
            ("video_question", top_down(L // 2, L)), ("video_last", range(L)), ("question_last", window(L - 1, 2, L)),
            ("last_last", [0, L - 1]), ("true_option_last", range(L)), ("question_text_true_option", window(0, 2, L)),
            ("all_to_last", [L // 2])]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_exact_against_hand_built_mask(name, attn):
    ref_lm, lm = model(name), model(name, attn)
    inputs, layout = prompt(lm)
    T, L = layout.n_tokens, lm.n_layers
    runner = KnockoutRunner(lm, inputs, layout)
    named = {k: (edges(k, layout) if k in EDGE_SETS else edges("system,video,question,trailing->last", layout))
             for k in KINDS}
    conds = [(named[k], layers) for k, layers in cases(L)]
    fast = runner.logits(conds).softmax(-1)
    naive = runner.naive_run(conds, token_ids=range(fast.shape[1]))
    # Many chunks and batches of two: the same numbers.
    small = KnockoutRunner(lm, inputs, layout, max_batch=2, chunk=23).logits(conds).softmax(-1)
    assert (small - fast).abs().max() < TOL
    clean = runner.clean(range(fast.shape[1]))
    changed = 0
    for i, (kind, layers) in enumerate(cases(L)):
        ref = reference_logits(ref_lm, inputs, hand_mask(T, hand_blocks(layout, kind)), layers, layout.last).softmax(-1)
        assert (fast[i] - ref).abs().max() < TOL, (kind, list(layers))
        assert (naive[i] - ref).abs().max() < TOL, (kind, list(layers))
        with knockout(lm, layout, named[kind], layers), torch.no_grad():
            reg = lm.model(**inputs).logits[0, layout.last].softmax(-1)
        assert (reg - ref).abs().max() < TOL, (kind, list(layers))
        changed += bool((ref - clean).abs().max() > 1e-3)
    # The comparison says something only if the knockouts move the answer.
    assert changed >= len(conds) // 2
    assert torch.isfinite(fast).all()
    # The cached/batched path recomputed exactly the affected region.
    assert runner.last_stats["token_layers"] == runner.last_stats["minimum"] < runner.last_stats["naive"]


def test_whole_model_4d_mask_and_qwen_mrope_sweep():
    """Two more independent routes: a [1,1,T,T] mask given to the model
    forward (used as given in every layer), and a full window sweep on
    Qwen2-VL, whose M-RoPE positions the fast path must slice correctly."""
    lm = model("tiny-llava-next")
    inputs, layout = prompt(lm)
    mask = hand_mask(layout.n_tokens, hand_blocks(layout, "video_question") + hand_blocks(layout, "question_last"))
    with torch.no_grad():
        ref = lm.model(**{**inputs, "attention_mask": mask}).logits[0, layout.last].softmax(-1)
    es = edges("video_question", layout) | edges("question_last", layout)
    got = KnockoutRunner(lm, inputs, layout).logits([(es, range(lm.n_layers))]).softmax(-1)[0]
    assert (got - ref).abs().max() < TOL

    lm = model("tiny-qwen2-vl")
    inputs, layout = prompt(lm)
    runner = KnockoutRunner(lm, inputs, layout)
    conds = window_sweep(edges("cross_frame", layout), lm.n_layers, k=2)
    got = runner.logits(conds).softmax(-1)
    mask = hand_mask(layout.n_tokens, hand_blocks(layout, "cross_frame"))
    for i, c in enumerate(conds):
        ref = reference_logits(lm, inputs, mask, c.layers, layout.last).softmax(-1)
        assert (got[i] - ref).abs().max() < TOL


def test_fully_blocked_rows_exact_under_chunking():
    """Issue 14: with "system,video->video" every video query has all its keys
    cut; in the paper's [T, T] mask (finfo.min assigned) such a row is uniform
    over all T keys, future ones included, whatever the chunk size."""
    import dataclasses

    lm = model("tiny-llava-next")
    inputs, layout = prompt(lm)
    T, L = layout.n_tokens, lm.n_layers
    video = list(layout.video.range())
    mask = hand_mask(T, [(list(layout.system.range()) + video, video)])
    assert (mask[0, 0] == FMIN).all(1).sum() == len(video)  # the rows in question: nothing left to read
    es = edges("system,video->video", layout)
    cases = [[0, 1], [L - 1], [2, L - 1]]  # the last: a fully blocked row in the final layer too
    refs = [reference_logits(lm, inputs, mask, ls, layout.last).softmax(-1) for ls in cases]
    clean = KnockoutRunner(lm, inputs, layout).clean(range(refs[0].shape[0]))
    assert (refs[0] - clean).abs().max() > 1e-3  # the knockout moves the answer
    for chunk in (16, 23, None):
        runner = KnockoutRunner(lm, inputs, layout, chunk=chunk, max_batch=2)
        got = runner.logits([(es, ls) for ls in cases]).softmax(-1)
        for i, ls in enumerate(cases):
            assert (got[i] - refs[i]).abs().max() < 2e-6, (chunk, ls)
        assert runner.last_stats["naive_conditions"] == 0 and runner.last_stats["kv_ahead"] > 0
    # sdpa, and a prompt going on past the last position (then such a
    # condition runs as one full forward: the later positions are not recomputed).
    got = KnockoutRunner(model("tiny-llava-next", "sdpa"), inputs, layout, chunk=16).logits([(es, [0, 1])])
    assert (got[0].softmax(-1) - refs[0]).abs().max() < 2e-6
    short = dataclasses.replace(layout, last=T - 3)
    runner = KnockoutRunner(lm, inputs, short, chunk=16)
    got = runner.logits([(es, [0, 1]), (edges("video_question", layout), [0, 1])]).softmax(-1)
    assert runner.last_stats["naive_conditions"] == 1
    ref = reference_logits(lm, inputs, mask, [0, 1], T - 3).softmax(-1)
    assert (got[0] - ref).abs().max() < 2e-6
    ref = reference_logits(lm, inputs, hand_mask(T, hand_blocks(short, "video_question")), [0, 1], T - 3).softmax(-1)
    assert (got[1] - ref).abs().max() < 2e-6


# ---------------------------------------------------------------- mask semantics by hand
def small_layout(grouped=False):
    """14 tokens: system 0-1, three frames 2-3 / 4-5 / 6-7 (or, grouped like
    Qwen2-VL, two temporal patches 2-4 / 5-7 of two frames each), question
    8-11 with options 10 and 11, trailing 12-13, last 13."""
    frames = [Span(2, 5), Span(2, 5), Span(5, 8), Span(5, 8)] if grouped else [Span(2, 4), Span(4, 6), Span(6, 8)]
    return TokenLayout(n_tokens=14, system=Span(0, 2), video=Span(2, 8), frames=frames, frame_grid=(1, 2),
                       question=Span(8, 12), question_text=Span(8, 10), options=[Span(10, 11), Span(11, 12)],
                       trailing=Span(12, 14), last=13, option_ids=[5, 6], frames_per_group=2 if grouped else 1,
                       answer=1)


def blocked_entries(mask):
    """{(query, key)} blocked beyond causality."""
    m = mask[0, 0]
    T = m.shape[0]
    return {(q, k) for q in range(T) for k in range(q + 1) if m[q, k] == FMIN}


def test_cross_frame_mask_by_hand():
    lay = small_layout()
    m = knockout_mask(lay, edges("cross_frame", lay))
    assert m.shape == (1, 1, 14, 14) and not torch.isinf(m).any()
    # Frame 1 (4, 5) loses frame 0 (2, 3); frame 2 (6, 7) loses frames 0 and 1.
    expect = {(q, k) for q in (4, 5) for k in (2, 3)} | {(q, k) for q in (6, 7) for k in (2, 3, 4, 5)}
    assert blocked_entries(m) == expect
    assert (m[0, 0][torch.ones(14, 14).triu(1).bool()] == FMIN).all()  # the causal part is kept
    # Qwen2-VL: frames sharing a temporal patch are one group; within it attention stays.
    lay = small_layout(grouped=True)
    assert blocked_entries(knockout_mask(lay, edges("cross_frame", lay))) == {(q, k) for q in (5, 6, 7) for k in (2, 3, 4)}


def test_named_and_parsed_edge_sets_by_hand():
    lay = small_layout()
    got = lambda name: blocked_entries(knockout_mask(lay, edges(name, lay)))  # noqa: E731
    assert got("video_question") == {(q, k) for q in range(8, 12) for k in range(2, 8)}
    assert got("video_last") == {(13, k) for k in range(2, 8)}
    assert got("last_last") == {(13, 13)}
    assert got("question_text_last") == {(13, 8), (13, 9)}
    assert got("true_option_last") == {(13, 11)}
    assert got("false_options_last") == {(13, 10)}
    assert got("video_question_text") == {(q, k) for q in (8, 9) for k in range(2, 8)}
    assert got("question_text_true_option") == {(11, 8), (11, 9)}
    assert got("frame:0->frame:2") == {(q, k) for q in (6, 7) for k in (2, 3)}
    assert got("video->question,last; system->last") == got("video_question") | got("video_last") | {(13, 0), (13, 1)}
    assert got("last->video") == set()  # only acausal entries: nothing to cut
    assert edges("last->video", lay).first_query(14) is None
    assert edges("video_question", lay).first_query(14) == 8
    assert edges("cross_frame", lay).first_query(14) == 4
    # A generated token is a target only where an edge set says so.
    m = knockout_mask(lay, edges("video->last,generated", lay), T=16)
    assert blocked_entries(m) == {(q, k) for q in (13, 14, 15) for k in range(2, 8)}
    assert blocked_entries(knockout_mask(lay, edges("video_last", lay), T=16)) == {(13, k) for k in range(2, 8)}
    with pytest.raises(ValueError, match="nope"):
        edges("nope", lay)
    with pytest.raises(ValueError, match="frame:9"):
        edges("frame:9->last", lay)


def test_layer_sets_and_serialisation():
    assert window(0, 9, 32) == range(0, 5) and window(10, 9, 32) == range(6, 15) and window(31, 9, 32) == range(27, 32)
    # Issue 14: centre c, size k -> layers [c - k/2, c + k/2 - 1] for even k (the
    # authors' code), [c - (k-1)/2, c + (k-1)/2] for odd k, clipped to [0, L).
    for L in (6, 8, 32):
        for k in range(1, 11):
            for c in range(L):
                lo, hi = (c - k // 2, c + k // 2 - 1) if k % 2 == 0 else (c - (k - 1) // 2, c + (k - 1) // 2)
                assert list(window(c, k, L)) == list(range(max(0, lo), min(L - 1, hi) + 1)), (L, k, c)
    assert window(3, 2, 8) == range(2, 4) and window(0, 1, 4) == range(0, 1)
    assert [default_window(n) for n in (40, 32, 8, 6, 4, 2)] == [9, 9, 2, 2, 1, 1]
    assert bottom_up(2) == range(0, 3) and top_down(2, 8) == range(2, 8)
    with pytest.raises(ValueError, match="center"):
        window(8, 2, 8)
    lay = small_layout()
    for es in (edges("cross_frame", lay), edges("video->generated", lay)):
        k = Knockout.of((es, window(2, 3, 8)))
        assert Knockout.from_dict(json.loads(json.dumps(k.to_dict()))) == k
        assert EdgeSet.from_dict(json.loads(json.dumps(es.to_dict()))) == es


def test_empty_layers_and_acausal_edges_change_nothing():
    lm = model("tiny-llava-onevision")
    inputs, layout = prompt(lm)
    runner = KnockoutRunner(lm, inputs, layout)
    got = runner.run([(edges("video_question", layout), []), (edges("last->video", layout), range(lm.n_layers))],
                     token_ids=range(len(lm.tokenizer)))
    with torch.no_grad():
        clean = lm.model(**inputs).logits[0, layout.last].softmax(-1)
    assert (got - clean).abs().max() < TOL
    assert runner.last_stats["token_layers"] == 0
    with pytest.raises(ValueError, match="layers"):
        runner.run([(edges("video_last", layout), [lm.n_layers])])


def test_blocking_every_video_path_makes_the_answer_video_independent():
    lm = model("tiny-llava-next")
    L = lm.n_layers
    runs = [KnockoutRunner(lm, *prompt(lm, seed=s)) for s in (1, 2)]
    layout = runs[0].layout
    V = range(len(lm.tokenizer))
    # video -> question and video -> last leave the path through the trailing
    # prompt text ("... ASSISTANT: Best option:") open: the videos still differ.
    open_ = edges("video_question", layout) | edges("video_last", layout)
    a, b = (r.run([(open_, range(L))], token_ids=V)[0] for r in runs)
    assert (a - b).abs().max() > 1e-3
    # Cutting video -> everything after it, in all layers, closes every path.
    closed = edges("video->question,trailing", layout)
    a, b = (r.run([(closed, range(L))], token_ids=V)[0] for r in runs)
    assert (a - b).abs().max() < 1e-6
    # In fewer layers it does not: a test that can fail.
    a, b = (r.run([(closed, range(1, L))], token_ids=V)[0] for r in runs)
    assert (a - b).abs().max() > 1e-3


# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("target", ["video_question", "video->question,generated"])
def test_generation_under_knockout(target):
    lm = model("tiny-llava-next")
    inputs, layout = prompt(lm)
    T, L = layout.n_tokens, lm.n_layers
    es, layers = edges(target, layout), window(3, 3, L)
    with knockout(lm, layout, es, layers), torch.no_grad():
        g = lm.model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)
    assert lm.text_config._attn_implementation == "eager"  # restored on exit
    first = KnockoutRunner(lm, inputs, layout).logits([(es, layers)]).softmax(-1)[0]
    assert (g.logits[0][0].softmax(-1) - first).abs().max() < TOL
    # Later steps: one full forward over prompt + generated tokens with the hand
    # mask, where new tokens are targets only if the edge set names them.
    seq = g.sequences[:, : T + 2]
    blocks = [(list(layout.video.range()), list(layout.question.range()))]
    if "generated" in target:
        blocks.append((list(layout.video.range()), [T, T + 1]))
    ext = {**inputs, "input_ids": seq, "attention_mask": torch.ones_like(seq)}
    ref = reference_logits(lm, ext, hand_mask(T + 2, blocks), layers, slice(T, T + 2)).softmax(-1)
    for step in (1, 2):
        assert (g.logits[step][0].softmax(-1) - ref[step - 1]).abs().max() < TOL


def test_generation_under_knockout_mrope_sdpa():
    lm = model("tiny-qwen2-vl", "sdpa")
    inputs, layout = prompt(lm)
    es, layers = edges("video_question", layout) | edges("video_last", layout), range(lm.n_layers)
    with knockout(lm, layout, es, layers), torch.no_grad():
        g = lm.model.generate(**inputs, max_new_tokens=2, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)
    first = KnockoutRunner(lm, inputs, layout).logits([(es, layers)]).softmax(-1)[0]
    assert (g.logits[0][0].softmax(-1) - first).abs().max() < TOL


# ---------------------------------------------------------------- the organism
def test_organism_exact():
    lm = load_model("organism")
    size = lm.config.vision_config.image_size
    inputs, layout = build_inputs(lm, frames(0, 8, size), QUESTION, OPTIONS, answer=1)
    runner = KnockoutRunner(lm, inputs, layout)
    L = lm.n_layers
    kinds = [("cross_frame", window(1, 2, L)), ("video_question", window(2, 2, L)), ("question_last", top_down(L // 2, L))]
    got = runner.logits([(edges(k, layout), ls) for k, ls in kinds]).softmax(-1)
    for i, (k, ls) in enumerate(kinds):
        ref = reference_logits(lm, inputs, hand_mask(layout.n_tokens, hand_blocks(layout, k)), ls, layout.last).softmax(-1)
        assert (got[i] - ref).abs().max() < TOL, k
