"""Map the Flow (analyses/flow.py): a tiny-model run of the CLI (file, figures,
notebook), a flow value recomputed from a plain forward under knockout, and on
the organism: cutting every path from the video to the answer leaves chance,
cutting cross-frame attention leaves the static control unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import flow, flow_figures
from tasks.datasets import load_dataset
from tracing.inputs import build_sample_inputs
from tracing.edges import edges
from tracing.knockout import knockout, window
from tracing.registry import load_model
from tracing.store import CacheReader

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-llava-next"
TINY_TASKS, TINY_FRAMES, TINY_LIMIT = ["direction", "static_color"], 2, 2
TINY_EDGES = ["cross_frame", "video_last", "video->question,trailing,last"]
TINY_PATHWAYS = "CF=2-3,VQ=2-5,QL=4-6"
TINY_ARGS = ["--model", TINY, "--tasks", ",".join(TINY_TASKS), "--limit", str(TINY_LIMIT), "--frames", str(TINY_FRAMES),
             "--samples", "all", "--window", "2", "--edges", ",".join(TINY_EDGES), "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(flow_tiny_run):
    """(results, file) of TINY_ARGS with TINY_PATHWAYS and the lens (conftest.py: shared with test_figures)."""
    return flow_tiny_run


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY)


def test_parse_edges():
    assert flow.parse_edges("cross_frame,video->question,trailing,last,video_last") == \
        ["cross_frame", "video->question,trailing,last", "video_last"]
    assert flow.parse_edges("video_question, question_last") == ["video_question", "question_last"]


def test_tiny_run_writes_file_and_figures(tiny_run, tiny):
    res, out = tiny_run
    L, N = tiny.n_layers, len(TINY_TASKS) * TINY_LIMIT
    r = CacheReader(out)
    assert r.samples["complete"].all()
    K = r.acts("probs").shape[1]
    assert r.acts("knockout").shape == (N, len(TINY_EDGES), L, K) and r.acts("layerwise").shape == (N, 4, L)
    assert r.acts("knockout_top").shape == r.acts("knockout_top_prob").shape == (N, len(TINY_EDGES), L)
    for e in TINY_EDGES:
        for g in ("flow", "flow_answer", "flow_correct"):
            assert res[g][e].shape == (N, L)
        assert res["flow_acc"][e].shape == (L,)
    assert r.config["k"] == 2 and r.config["samples"] == "all" and r.config["edge_list"] == TINY_EDGES
    # the paper's choices by default, recorded in the configuration
    assert r.config["answer_from"] == "vocabulary" and r.config["accuracy_over"] == "all"
    assert res["kept"].all()  # --samples all
    np.testing.assert_allclose(np.nansum(res["baseline"], 1) <= 1 + 1e-5, True)
    # video -/-> last never changes anything before the last position: a window
    # sweep of it gives finite values, and cross-frame with 2 frames too
    assert np.isfinite(res["flow"]["cross_frame"]).all()
    figs = out.with_name(out.stem + "_figures")
    for stem in ("flow", "flow_answer", "flow_acc", "layerwise", "pathways"):
        for ext in (".png", ".pdf"):
            assert (figs / (stem + ext)).stat().st_size > 1000


def _probs_plain(lm, inputs, layout, edge_set=None, layers=(), vocabulary=False):
    with torch.no_grad():
        if edge_set is None:
            logits = lm.model(**inputs).logits[0, layout.last]
        else:
            with knockout(lm, layout, edge_set, layers):
                logits = lm.model(**inputs).logits[0, layout.last]
    p = torch.softmax(logits.float(), -1)
    return p.numpy() if vocabulary else p[layout.option_ids].numpy()


def test_flow_value_equals_a_plain_forward_under_knockout(tiny_run, tiny):
    """Independent recomputation: a full forward of the model with the
    knockout() context manager (not the KnockoutRunner), for one sample.
    The answer is the paper's (the default): the argmax over the whole
    vocabulary, right only if it is the true option's letter; flow_answer
    follows that token's probability (the paper's relative_diff)."""
    res, out = tiny_run
    samples = load_dataset("synthetic", n_frames=TINY_FRAMES, limit=TINY_LIMIT, tasks=TINY_TASKS, seed=0).samples
    L = tiny.n_layers
    for i, e, c in ((0, "video->question,trailing,last", 1), (1, "cross_frame", 0), (2, "video_last", L - 1)):
        s = samples[i]
        inputs, layout = build_sample_inputs(tiny, s)
        v0 = _probs_plain(tiny, inputs, layout, vocabulary=True)
        p0 = v0[layout.option_ids]
        np.testing.assert_allclose(res["baseline"][i, : len(p0)], p0, rtol=1e-4, atol=1e-6)
        v = _probs_plain(tiny, inputs, layout, edges(e, layout), window(c, 2, L), vocabulary=True)
        p = v[layout.option_ids]
        want = (p[s.answer] - p0[s.answer]) / p0[s.answer] * 100
        assert res["flow"][e][i, c] == pytest.approx(want, rel=1e-3, abs=1e-3)
        top = int(np.argmax(v0))
        assert res["flow_answer"][e][i, c] == pytest.approx((v[top] - v0[top]) / v0[top] * 100, rel=1e-3, abs=1e-3)
        assert res["flow_correct"][e][i, c] == float(np.argmax(v) == layout.option_ids[s.answer])
        letter = layout.option_ids.index(top) if top in layout.option_ids else -1
        assert res["pred"][i] == letter


def _reduce_case():
    """Four samples, one edge type, two layers, three options, by hand: the
    labels, the clean letter/vocabulary answers, the answers under knockout."""
    label = np.array([0, 1, 2, 0])
    probs = np.array([[.5, .3, .2], [.2, .6, .2], [.5, .3, .2], [.4, .4, .2]])
    letters_pred = probs.argmax(1)  # [0, 1, 0, 0]: samples 0, 1, 3 right by the letters
    top_option = np.array([0, -1, 0, 0])  # sample 1's vocabulary argmax is no letter
    ko = np.array([[[.1, .8, .1], [.6, .2, .2]], [[.1, .1, .8], [.2, .7, .1]],
                   [[.3, .3, .4], [.3, .3, .4]], [[.2, .3, .5], [.7, .2, .1]]])  # [N, L, K]
    ko_top = np.array([[1, 0], [-1, 1], [2, 2], [2, -1]])  # the vocabulary argmax's option under knockout
    ko_top_p = np.array([[.05, .5], [.01, .02], [.1, .1], [.1, .3]])
    top_p = np.array([.4, .05, .3, .3])
    return label, probs, letters_pred, top_option, ko, ko_top, ko_top_p, top_p


@pytest.mark.parametrize("answer_from", ["vocabulary", "letters"])
@pytest.mark.parametrize("accuracy_over", ["all", "kept"])
def test_reduce_answer_and_accuracy_as_the_paper(answer_from, accuracy_over):
    """reduce against the paper's bookkeeping written out: keep a sample if
    its answer is right (--samples correct); accuracy after knockout = right
    answers of the kept samples / all samples ('all') or / kept ('kept')."""
    label, probs, letters_pred, top_option, ko, ko_top, ko_top_p, top_p = _reduce_case()
    N, L = len(label), 2
    pred = top_option if answer_from == "vocabulary" else letters_pred
    kept = pred == label  # vocabulary: samples 0, 3; letters: samples 0, 1, 3
    arrays = {"probs": probs, "pred": letters_pred[:, None], "kept": kept[:, None].astype(np.int8),
              "knockout": np.where(kept[:, None, None, None], ko[:, None], np.nan),
              "top": np.stack([np.full(N, 7), top_option], 1), "top_prob": top_p[:, None],
              "knockout_top": np.where(kept[:, None, None], ko_top[:, None], -1),
              "knockout_top_prob": np.where(kept[:, None, None], ko_top_p[:, None], np.nan)}
    res = flow.reduce(arrays, label, ["e"], 2, answer_from, accuracy_over)
    assert res["accuracy"] == (0.5 if answer_from == "vocabulary" else 0.75)
    assert (res["pred"] == pred).all()
    for l in range(L):
        right = 0
        for i in range(N):
            if not kept[i]:
                continue
            after = ko_top[i, l] if answer_from == "vocabulary" else int(np.argmax(ko[i, l]))
            right += int(after == label[i])
            assert res["flow_correct"]["e"][i, l] == float(after == label[i])
            base = top_p[i] if answer_from == "vocabulary" else probs[i, pred[i]]
            now = ko_top_p[i, l] if answer_from == "vocabulary" else ko[i, l, pred[i]]
            assert res["flow_answer"]["e"][i, l] == pytest.approx((now - base) / base * 100)
        want = right / (N if accuracy_over == "all" else kept.sum())
        assert res["flow_acc"]["e"][l] == pytest.approx(want)
    assert np.isnan(res["flow_correct"]["e"][~kept]).all()
    assert res["answer_from"] == answer_from and res["accuracy_over"] == accuracy_over
    # the figures say which was used
    res.update(task=np.array(["t"] * N), tasks=["t"], model="m", config={"samples": "correct"})
    fig = flow_figures.plot_accuracy(res)
    texts = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert ("argmax over the vocabulary" if answer_from == "vocabulary" else "argmax over the option letters") in texts
    assert ("accuracy over all samples" if accuracy_over == "all" else "accuracy over the kept samples") in texts
    assert fig.axes[0].get_title() == f"t (n={N if accuracy_over == 'all' else kept.sum()})"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_pathways_through_the_cli_against_hand_masks(tiny_run, tiny):
    """The stored pathway probabilities of a sample against a plain eager
    forward with per-layer masks built by hand from the spans; the stored
    counts against the hand masks; the random control cuts as many edges."""
    from test_pathways import additive, hand_pathway_allowed, reference_probs

    res, out = tiny_run
    pw = res["pathways"]
    assert pw["attrs"]["pathways"] == TINY_PATHWAYS and pw["attrs"]["seeds"] == [0, 1]
    assert pw["attrs"]["request"] == {"find": False, "given": TINY_PATHWAYS, "random_seeds": 2, "seed": 0,
                                      "random_control": "per-layer"}
    samples = load_dataset("synthetic", n_frames=TINY_FRAMES, limit=TINY_LIMIT, tasks=TINY_TASKS, seed=0).samples
    eager = load_model(TINY, attn="eager")
    L = eager.n_layers
    # The paper's random control (the default): in every layer int(ratio * N(N+1)/2)
    # edges, ratio = the share the pathways cut over all samples.
    Ts = [build_sample_inputs(eager, s)[1].n_tokens for s in samples]
    ratio = pw["blocked"].sum() / sum(L * T * (T + 1) / 2 for T in Ts)
    assert pw["attrs"]["random_control"] == "per-layer" and pw["attrs"]["random_ratio"] == pytest.approx(ratio)
    for i, T in enumerate(Ts):
        assert (pw["random_blocked"][:, i] == L * int(pw["attrs"]["random_ratio"] * T * (T + 1) / 2)).all()
    ranges = ((2, 3), (2, 5), (4, 6))
    for i in (0, 3):
        inputs, layout = build_sample_inputs(eager, samples[i])
        allowed = hand_pathway_allowed(layout, L, *ranges)
        p = reference_probs(eager, inputs, [additive(a) for a in allowed], layout.last)[layout.option_ids].numpy()
        np.testing.assert_allclose(pw["probs"][i, : len(p)], p, atol=1e-5)
        assert pw["correct"][i] == (np.argmax(p) == samples[i].answer)
        cut = sum(int((~a).tril().sum()) for a in allowed)
        T = layout.n_tokens
        assert pw["blocked"][i] == cut
        assert pw["edge_share"][i] == pytest.approx(1 - cut / (L * T * (T + 1) / 2))
    assert pw["summary"][1] == pytest.approx(pw["correct"].mean())
    assert pw["summary"][2] == pytest.approx(pw["random_correct"].mean())
    assert "effective pathways " + TINY_PATHWAYS in flow_figures.pathways_table(res)


def test_per_layer_random_control_counts_as_the_paper():
    """The paper's random control: in every layer int(ratio * N(N+1)/2)
    causal entries cut, all among first video token <= key <= query < N,
    drawn afresh per layer, the same for the same seed."""
    from test_knockout import small_layout

    from analyses.flow_figures import random_label
    from analyses.flow_pathways import per_layer_random_knockout
    from tracing.edges import union_blocked

    lay, L = small_layout(), 4
    N, v0 = lay.n_tokens, lay.video.start
    for ratio in (0.3, 0.58, 0.7):
        want = int(ratio * N * (N + 1) / 2)
        cond = per_layer_random_knockout(lay, ratio, L, seed=(0, 1, 2))
        cuts = [union_blocked(cond.at(l), 0, N, N) & torch.ones(N, N, dtype=torch.bool).tril() for l in range(L)]
        assert [int(c.sum()) for c in cuts] == [want] * L
        for c in cuts:
            q, k = torch.nonzero(c, as_tuple=True)
            assert (k >= v0).all() and (k <= q).all()
        assert any(not torch.equal(cuts[0], c) for c in cuts[1:])  # a fresh draw per layer
        again = per_layer_random_knockout(lay, ratio, L, seed=(0, 1, 2))
        assert all(torch.equal(union_blocked(again.at(l), 0, N, N), union_blocked(cond.at(l), 0, N, N))
                   for l in range(L))
    with pytest.raises(ValueError, match="available after the first video token"):
        per_layer_random_knockout(lay, 0.9, L, seed=0)  # 94 > 78 entries at or after the video
    assert random_label({"pathways": {"attrs": {"random_control": "per-layer", "random_ratio": 0.58}}}) == \
        "random edges cut (per layer, ratio 0.580)"


def test_figures_label_the_layers_each_window_cuts():
    """Tick labels = the layers (1-indexed) of window(c, k, L), written out
    here as the authors' code has it: range(max(0, c - k//2), min(L, c - (-k//2)))."""
    import matplotlib.pyplot as plt

    for L, k in ((6, 2), (8, 3), (32, 9), (32, 4)):
        for c in range(L):
            a, b = max(0, c - k // 2), min(L, c - (-k // 2)) - 1
            assert flow_figures.window_label(c, k, L) == (f"{a + 1}" if a == b else f"{a + 1}-{b + 1}")
    N, L = 3, 6
    z = np.zeros((N, L))
    res = {"tasks": ["t"], "task": np.array(["t"] * N), "kept": np.ones(N, bool), "edges": ["e"], "k": 2,
           "flow": {"e": z}, "flow_answer": {"e": z}, "flow_correct": {"e": z}, "pred": np.zeros(N, int),
           "label": np.zeros(N, int), "answer_from": "vocabulary", "accuracy_over": "all", "model": "m"}
    for fig in (flow_figures.plot_flow(res), flow_figures.plot_accuracy(res)):
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "1-2", "2-3", "3-4", "4-5", "5-6"]
        assert ax.get_xlabel() == "layers cut (window of 2)"
        plt.close(fig)
    assert "0.0 @1 (1)" in flow_figures.table({**res, "accuracy": 1.0})


from _notebooks import run_notebook  # noqa: E402


def test_notebook_redraws_from_the_file(tiny_run, tmp_path, monkeypatch):
    res, out = tiny_run
    outputs, images, text = run_notebook("flow.ipynb", {"CHRONOLENS_FLOW_H5": out}, tmp_path, monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert images >= 2
    assert flow_figures.table(res) in text
    assert flow_figures.pathways_table(res) in text
    from analyses import lens, lens_figures

    assert lens_figures.table(lens.load_results(out)) in text


# ---------------------------------------------------------------- output safety
def _boom(*a, **k):
    raise AssertionError("recomputed what the file already holds")


def test_cli_refuses_resumes_and_overwrites(tiny_run, tmp_path, monkeypatch, capsys):
    import shutil

    from analyses import pathways as P
    from analyses.run import RunError, beside

    _, src = tiny_run
    out = tmp_path / "f.h5"
    shutil.copyfile(src, out)
    base = TINY_ARGS + ["--lens", "--out", str(out)]
    before = out.read_bytes()

    # Another configuration: refused before any compute, naming the file and the key.
    with pytest.raises(RunError) as e:
        flow.main(base + ["--window", "3"])
    msg = str(e.value)
    assert str(out) in msg and "config.k: 2 (in file) vs 3 (this run)" in msg and "--overwrite" in msg
    assert out.read_bytes() == before
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(RunError, match="did not write"):
        flow.main(TINY_ARGS + ["--out", str(junk)])
    assert junk.read_bytes() == b"not hdf5"
    # Other lens words are another configuration too (they used to be kept silently).
    with pytest.raises(RunError, match="lens"):
        flow.main(base + ["--lens-words", "spatial=left,right"])

    # Same configuration: the flow maps are complete and not recomputed;
    # pathways of another request are refused, then replaced with --overwrite.
    monkeypatch.setattr(flow, "sample_arrays", _boom)
    other = "CF=1-2,VQ=1-3,QL=2-4"
    uniform = ["--random-control", "uniform"]  # chronolens's earlier control, kept as an option
    with pytest.raises(RunError) as e:
        flow.main(base + ["--pathways", other, "--random-seeds", "2"] + uniform)
    assert "pathways.given: 'CF=2-3,VQ=2-5,QL=4-6' (in file) vs 'CF=1-2,VQ=1-3,QL=2-4' (this run)" in str(e.value)
    assert "pathways.random_control: 'per-layer' (in file) vs 'uniform' (this run)" in str(e.value)
    assert out.read_bytes() == before
    capsys.readouterr()
    res = flow.main(base + ["--pathways", other, "--random-seeds", "2", "--overwrite"] + uniform)
    assert "resuming, 4 of 4 units already complete" in capsys.readouterr().err
    assert res["pathways"]["attrs"]["pathways"] == other
    pw = res["pathways"]
    assert pw["attrs"]["random_control"] == "uniform" and pw["attrs"]["random_ratio"] is None
    assert (pw["random_blocked"] == pw["blocked"][None]).all()  # as many edges as the pathways cut
    assert "uniform over layers" in flow_figures.pathways_table(res)
    old = flow.load_results(src)
    for e_ in TINY_EDGES:
        np.testing.assert_array_equal(res["flow"][e_], old["flow"][e_])
    # The same request again: nothing to do.
    monkeypatch.setattr(P, "SampleSet", _boom)
    flow.main(base + ["--pathways", other, "--random-seeds", "2"] + uniform)
    assert "pathways results of this request complete, not recomputed" in capsys.readouterr().err
    monkeypatch.undo()

    # --overwrite with another configuration: written beside, swapped in at the
    # end; a run that dies first leaves the old file as it was, and a rerun
    # resumes beside it.
    cheap = TINY_ARGS[:-5] + ["--edges", "video_last", "--window", "3", "--no-layerwise", "--no-progress",
                              "--answer-from", "letters", "--accuracy-over", "kept", "--out", str(out)]
    before = out.read_bytes()
    real, calls = flow.sample_arrays, []

    def dies(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(flow, "sample_arrays", dies)
    with pytest.raises(KeyboardInterrupt):
        flow.main(cheap + ["--overwrite"])
    assert out.read_bytes() == before
    assert CacheReader(beside(out)).samples["complete"].sum() == 2
    monkeypatch.undo()
    res = flow.main(cheap + ["--overwrite"])
    r = CacheReader(out)
    assert r.config["k"] == 3 and r.config["edge_list"] == ["video_last"] and "pathways" not in res
    assert r.config["answer_from"] == "letters" and r.config["accuracy_over"] == "kept"
    assert res["answer_from"] == "letters" and res["accuracy_over"] == "kept"
    assert "argmax over the option letters" in flow_figures.table(res)
    assert not any(n.startswith("pathways/") for n in r.results()) and not beside(out).exists()


# ---------------------------------------------------------------- a TOMATO folder
def build_tomato(root: Path) -> Path:
    """A minimal copy in TOMATO's published format (as tests/test_tomato.py):
    data/<type>.json keyed by id, videos/<demonstration_type>/<key>.mp4 (PyAV)."""
    from tasks.video import write_video

    def entry(key, demo, answer):
        return {"question": "Which way does the object move?", "options": ["left", "right", "up"], "answer": answer,
                "key": key, "video_source_url": "", "motion_type": "direction", "demonstration_type": demo,
                "variation": {"counterfactual": 0, "composite": 0, "zoom": 0, "first_person": 0}, "note": ""}

    (root / "data").mkdir(parents=True)
    (root / "data" / "direction.json").write_text(json.dumps({"0": entry("k0", "human", 1),
                                                              "1": entry("k1", "object", 2)}))
    for key, demo, n in (("k0", "human", 6), ("k1", "object", 9)):
        frames = np.full((n, 16, 16, 3), 30, np.uint8)
        for t in range(n):
            frames[t, :, t % 12 : t % 12 + 4] = 220  # a bar moving right
        write_video(root / f"videos/{demo}/{key}.mp4", frames)
    return root


def test_tomato_folder_end_to_end(tmp_path, tiny):
    from tasks.video import load_frames
    from tracing.inputs import build_inputs

    root = build_tomato(tmp_path / "TOMATO")
    out = tmp_path / "flow-tomato.h5"
    res = flow.main(["--model", TINY, "--dataset", "tomato", "--data-dir", str(root), "--frames", "2", "--limit", "2",
                     "--samples", "all", "--window", "2", "--edges", "cross_frame", "--no-layerwise",
                     "--pathways", "CF=1-2,VQ=1-4,QL=3-8", "--random-seeds", "1", "--no-progress", "--out", str(out)])
    r = CacheReader(out)
    assert r.samples["id"].tolist() == ["direction-0", "direction-1"] and r.config["dataset"] == "tomato"
    assert res["tasks"] == ["direction"] and res["flow"]["cross_frame"].shape == (2, tiny.n_layers)
    assert np.isfinite(res["flow"]["cross_frame"]).all() and res["pathways"]["probs"].shape == (2, 3)
    # The baseline against frames decoded by the loader's own reader and a plain forward.
    for i, (key, demo, ans) in enumerate((("k0", "human", 1), ("k1", "object", 2))):
        frames = load_frames(root / f"videos/{demo}/{key}.mp4", 2)
        inputs, layout = build_inputs(tiny, frames, "Which way does the object move?", ["left", "right", "up"], ans)
        np.testing.assert_allclose(res["baseline"][i, :3], _probs_plain(tiny, inputs, layout), rtol=1e-4, atol=1e-6)


def test_tvbench_folder_end_to_end(tmp_path, tiny, capsys):
    from test_benchmarks import build_tvbench

    from tasks.tvbench import load_tvbench

    root = build_tvbench(tmp_path / "TVBench")
    out = tmp_path / "flow-tvbench.h5"
    res = flow.main(["--model", TINY, "--dataset", "tvbench", "--data-dir", str(root), "--frames", "2",
                     "--samples", "all", "--window", "2", "--edges", "video_last", "--no-layerwise", "--no-progress",
                     "--out", str(out)])
    assert "missing.mp4" in capsys.readouterr().err  # the bad item is reported by name and skipped
    good = load_tvbench(root, n_frames=2).samples
    assert CacheReader(out).samples["id"].tolist() == [s.id for s in good]
    for i, s in enumerate(good):  # the baseline against a plain forward on the loader's own frames
        inputs, layout = build_sample_inputs(tiny, s)
        np.testing.assert_allclose(res["baseline"][i, : len(s.options)], _probs_plain(tiny, inputs, layout),
                                   rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- the organism

@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def test_organism_blocking_every_video_path_to_the_answer_gives_chance(organism):
    """video -/-> question, trailing and last (the last is part of the trailing
    text) in all layers: nothing of the video can reach the answer."""
    tasks = ["direction", "order", "count", "brightness", "static_color"]
    samples = load_dataset("synthetic", n_frames=8, limit=8, tasks=tasks, seed=11).samples  # 40 samples
    ko, clean = flow.full_block_accuracy(organism, samples, "video->question,trailing,last")
    chance = float(np.mean([1 / len(s.options) for s in samples]))
    print(f"organism: clean {clean.mean():.3f}, all video paths cut {ko.mean():.3f}, chance {chance:.3f}")
    assert clean.mean() >= chance + 0.3  # the model does use the video
    # binomial sd at p = chance, n = 40 is ~0.07: 0.2 is ~3 sd
    assert ko.mean() <= chance + 0.2


def test_organism_cross_frame_knockout_leaves_static_control(organism):
    samples = load_dataset("synthetic", n_frames=8, limit=12, tasks=["static_color"], seed=5).samples
    ko, clean = flow.full_block_accuracy(organism, samples, "cross_frame")
    print(f"organism static_color: clean {clean.mean():.3f}, cross-frame cut {ko.mean():.3f}")
    assert clean.mean() >= 0.9
    assert abs(ko.mean() - clean.mean()) <= 1 / 12 + 1e-9  # at most one answer of 12 changes


def test_lens_step_stores_the_lens_of_the_same_samples(tiny_run, tiny):
    from analyses import lens

    _, out = tiny_run
    back = lens.load_results(out)
    samples = load_dataset("synthetic", n_frames=TINY_FRAMES, limit=TINY_LIMIT, tasks=TINY_TASKS, seed=0).samples
    direct = lens.video_lens(tiny, samples, k=5, readouts=lens.READOUTS, progress=False)
    for r in direct["readouts"]:
        ids_b, ids_d = back["topk_ids"][r], direct["topk_ids"][r]
        np.testing.assert_allclose(back["topk_probs"][r], direct["topk_probs"][r], rtol=0, atol=1e-5)
        # two batchings of the same forward differ in float rounding: a random-weight
        # model's near-tied logits may swap places, never other tokens
        swapped = ids_b != ids_d
        assert swapped.mean() < 1e-3
        probs = back["topk_probs"][r]
        for *pos, j in zip(*np.nonzero(swapped)):
            p = probs[tuple(pos)]
            near = [abs(p[j] - p[i]) for i in (j - 1, j + 1) if 0 <= i < len(p)]
            assert j == len(p) - 1 or min(near) < 1e-5, (pos, j, p)  # tied with a neighbour
    np.testing.assert_array_equal(back["pred"], direct["pred"])
    figs = out.with_name(out.stem + "_figures")
    assert (figs / "lens_words.png").exists() and (figs / "lens_words.pdf").exists()
