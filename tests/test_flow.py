"""Map the Flow (analyses/flow.py): a tiny-model run of the CLI (file, figures,
notebook), a flow value recomputed from a plain forward under knockout, and on
the organism: cutting every path from the video to the answer leaves chance,
cutting cross-frame attention leaves the static control unchanged."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import flow
from tasks.datasets import load_dataset
from tracing.inputs import build_sample_inputs
from tracing.knockout import edges, knockout, window
from tracing.registry import ORGANISM_DIR, load_model
from tracing.store import CacheReader

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-llava-next"
TINY_TASKS, TINY_FRAMES, TINY_LIMIT = ["direction", "static_color"], 2, 2
TINY_EDGES = ["cross_frame", "video_last", "video->question,trailing,last"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "flow-tiny.h5"
    res = flow.main(["--model", TINY, "--tasks", ",".join(TINY_TASKS), "--limit", str(TINY_LIMIT),
                     "--frames", str(TINY_FRAMES), "--samples", "all", "--window", "2",
                     "--edges", ",".join(TINY_EDGES), "--no-progress", "--out", str(out)])
    return res, out


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
    names = r.results()
    for e in TINY_EDGES:
        for g in ("flow", "flow_answer", "flow_correct"):
            arr, attrs = r.result(f"{g}/{flow.key(e)}")
            assert arr.shape == (N, L) and attrs["edge"] == e
        assert r.result(f"flow_acc/{flow.key(e)}")[0].shape == (L,)
    assert {"baseline", "accuracy", "kept", "layerwise/true", "layerwise/false_norm"} <= set(names)
    assert r.config["window"] == 2 and r.config["samples"] == "all" and r.config["edge_list"] == TINY_EDGES
    assert res["kept"].all()  # --samples all
    base = r.result("baseline")[0]
    np.testing.assert_allclose(np.nansum(base, 1) <= 1 + 1e-5, True)
    # accuracy after knockout = mean of the per-sample correctness
    for e in TINY_EDGES:
        np.testing.assert_allclose(res["flow_acc"][e], res["flow_correct"][e].mean(0))
    # the answer's flow equals the ground truth's where the model answers correctly
    ok = res["pred"] == res["label"]
    for e in TINY_EDGES:
        np.testing.assert_allclose(res["flow"][e][ok], res["flow_answer"][e][ok])
    # video -/-> last never changes anything before the last position: a window
    # sweep of it gives finite values, and cross-frame with 2 frames too
    assert np.isfinite(res["flow"]["cross_frame"]).all()
    figs = out.with_name(out.stem + "_figures")
    for stem in ("flow", "flow_answer", "layerwise"):
        for ext in (".png", ".pdf"):
            assert (figs / (stem + ext)).stat().st_size > 1000


def _probs_plain(lm, inputs, layout, edge_set=None, layers=()):
    with torch.no_grad():
        if edge_set is None:
            logits = lm.model(**inputs).logits[0, layout.last]
        else:
            with knockout(lm, layout, edge_set, layers):
                logits = lm.model(**inputs).logits[0, layout.last]
    return torch.softmax(logits.float(), -1)[layout.option_ids].numpy()


def test_flow_value_equals_a_plain_forward_under_knockout(tiny_run, tiny):
    """Independent recomputation: a full forward of the model with the
    knockout() context manager (not the KnockoutRunner), for one sample."""
    res, out = tiny_run
    samples = load_dataset("synthetic", n_frames=TINY_FRAMES, limit=TINY_LIMIT, tasks=TINY_TASKS, seed=0).samples
    L = tiny.n_layers
    for i, e, c in ((0, "video->question,trailing,last", 1), (1, "cross_frame", 0), (2, "video_last", L - 1)):
        s = samples[i]
        inputs, layout = build_sample_inputs(tiny, s)
        p0 = _probs_plain(tiny, inputs, layout)
        np.testing.assert_allclose(res["baseline"][i, : len(p0)], p0, rtol=1e-4, atol=1e-6)
        p = _probs_plain(tiny, inputs, layout, edges(e, layout), window(c, 2, L))
        want = (p[s.answer] - p0[s.answer]) / p0[s.answer] * 100
        assert res["flow"][e][i, c] == pytest.approx(want, rel=1e-3, abs=1e-3)
        a = int(np.argmax(p0))
        assert res["flow_answer"][e][i, c] == pytest.approx((p[a] - p0[a]) / p0[a] * 100, rel=1e-3, abs=1e-3)
        assert res["flow_correct"][e][i, c] == float(np.argmax(p) == s.answer)


def test_cli_help_explains_every_flag():
    ap = flow.build_parser()
    text = ap.format_help()
    for flag in ("--window", "--edges", "--samples", "--figures", "--limit", "--out", "--no-layerwise"):
        assert flag in text
    for act in ap._actions:
        if act.option_strings and act.help != "==SUPPRESS==":
            assert act.help, act.option_strings


from _notebooks import jupyter_kernel as _kernel  # noqa: E402


@pytest.mark.skipif(not (ROOT / "notebooks" / "flow.ipynb").exists(), reason="notebooks/flow.ipynb not written")
def test_notebook_redraws_from_the_file(tiny_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    res, out = tiny_run
    monkeypatch.setenv("CHRONOLENS_FLOW_H5", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(ROOT / "notebooks" / "flow.ipynb", as_version=4)
    NotebookClient(nb, kernel_name=_kernel(tmp_path, monkeypatch), timeout=300,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2
    text = "".join(o.get("text", "") for o in outputs)
    assert flow.table(res) in text


# ---------------------------------------------------------------- the organism

organism_ready = pytest.mark.skipif(
    not (ORGANISM_DIR / "config.json").exists(),
    reason=f"no organism checkpoint at {ORGANISM_DIR} yet (python -m organism.train writes it)")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@organism_ready
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


@organism_ready
def test_organism_cross_frame_knockout_leaves_static_control(organism):
    samples = load_dataset("synthetic", n_frames=8, limit=12, tasks=["static_color"], seed=5).samples
    ko, clean = flow.full_block_accuracy(organism, samples, "cross_frame")
    print(f"organism static_color: clean {clean.mean():.3f}, cross-frame cut {ko.mean():.3f}")
    assert clean.mean() >= 0.9
    assert abs(ko.mean() - clean.mean()) <= 1 / 12 + 1e-9  # at most one answer of 12 changes
