"""Logit lens on video tokens (analyses/lens.py): every readout recomputed by
hand from a plain Hugging Face forward (output_hidden_states, the final norm
and lm_head called directly) on a tiny model and the organism; the word
counts on a hand-worked example; word lists and unknown words; the CLI's
file, figures and --help."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from analyses import lens
from analyses.run import RunError
from tasks.synthetic import render
from tracing.inputs import build_sample_inputs
from tracing.registry import load_model
from tracing.store import CacheReader

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llava-next")


@pytest.fixture(scope="module")
def models(organism, tiny):
    return {"organism": organism, "tiny-llava-next": tiny}


def _by_hand(lm, sample):
    """Everything the lens reads, from a plain forward: the residual stream at
    each frame's tokens per layer entry [L+1, G, P, d], the model's logits
    there, and its option-letter answer. Module paths are LLaVA-NeXT's own,
    written out here rather than taken from the family table."""
    inputs, layout = build_sample_inputs(lm, sample)
    lang = lm.model.model.language_model
    raw = {}
    hook = lang.layers[-1].register_forward_hook(lambda m, i, o: raw.setdefault("out", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = lm.model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    hs = out.hidden_states  # L+1 entries; the last one is after the final norm
    L = lm.n_layers
    assert len(hs) == L + 1
    torch.testing.assert_close(lang.norm(raw["out"]), hs[L])  # the hook caught the raw last-layer output
    entries = [hs[l][0] for l in range(L)] + [raw["out"][0]]
    h = torch.stack([torch.stack([e[s.start:s.end] for s in layout.frames]) for e in entries])
    logits = torch.stack([out.logits[0, s.start:s.end] for s in layout.frames])
    pred = int(out.logits[0, layout.last, layout.option_ids].argmax())
    return h, logits, pred, lang, layout


def _check(ids, probs, hand_logits, k):
    """ids are a top-k of the hand logits, best first, and probs their softmax
    probabilities; the same ids as the hand's top-k wherever the hand's logits
    are not tied within float32 rounding."""
    lg = hand_logits.double()
    hv, hi = lg.topk(k, -1)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    mine = lg.gather(-1, ids_t)
    tol = 1e-5 * (1 + lg.abs().amax(-1, keepdim=True))
    assert ((mine - hv).abs() <= tol).all()
    untied = torch.cat([hv[..., :-1] - hv[..., 1:] > tol, torch.ones_like(hv[..., :1], dtype=torch.bool)], -1)
    untied &= torch.cat([torch.ones_like(hv[..., :1], dtype=torch.bool), untied[..., :-1]], -1)
    assert (ids_t == hi)[untied].all() and untied.float().mean() > 0.9
    hp = torch.softmax(lg, -1).gather(-1, ids_t)
    np.testing.assert_allclose(probs, hp.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,task,frames", [("tiny-llava-next", "direction", 2), ("organism", "order", 8),
                                               ("tiny-llava-onevision", "static_color", 3)])
def test_readouts_equal_a_hand_computation(name, task, frames, models):
    # OneVision: frames pooled to 36 tokens each, and a newline token after the
    # video that is no frame's and is left out
    if name not in models:
        models[name] = load_model(name)
    lm = models[name]
    s = render(task, seed=7, n_frames=frames)
    k = 4
    res = lens.video_lens(lm, [s], k=k, readouts=list(lens.READOUTS), progress=False)
    h, logits, pred, lang, layout = _by_hand(lm, s)
    L, G, P = lm.n_layers, len(layout.frames), len(layout.frames[0])
    assert res["topk_ids"]["embed"].shape == (1, L + 1, G, P, k)
    assert res["n_groups"].tolist() == [G] and res["tokens_per_group"].tolist() == [P]
    assert res["pred"].tolist() == [pred]
    E, W = lang.embed_tokens.weight, lm.model.lm_head.weight
    with torch.no_grad():
        _check(res["topk_ids"]["embed"][0], res["topk_probs"]["embed"][0], h @ E.T, k)
        _check(res["topk_ids"]["unembed"][0], res["topk_probs"]["unembed"][0], lm.model.lm_head(h), k)
        _check(res["topk_ids"]["unembed_norm"][0], res["topk_probs"]["unembed_norm"][0], lm.model.lm_head(lang.norm(h)), k)
        # after every layer and the final norm, the lens is the model's own output distribution
        _check(res["topk_ids"]["unembed_norm"][0, L], res["topk_probs"]["unembed_norm"][0, L], logits, k)
        # frame_mean: each frame's mean residual stream through the embedding
        pooled = lens.video_lens(lm, [s], k=k, readouts=["embed"], pool="frame_mean", progress=False)
        assert pooled["topk_ids"]["embed"].shape == (1, L + 1, G, 1, k)
        _check(pooled["topk_ids"]["embed"][0], pooled["topk_probs"]["embed"][0], h.mean(2, keepdim=True) @ E.T, k)
    assert W.shape[0] == E.shape[0]


def test_padding_of_samples_with_fewer_frames(organism):
    a, b = render("direction", seed=1, n_frames=8), render("static_color", seed=2, n_frames=3)
    res = lens.video_lens(organism, [a, b], k=2, readouts=["embed"], progress=False)
    ids, probs = res["topk_ids"]["embed"], res["topk_probs"]["embed"]
    assert ids.shape == (2, organism.n_layers + 1, 8, 4, 2) and res["n_groups"].tolist() == [8, 3]
    assert (ids[1, :, 3:] == -1).all() and np.isnan(probs[1, :, 3:]).all()
    assert (ids[1, :, :3] >= 0).all() and (ids[0] >= 0).all()
    # padding is not counted
    c = lens.word_counts(ids[..., 0], {"all": list(range(200))}, 100)
    assert c["totals"].tolist() == [(8 + 3) * 4 * (organism.n_layers + 1)]


def test_word_counts_hand_worked():
    # 1 sample, 5 layer entries, 2 frames x 2 tokens; bins of 2: entries 0-1, 2-3, 4
    top1 = np.array([[
        [[10, 11], [20, 99]],  # entry 0: spatial 2, temporal 1
        [[10, 10], [-1, -1]],  # entry 1: spatial 2 (second frame is padding)
        [[20, 20], [20, 11]],  # entry 2: temporal 3, spatial 1
        [[99, 99], [99, 99]],  # entry 3: none
        [[20, 99], [99, 99]],  # entry 4: temporal 1
    ]])
    words = {"spatial": {"left": [10], "right": [11]}, "temporal": {"then": [20]}, "colour": {"red": [30]}}
    c = lens.word_counts(top1, words, 2)
    assert c["lists"] == ["spatial", "temporal", "colour"]
    assert c["bins"].tolist() == [[0, 1], [2, 3], [4, 4]]
    assert c["counts"].tolist() == [[4, 1, 0], [1, 3, 1], [0, 0, 0]]
    assert c["totals"].tolist() == [6, 8, 4]
    assert c["hits"].tolist() == [5, 5, 0]
    np.testing.assert_allclose(c["shares"], [[0.8, 0.2, 0.0], [0.2, 0.6, 0.2], [0, 0, 0]])  # rows sum to 1
    np.testing.assert_allclose(c["rates"], [[4 / 6, 1 / 8, 0], [1 / 6, 3 / 8, 1 / 4], [0, 0, 0]])
    assert np.isfinite(c["shares"]).all() and np.isfinite(c["rates"]).all()
    # plain id lists work too; a bin holding only padding has rate 0, not NaN
    pad = top1.copy()
    pad[:, 4] = -1
    c2 = lens.word_counts(pad, {"temporal": [20]}, 2)
    assert c2["totals"].tolist() == [6, 8, 0] and c2["rates"][0, 2] == 0
    np.testing.assert_allclose(c2["shares"], [[0.25, 0.75, 0.0]])
    assert lens.layer_bins(33, 5)[-1].tolist() == [30, 32] and len(lens.layer_bins(33, 5)) == 7
    with pytest.raises(ValueError):
        lens.layer_bins(5, 0)


def test_default_bin_width():
    assert [lens.default_bin_width(L) for L in (32, 40, 6, 8, 2)] == [5, 6, 1, 1, 1]


def test_words_resolve_and_unknown_words_are_reported(organism, tiny):
    tok = organism.tokenizer
    with pytest.warns(UserWarning, match=r"spatial: before, left right; temporal: flashes"):
        kept, dropped = lens.resolve_words(tok, {"spatial": ["left", "Top", "before", "left right"],
                                                 "temporal": ["first", "flashes"]})
    assert kept == {"spatial": {"left": [tok.convert_tokens_to_ids("left")], "Top": [tok.convert_tokens_to_ids("top")]},
                    "temporal": {"first": [tok.convert_tokens_to_ids("first")]}}
    assert dropped == {"spatial": ["before", "left right"], "temporal": ["flashes"]}
    # case-insensitive: 'In' and 'in' are both 'in'
    k2, _ = lens.resolve_words(tok, {"x": ["in"]})
    assert sorted(k2["x"]["in"]) == sorted(tok.convert_tokens_to_ids(["In", "in"]))
    # the synthetic preset is whole on the organism; the tiny model lacks some words
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, d = lens.resolve_words(tok, lens.SYNTHETIC_WORDS)
    assert not any(d.values())
    with pytest.warns(UserWarning, match="bottom"):
        lens.resolve_words(tiny.tokenizer, lens.SYNTHETIC_WORDS)
    # SentencePiece / byte-level markers are stripped
    assert lens._norm_token("\u2581Left") == "left" and lens._norm_token("\u0120up") == "up"


def test_parse_words(tmp_path):
    assert lens.parse_words("spatial=left, right;temporal=first;") == {"spatial": ["left", "right"],
                                                                       "temporal": ["first"]}
    assert lens.parse_words("auto", "synthetic") == lens.SYNTHETIC_WORDS
    assert lens.parse_words(None, "tvbench") == lens.PAPER_WORDS
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"a": ["x", "y"]}))
    assert lens.parse_words(str(f)) == {"a": ["x", "y"]}
    for bad in ("nosuchfile.json", "bad name=x"):
        with pytest.raises(ValueError):
            lens.parse_words(bad)


def test_top_tokens():
    top1 = np.array([[[[1, 1], [2, -1]], [[3, 3], [3, 4]]]])  # [N=1, E=2, G=2, P=2]
    per_layer = lens.top_tokens(top1, 2, (1,))
    assert per_layer[0] == [(1, 2 / 3), (2, 1 / 3)] and per_layer[1] == [(3, 0.75), (4, 0.25)]
    per_frame = lens.top_tokens(top1, 1, (1, 2))
    assert per_frame.shape == (2, 2) and per_frame[0, 1] == [(2, 1.0)]


def test_cli_writes_file_and_figures(tmp_path, capsys, organism):
    out = tmp_path / "lens.h5"
    kept = {"spatial": ["left", "right", "top", "bottom"], "temporal": ["first", "then", "appears"]}
    spec = "spatial=left,right,top,bottom;temporal=first,then,appears,nosuchword"
    argv = ["--tasks", "direction,static_color", "--limit", "1", "--frames", "4", "--k", "3", "--no-progress",
            "--words", spec, "--out", str(out)]
    res = lens.main(argv)
    err = capsys.readouterr().err
    assert "nosuchword" in err
    r = CacheReader(out)
    L = organism.n_layers
    assert r.samples["complete"].all()
    for ro in lens.READOUTS:
        ids = r.acts(f"topk_ids@{ro}")
        assert ids.shape == (2, L + 1, 4, 4, 3) and r.acts(f"topk_probs@{ro}").shape == ids.shape
        np.testing.assert_array_equal(res["topk_ids"][ro], ids)
        # the counts are those of the stored ids, against the word ids looked up here
        again = lens.word_counts(ids[..., 0], {n: organism.tokenizer.convert_tokens_to_ids(ws)
                                               for n, ws in kept.items()}, 1)
        np.testing.assert_array_equal(res["word"][ro]["counts"], again["counts"])
    # the stored lens is the lens of a direct forward on each sample
    from tasks.datasets import load_dataset
    from tracing.inputs import build_sample_inputs

    samples = load_dataset("synthetic", n_frames=4, limit=1, tasks=["direction", "static_color"]).samples
    for i, s in enumerate(samples):
        direct = lens.sample_lens(organism, *build_sample_inputs(organism, s), 3, ["embed"])
        np.testing.assert_array_equal(direct["topk_ids"]["embed"], r.acts("topk_ids@embed")[i])
        assert direct["pred"] == res["pred"][i]
    w, wa = r.result("lens/words/temporal")
    assert list(w) == kept["temporal"] and wa["dropped"] == ["nosuchword"]
    assert res["words"]["spatial"] == {x: [organism.tokenizer.convert_tokens_to_ids(x)] for x in kept["spatial"]}
    assert res["dropped"] == {"spatial": [], "temporal": ["nosuchword"]}
    assert len(r.result("lens/vocab")[0]) == organism.model.model.language_model.embed_tokens.weight.shape[0]
    assert r.config["readout_list"] == list(lens.READOUTS) and r.config["k"] == 3
    figs = tmp_path / "lens_figures"
    for stem in ["lens_words"] + [f"lens_top_{ro}" for ro in lens.READOUTS]:
        for ext in (".png", ".pdf"):
            assert (figs / (stem + ext)).stat().st_size > 1000
    # another configuration into the same file is refused (before any forward pass) without --overwrite
    other = argv + ["--readout", "embed", "--pool", "frame_mean"]
    before = out.read_bytes()
    with pytest.raises(RunError, match=r"config\.pool.*--overwrite"):
        lens.main(other)
    assert out.read_bytes() == before


def test_cli_bad_flags_are_one_line_usage_errors(tmp_path, capsys):
    from analyses.run import cli_boundary

    out = tmp_path / "x.h5"
    for bad in (["--readout", "embed,nope"], ["--k", "0"], ["--bin-width", "0"]):
        assert cli_boundary(lens.main)(bad + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --") and "Traceback" not in err[0]
    assert not out.exists()
