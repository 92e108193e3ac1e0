"""analyses/tomato.py and tomato_metrics.py: the metrics against values worked
by hand (the paper's own GPT-4o row included), the frame conditions
(tasks/frames.py) against hand-listed indices and decoded frames that name
their own index, TOMATO's answer parser (tasks/answers.py), a TOMATO folder
built here run end to end (a missing and a corrupt video reported by name), a
synthetic run through the CLI, the file and the notebook, a CLI run killed
with SIGKILL and resumed (to the arrays of an uninterrupted run), and the
organism's table. The engine's own promises (resume after two kills,
--overwrite, refusal, Ray) are tests/test_engine.py's battery, tomato included.

Independent references: scores recomputed with tracing.scoring.score on frames
decoded by tasks.video.load_frames (the loader's path, not the analysis's own
decoder), residuals recomputed with tracing.capture, metrics recomputed from
the file's per-question arrays with plain numpy.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analyses import tomato as T
from analyses import tomato_metrics as M
from analyses.run import RunError, cli_boundary
from tasks import frames as F
from tasks.answers import parse_answer
from tasks.synthetic import RGB, make_dataset, render
from tasks.types import Sample
from tasks.video import load_frames, write_video
from tracing.capture import capture
from tracing.inputs import build_inputs
from tracing.registry import load_model
from tracing.scoring import score
from tracing.store import CacheReader

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-qwen2-vl"  # 4 tokens per temporal patch: the fastest real architecture
_MODELS: dict = {}


def tiny():
    if TINY not in _MODELS:
        _MODELS[TINY] = load_model(TINY, attn="sdpa")
    return _MODELS[TINY]


# ================================================================ metrics by hand
def test_paper_rows_and_hand_worked_metrics():
    # TOMATO, GPT-4o: 21.2 with one frame, 37.7 with 16 -> kappa 77.8 (the paper's cell).
    assert round(M.kappa(37.7, 21.2), 1) == 77.8
    assert M.kappa(37.7, 21.2) == pytest.approx((37.7 - 21.2) / 21.2 * 100)
    assert M.tau(40.0, 32.0) == pytest.approx(25.0)  # (40 - 32) / 32
    assert M.rho(30.0, 24.0) == pytest.approx(25.0)  # (30 - 24) / 24
    assert M.rho(18.0, 24.0) == pytest.approx(-25.0)
    # The paper's TOMATO average kappa 81.0 is the mean of the two models' values.
    assert M.average_over_models([77.8, 84.2]) == pytest.approx(81.0)
    # Mean of per-model values, not the metric of mean accuracies:
    # model A 20 -> 40 (kappa 100), model B 30 -> 36 (kappa 20): average 60, not (38-25)/25 = 52.
    per_model = [M.kappa(40, 20), M.kappa(36, 30)]
    assert per_model == [pytest.approx(100.0), pytest.approx(20.0)]
    assert M.average_over_models(per_model) == pytest.approx(60.0)
    assert M.kappa(38, 25) == pytest.approx(52.0)
    # From per-question correctness: 6/8 with m frames, 2/8 with one -> (75 - 25) / 25 = 200.
    multi = np.array([1, 1, 1, 0, 1, 0, 1, 1.0])
    first = np.array([1, 0, 0, 0, 1, 0, 0, 0.0])
    assert M.accuracy(multi) == 75.0 and M.accuracy(first) == 25.0
    assert M.gain(multi, first) == pytest.approx(200.0)
    # Only questions both conditions ran count (rho: where a human frame exists).
    human = np.array([1, 1, np.nan, np.nan, 1, 0, 0, 0])
    n, d = M.paired(human, first)
    assert n.tolist() == [1, 1, 1, 0, 0, 0] and d.tolist() == [1, 0, 1, 0, 0, 0]
    assert M.gain(human, first) == pytest.approx((50 - 100 / 3) / (100 / 3) * 100)  # 50.0


def test_zero_denominator_is_undefined_with_a_warning():
    with pytest.warns(M.UndefinedMetricWarning, match=r"kappa.*\(m1, task=count\).*0"):
        v = M.kappa(50.0, 0.0, "m1, task=count")
    assert np.isnan(v) and not np.isinf(v)
    for f in (M.tau, M.rho):
        with pytest.warns(M.UndefinedMetricWarning):
            assert np.isnan(f(10.0, 0.0))
    with pytest.warns(M.UndefinedMetricWarning, match="no questions"):
        assert np.isnan(M.kappa(50.0, float("nan")))
    with pytest.warns(M.UndefinedMetricWarning):
        assert np.isnan(M.gain(np.ones(4), np.zeros(4)))
    with pytest.warns(M.UndefinedMetricWarning, match="1 of 2 models"):
        assert np.isnan(M.average_over_models([10.0, float("nan")]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the interval of an undefined metric is undefined, silently
        assert all(np.isnan(M.bootstrap_gain([(np.ones(5), np.zeros(5))], 200)))
        assert M.kappa(0.0, 10.0) == -100.0  # a zero numerator is fine


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    num = (rng.random(60) < 0.7).astype(float)
    den = (rng.random(60) < 0.35).astype(float)
    point = M.gain(num, den)
    lo, hi = M.bootstrap_gain([(num, den)], 2000, seed=1)
    assert lo < point < hi
    assert (lo, hi) == M.bootstrap_gain([(num, den)], 2000, seed=1)  # seeded
    lo4, hi4 = M.bootstrap_gain([(np.tile(num, 4), np.tile(den, 4))], 2000, seed=1)
    assert hi4 - lo4 < (hi - lo) * 0.75  # 4x the questions: about half the width
    # A statistic that every resample reproduces has a zero-width interval.
    assert M.bootstrap_gain([(np.ones(7), np.ones(7))], 300) == (0.0, 0.0)
    # Two models: the interval is of the mean of the two gains.
    two = M.bootstrap_gain([(num, den), (np.tile(num, 4), np.tile(den, 4))], 2000, seed=1)
    assert two[0] < (point + M.gain(np.tile(num, 4), np.tile(den, 4))) / 2 < two[1]
    assert M.bootstrap_mean(np.array([1.0, 1.0, np.nan]), 100) == (100.0, 100.0)


def test_cosine_distance_and_linear_cka_by_hand():
    assert M.cosine_distance(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert M.cosine_distance(np.array([1.0, 0]), np.array([1.0, 1.0])) == pytest.approx(1 - 1 / np.sqrt(2))
    assert M.cosine_distance(np.array([[2.0, 0], [0, 3]]), np.array([[-1.0, 0], [0, 5]])).tolist() == [2.0, 0.0]
    # x = (1, 2, 3), y = (1, 3, 2): centred (-1, 0, 1), (-1, 1, 0); <x,y>^2 / (|x|^2 |y|^2) = 1 / 4.
    assert M.linear_cka(np.array([[1.0], [2], [3]]), np.array([[1.0], [3], [2]])) == pytest.approx(0.25)
    x = np.random.default_rng(0).normal(size=(12, 5))
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    assert M.linear_cka(x, 3 * x @ q + 7) == pytest.approx(1.0)  # rotation, scale, shift
    wide = np.random.default_rng(2).normal(size=(6, 40))  # n < d: the Gram form
    assert M.linear_cka(wide, wide @ np.linalg.qr(np.random.default_rng(3).normal(size=(40, 40)))[0]) == \
        pytest.approx(1.0)
    assert np.isnan(M.linear_cka(np.ones((4, 2)), x[:4]))


# ================================================================ answer parser
@pytest.mark.parametrize("text,expected", [
    ("B", 1), (" c \n", 2), ("Answer is: (C)", 2), ("Answer is (A)", 0), ("Answer is:B", 1), ("answer is c", 2),
    ("B: Right.", 1), ("b: right.", 1), ("B)", 1), ("C ) Up.", 2), ("D", None), ("Answer is: (D)", None),
    ("I think B", None), ("", None), ("1 1 1", None), ("Answer is: (C) because", None),
])
def test_parse_answer(text, expected):
    assert parse_answer(text, ["Left.", "Right.", "Up."]) == expected


def test_parse_answer_beyond_f_and_without_an_opened_parenthesis():
    opts = [str(i) for i in range(7)]  # TOMATO has up to 7 options; its regex stopped at F
    assert parse_answer("Answer is: (G)", opts) == 6
    assert parse_answer("B) left", opts, opened=False) is None


# ================================================================ frame conditions
def levels(n: int, size: int = 16) -> np.ndarray:
    """Frame t is a flat grey of level 10 + 12 t: a decoded frame names its own index."""
    return np.stack([np.full((size, size, 3), 10 + 12 * t, dtype=np.uint8) for t in range(n)])


def ids_of(frames: np.ndarray) -> list[int]:
    return [int(round((f.astype(float).mean() - 10) / 12)) for f in frames]


def test_plan_and_frame_indices_by_hand():
    cfg = T.AblationConfig(frames=16, shuffle_seeds=3, counts=(1, 2, 4, 8, 16, 32))
    conds = {c.name: c for c in cfg.conditions()}
    assert list(conds) == ["multi", "single_first", "single_middle", "single_random", "single_human", "shuffled_0",
                           "shuffled_1", "shuffled_2", "reversed", "frames_1", "frames_2", "frames_4", "frames_8"]
    assert F.curve_of(list(conds.values())) == [(1, "frames_1"), (2, "frames_2"), (4, "frames_4"), (8, "frames_8"),
                                                (16, "multi")]
    ix = lambda name, n=20, h=-1, sid="q1": F.frame_indices(conds[name], n, h, sid)  # noqa: E731
    # np.linspace(0, 19, 16) = 0, 1.27, 2.53, 3.8, 5.07, 6.33, 7.6, 8.87, 10.13, ..., 17.73, 19
    multi = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 19]
    assert ix("multi").tolist() == multi
    assert ix("reversed").tolist() == multi[::-1]
    assert ix("single_first").tolist() == [0] and ix("single_middle").tolist() == [10]
    assert ix("frames_4").tolist() == [0, 6, 12, 19] and ix("frames_1").tolist() == [0]
    assert ix("single_human", h=3).tolist() == [3]
    assert ix("single_human") is None and ix("single_human", h=20) is None  # none, or past the end
    shuffles = [ix(f"shuffled_{s}") for s in range(3)]
    for s in shuffles:
        assert sorted(s.tolist()) == multi and s.tolist() != multi
    assert len({tuple(s) for s in shuffles}) == 3
    assert ix("shuffled_1").tolist() == ix("shuffled_1").tolist()  # seeded by (seed, question id)
    assert ix("shuffled_1", sid="q2").tolist() != ix("shuffled_1").tolist()
    r = {ix("single_random", sid=f"q{i}")[0] for i in range(40)}
    assert r <= set(range(20)) and len(r) > 5
    # A video shorter than m repeats frames, as TOMATO's sampling does; repeat=False gives its own frames.
    assert ix("multi", n=8).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]  # linspace(0, 7, 16)
    assert ix("frames_8", n=8).tolist() == list(range(8))
    assert F.frame_indices(conds["multi"], 8, -1, "q1", repeat=False).tolist() == list(range(8))
    two = F.frame_indices(F.Condition("s", "shuffled", 2, seed=5), 2, -1, "x")
    assert two.tolist() == [1, 0]  # never the identity
    with pytest.raises(ValueError, match="pick"):
        T.AblationConfig(singles=("first", "best"))


def test_prepare_decodes_exactly_the_frames_each_condition_needs(tmp_path):
    path = write_video(tmp_path / "v.mp4", levels(20))
    s = Sample(id="direction-7", task="direction", question="Which way?", options=["a", "b", "c"], answer=0,
               video_path=str(path), meta={"human_frame": 13})
    conds = T.AblationConfig(frames=16, shuffle_seeds=2, counts=(1, 4)).conditions()
    p, notes = F.question_frames(s, conds)
    assert p.n_total == 20 and p.human == 13 and notes == []
    for c in conds:
        assert ids_of(p.frames(c.name)) == p.indices[c.name].tolist(), c.name
    assert ids_of(p.frames("single_human")) == [13] and ids_of(p.frames("frames_4")) == [0, 6, 12, 19]
    assert set(p.store) == {i for v in p.indices.values() for i in v.tolist()}  # nothing more is kept
    s.meta["human_frame"] = 25
    p, notes = F.question_frames(s, conds)
    assert p.indices["single_human"] is None and "human frame 25 is past the video's 20 frames" in notes[0]


def test_synthetic_human_frame_rule():
    s = render("order", 3, n_frames=8, size=32)
    h = F.human_frame(s)
    rgb = np.array(RGB[s.options[s.answer]])
    shows = [bool((f.reshape(-1, 3) == rgb).all(1).any()) for f in s.frames]
    assert shows[h] and not any(shows[:h])  # the first frame showing the answer colour
    assert F.human_frame(render("direction", 3, n_frames=8)) == 4  # no single frame answers: the middle
    assert F.human_frame(render("static_color", 3, n_frames=7)) == 3
    assert F.human_frame(Sample("x", "count", "q", ["a", "b"], 0, meta={"human_frame": 9})) == 9
    assert F.human_frame(Sample("x", "count", "q", ["a", "b"], 0)) == -1  # a benchmark item without one


# ================================================================ metric rows on hand-made runs
def fake_run(model, correct: dict[str, dict[str, list]], k=4) -> T.Ablation:
    """An Ablation with given per-question correctness per condition; preds are
    the answer when right and the next option when wrong."""
    tasks = list(correct)
    cfg = T.AblationConfig(frames=4, shuffle_seeds=2, counts=(1, 2))
    conds = cfg.conditions()
    n = sum(len(correct[t]["multi"]) for t in tasks)
    task_of = np.array([t for t in tasks for _ in correct[t]["multi"]], dtype=object)
    C = len(conds)
    corr = np.full((C, n), np.nan)
    for ci, c in enumerate(conds):
        vals = [v for t in tasks for v in correct[t].get(c.name, [np.nan] * len(correct[t]["multi"]))]
        corr[ci] = vals
    answers = np.zeros(n, dtype=int)
    pred = np.where(np.isnan(corr), -1, np.where(corr == 1, 0, 1)).astype(int)
    return T.Ablation(model=model, fingerprint="f", dataset="synthetic", config={}, conditions=conds,
                      ids=np.array([f"{t}-{i}" for i, t in enumerate(task_of)], dtype=object), answers=answers,
                      n_options=np.full(n, k), groups={"task": task_of}, correct=corr, pred=pred,
                      probs=np.full((C, n, k), np.nan), indices=np.full((C, n, 4), -1), n_total=np.full(n, 8),
                      human_frame=np.full(n, 4))


RUN_A = {"direction": {"multi": [1, 1, 1, 0], "single_first": [1, 0, 0, 0], "single_human": [1, 1, np.nan, 0],
                       "shuffled_0": [1, 0, 0, 0], "shuffled_1": [0, 1, 0, 0], "reversed": [0, 0, 0, 0]},
         "static_color": {k: [1, 1, 1, 1] for k in ("multi", "single_first", "single_human", "shuffled_0",
                                                     "shuffled_1", "reversed")}}
RUN_B = {"direction": {"multi": [1, 1, 0, 0], "single_first": [1, 1, 0, 0], "single_human": [1, 1, 1, 0],
                       "shuffled_0": [1, 1, 0, 0], "shuffled_1": [1, 0, 0, 0], "reversed": [1, 1, 0, 0]},
         "static_color": {"multi": [1, 1, 1, 1], "single_first": [0, 0, 0, 0], "single_human": [1, 0, 0, 0],
                          "shuffled_0": [1, 1, 1, 1], "shuffled_1": [1, 1, 1, 1], "reversed": [1, 1, 1, 1]}}


def test_metric_rows_by_hand():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        rows = M.metric_rows([fake_run("A", RUN_A)], "task", n_boot=300)
    r = {x["group"]: x for x in rows}
    assert list(r) == ["direction", "static_color", "all"]
    d = r["direction"]
    assert (d["n"], d["acc_multi"], d["acc_first"], d["acc_shuffled"], d["acc_reversed"]) == (4, 75, 25, 25, 0)
    assert d["kappa"] == pytest.approx(200.0)  # (75 - 25) / 25
    assert d["tau"] == pytest.approx(200.0)  # shuffled per question (.5, .5, 0, 0): 25
    # rho on the 3 questions with a human frame: human 2/3, first (1, 0, 0) 1/3 -> 100
    assert d["n_human"] == 3 and d["acc_human"] == pytest.approx(200 / 3) and d["rho"] == pytest.approx(100.0)
    assert np.isnan(d["tau_reversed"])  # A_rev = 0: undefined, not infinite
    # flips: q0 flips under seed 1, q1 under seed 0, q2 under both, q3 wrong both ways (same pred) -> .5 .5 1 0
    assert d["flip_rate"] == pytest.approx(50.0)
    s = r["static_color"]
    assert (s["kappa"], s["tau"], s["rho"], s["flip_rate"]) == (0.0, 0.0, 0.0, 0.0)
    a = r["all"]
    assert (a["acc_multi"], a["acc_first"]) == (87.5, 62.5) and a["kappa"] == pytest.approx(40.0)
    assert a["tau"] == pytest.approx(40.0)  # shuffled 5/8
    assert a["rho"] == pytest.approx(20.0)  # 7 questions: human 6/7 vs first 5/7
    for row in rows:
        for k in ("kappa", "tau", "rho"):
            assert row[f"{k}_lo"] <= row[k] + 1e-9 and row[k] <= row[f"{k}_hi"] + 1e-9


def test_average_over_models_rows_and_the_tables():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = M.metric_rows([fake_run("A", RUN_A), fake_run("B", RUN_B)], "task", n_boot=300)
    said = [str(w.message) for w in caught if w.category is M.UndefinedMetricWarning]
    assert any(m.startswith("kappa") and "(B, task=static_color)" in m for m in said)
    assert any(m.startswith("average of kappa over models is undefined (task=static_color)") for m in said)
    avg = {x["group"]: x for x in rows if x["model"] == "average"}
    b = {x["group"]: x for x in rows if x["model"] == "B"}
    assert b["direction"]["kappa"] == 0.0 and np.isnan(b["static_color"]["kappa"])
    # direction: A 200, B 0 -> 100; the metric of the averaged accuracies would be (62.5-37.5)/37.5 = 66.7
    assert avg["direction"]["kappa"] == pytest.approx(100.0)
    assert avg["direction"]["acc_multi"] == pytest.approx(62.5) and avg["direction"]["acc_first"] == 37.5
    assert avg["direction"]["tau"] == pytest.approx((200.0 + (50 - 37.5) / 37.5 * 100) / 2)
    assert np.isnan(avg["static_color"]["kappa"])  # undefined for one model: undefined on average
    md = M.to_markdown(rows, 4)
    lines = md.splitlines()
    assert lines[0].startswith("| Model | Task | n | A_1 | A_1[H] | A_4 | A_shuf | A_rev | κ multi-frame gain")
    line = next(x for x in lines if x.startswith("| A | direction |"))
    assert "| 200.0 [" in line and "| 100.0 [" in line
    assert "| undefined |" in next(x for x in lines if x.startswith("| B | static_color |"))
    assert next(x for x in lines if x.startswith("| average | direction |")).count("100.0") >= 1
    table = list(csv.DictReader(io.StringIO(M.to_csv(rows))))
    assert table[0]["model"] == "A" and float(table[0]["kappa"]) == pytest.approx(200.0)
    assert next(t for t in table if t["model"] == "B" and t["group"] == "static_color")["kappa"] == ""


# ================================================================ a TOMATO folder end to end
def entry(key, demo="human", answer=1, **extra):
    e = {"question": "Which way does the object move?", "options": ["left", "right", "up"], "answer": answer,
         "key": key, "video_source_url": "", "motion_type": "direction",
         "variation": {"counterfactual": 0, "composite": 0, "zoom": 0, "first_person": 0},
         "demonstration_type": demo, "note": ""}
    e.update(extra)
    return e


def build_tomato(root: Path) -> Path:
    """The published format: data/<type>.json keyed by id, videos/<demonstration_type>/<key>.mp4."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "direction.json").write_text(json.dumps({
        "0": entry("k0"),
        "1": entry("k1", demo="object", answer=2, human_frame=3),
        "2": entry("gone"),  # its video is missing
        "3": entry("bad"),  # its video is corrupt
    }))
    (root / "data" / "count.json").write_text(json.dumps({"7": entry("c7", demo="simulated", answer=0)}))
    write_video(root / "videos/human/k0.mp4", levels(10))
    write_video(root / "videos/object/k1.mp4", levels(20))
    write_video(root / "videos/simulated/c7.mp4", render("count", 1, size=16).frames)
    (root / "videos/human/bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 20)
    return root


QUIET = pytest.mark.filterwarnings("ignore::analyses.tomato_metrics.UndefinedMetricWarning")  # tiny models: A = 0


@QUIET
def test_tomato_folder_end_to_end(tmp_path, capsys):
    root = build_tomato(tmp_path / "TOMATO")
    out = tmp_path / "tomato.h5"
    T.main(["--model", TINY, "--dataset", "tomato", "--data-dir", str(root), "--frames", "8", "--shuffle-seeds", "2",
            "--counts", "1,2,4", "--bootstrap", "200", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert "skipped direction-2" in err and "videos/human/gone.mp4" in err and "does not exist" in err
    assert "skipped direction-3" in err and "videos/human/bad.mp4" in err
    ab = T.load_results(out)
    assert ab.ids.tolist() == ["count-7", "direction-0", "direction-1"]  # the reasoning types' order
    assert ab.tasks.tolist() == ["count", "direction", "direction"]
    assert ab.groups["demonstration_type"].tolist() == ["simulated", "human", "object"]
    assert ab.n_total.tolist() == [8, 10, 20] and ab.human_frame.tolist() == [-1, -1, 3]
    names = ab.names
    assert ab.indices[names.index("multi"), 2].tolist() == np.linspace(0, 19, 8, dtype=int).tolist()
    assert ab.indices[names.index("single_human"), 2, 0] == 3
    assert np.isnan(ab.correct_of("single_human")[:2]).all()  # no human frame: not run, not wrong

    # Independent: the loader's own decoding + tracing.scoring.score.
    lm = tiny()
    k1 = root / "videos/object/k1.mp4"
    for name, frames in [("multi", load_frames(k1, 8)), ("single_human", load_frames(k1)[3:4]),
                         ("reversed", load_frames(k1, 8)[::-1]), ("frames_4", load_frames(k1, 4))]:
        sc = score(lm, [build_inputs(lm, frames, "Which way does the object move?", ["left", "right", "up"], 2)])
        ci = names.index(name)
        np.testing.assert_allclose(ab.probs[ci, 2], sc.probs[0], rtol=1e-4, atol=1e-9, err_msg=name)
        assert ab.pred[ci, 2] == sc.pred[0] and ab.correct[ci, 2] == float(sc.pred[0] == 2)

    # Every metric recomputed from the file's per-question arrays with plain numpy.
    table = {(r["by"], r["group"]): r for r in csv.DictReader(io.StringIO(Path(out.with_suffix(".csv")).read_text()))}
    assert set(table) == {("task", "count"), ("task", "direction"), ("task", "all"),
                          ("demonstration_type", "simulated"), ("demonstration_type", "human"),
                          ("demonstration_type", "object"), ("demonstration_type", "all")}
    multi, first = ab.correct_of("multi"), ab.correct_of("single_first")
    shuf = np.mean([ab.correct_of("shuffled_0"), ab.correct_of("shuffled_1")], 0)
    for grp, mask in [("direction", ab.tasks == "direction"), ("all", np.ones(3, bool))]:
        for col, num, den in [("kappa", multi, first), ("tau", multi, shuf)]:
            a, b = num[mask].mean(), den[mask].mean()
            want = "" if b == 0 else f"{(a - b) / b * 100:.4f}"
            assert table[("task", grp)][col] == want, (grp, col)
    md = Path(out.with_suffix(".md")).read_text()
    assert "### by task" in md and "### by demonstration type" in md
    for name in ("curve", "metrics", "layers"):  # figures in the default --figures folder
        assert (tmp_path / "tomato_figures" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "tomato_figures" / f"{name}.pdf").stat().st_size > 0
    # The file keeps every question asked, the two whose video failed recorded as skipped, with why.
    r = CacheReader(out)
    assert r.samples["id"].tolist() == ["count-7", "direction-0", "direction-1", "direction-2", "direction-3"]
    assert r.samples["complete"].all()
    assert ["skipped" in r.meta(i) for i in range(5)] == [False, False, False, True, True]
    assert "videos/human/gone.mp4" in r.meta(3)["skipped"] and "videos/human/bad.mp4" in r.meta(4)["skipped"]
    assert [sid for sid, _ in ab.skipped] == ["direction-2", "direction-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TOMATO", "tomato.csv", "tomato.h5", "tomato.md",
                                                          "tomato_figures"]  # no scratch file left


# ================================================================ synthetic through the CLI, the file, the notebook
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    out = d / "tomato-tiny.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        T.main(["--model", TINY, "--dataset", "synthetic", "--tasks", "direction,order,static_color", "--limit", "3",
               "--frames", "8", "--shuffle-seeds", "2", "--bootstrap", "200", "--no-progress", "--out", str(out)])
    return out


@QUIET
def test_synthetic_run_file_contents(synthetic_run):
    out = synthetic_run
    ab = T.load_results(out)
    samples = make_dataset(["direction", "order", "static_color"], 3, seed=0, n_frames=8, size=32)
    assert ab.ids.tolist() == [s.id for s in samples] and ab.n_total.tolist() == [8] * 9
    assert ab.human_frame.tolist() == [F.human_frame(s) for s in samples]
    lm = tiny()
    # multi = the 8 rendered frames in order; reversed = back to front (independent scoring).
    for name, f in [("multi", lambda s: s.frames), ("reversed", lambda s: s.frames[::-1]),
                    ("single_middle", lambda s: s.frames[4:5])]:
        sc = score(lm, [build_inputs(lm, f(s), s.question, s.options, s.answer) for s in samples], 4)
        np.testing.assert_allclose(ab.probs[ab.names.index(name)], sc.probs, rtol=1e-4, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(ab.correct_of(name), (sc.pred == ab.answers).astype(float))
    # Shared inputs ran once and agree; the curve's 8 frames are multi's.
    np.testing.assert_array_equal(ab.probs[ab.names.index("frames_1")], ab.probs[ab.names.index("single_first")])
    assert ab.curve() == [(1, "frames_1"), (2, "frames_2"), (4, "frames_4"), (8, "multi")]
    # Inside the model: the reversed run's cosine distance for question 0, recomputed with capture().
    s = samples[0]
    acts = [capture(lm, *build_inputs(lm, f, s.question, s.options, s.answer), "resid_post", positions="last")
            for f in (s.frames, s.frames[::-1])]
    want = [M.cosine_distance(acts[0][f"blocks.{l}.hook_resid_post"].numpy(),
                              acts[1][f"blocks.{l}.hook_resid_post"].numpy()) for l in range(lm.n_layers)]
    np.testing.assert_allclose(ab.cos["reversed"][0], want, rtol=1e-3, atol=1e-6)
    assert ab.layers == list(range(lm.n_layers)) and set(ab.cos) == {"shuffled_0", "shuffled_1", "reversed"}
    assert all(0 <= v <= 1 + 1e-9 for v in ab.cka["reversed"])
    assert ab.cka_task["reversed"].shape == (3, lm.n_layers)  # 3 questions per task: too few, NaN
    assert np.isnan(ab.cka_task["reversed"]).all()
    # What the file says it is, and that it refuses another configuration (from Python too), untouched.
    r = CacheReader(out)
    assert r.attrs["model"] == TINY and r.config["frames"] == 8 and r.config["shuffle_seeds"] == 2
    before = out.read_bytes()
    with pytest.raises(RunError, match=r"config\.frames: 8 \(in file\) vs 16 \(this run\)"):
        T.run(lm, samples, out, T.AblationConfig(frames=16, shuffle_seeds=2), progress=False)
    assert out.read_bytes() == before


@QUIET
def test_generation_mode_counts_unparsed_answers(tmp_path):
    lm = tiny()
    samples = make_dataset(["direction"], 2, n_frames=8)
    cfg = T.AblationConfig(frames=8, shuffle_seeds=1, counts=(), singles=("first",), generate=True,
                           max_new_tokens=3, internals=False)
    ab = T.run_ablation(lm, samples, cfg, progress=False)
    assert ab.skipped == [] and ab.responses.shape == (len(ab.names), 2)
    parsed = np.array([[parse_answer(t, samples[i].options) for i, t in enumerate(row)] for row in ab.responses],
                      dtype=object)
    assert (ab.unparsed == np.vectorize(lambda x: x is None)(parsed)).all()
    assert (ab.correct[ab.unparsed] == 0).all() and (ab.pred[ab.unparsed] == -1).all()
    # Independent: one greedy generation by hand.
    s = samples[0]
    inp, _ = build_inputs(lm, s.frames, s.question, s.options, s.answer)
    g = lm.model.generate(**inp, max_new_tokens=3, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert ab.responses[ab.names.index("multi"), 0] == lm.tokenizer.decode(g[0, inp["input_ids"].shape[1]:],
                                                                          skip_special_tokens=True)
    md, _ = M.report([ab], 50)
    assert f"Unparsed generated answers (counted wrong): {int(ab.unparsed.sum())}." in md


from _notebooks import run_notebook  # noqa: E402


def test_notebook_rebuilds_the_table_and_figures(synthetic_run, tmp_path, monkeypatch):
    outputs, images, text = run_notebook("tomato.ipynb", {"CHRONOLENS_TOMATO_H5": synthetic_run}, tmp_path,
                                         monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert images == 3
    # Its table against the file's raw per-question arrays, read here without the analysis.
    table = next(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    r = CacheReader(synthetic_run)
    names = [c["name"] for c in r.config["conditions"]]
    pred, label, task = r.acts("pred"), r.samples["label"], r.samples["task"]
    for t in ("direction", "order", "static_color"):
        m = task == t
        row = next(x for x in table.splitlines() if x.startswith(f"| {TINY} | {t} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        acc = {n: f"{100 * (pred[m, names.index(n)] == label[m]).mean():.1f}" for n in ("single_first", "multi")}
        assert (cells[2], cells[3], cells[5]) == ("3", acc["single_first"], acc["multi"]), row


def test_cli_errors_are_one_line_and_come_before_any_compute(synthetic_run, tmp_path, capsys):
    def fails(code: int, says: str, *args: str) -> None:
        assert cli_boundary(T.main)(["--model", TINY, "--no-progress", *args]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "Traceback" not in err[0], err

    fails(1, "needs data_dir", "--dataset", "tomato", "--out", str(tmp_path / "x.h5"))
    fails(2, "pick(s) ['best']", "--singles", "first,best", "--out", str(tmp_path / "x.h5"))
    fails(2, "--counts '1,two'", "--counts", "1,two", "--out", str(tmp_path / "x.h5"))
    fails(2, "--limit -1", "--limit", "-1", "--out", str(tmp_path / "x.h5"))
    assert list(tmp_path.iterdir()) == []
    # The same --out with another configuration: refused before running, naming what differs; left unchanged.
    before = synthetic_run.read_bytes()
    fails(1, "config.shuffle_seeds: 2 (in file) vs 5 (this run)", "--dataset", "synthetic", "--tasks",
          "direction,order,static_color", "--limit", "3", "--frames", "8", "--shuffle-seeds", "5",
          "--out", str(synthetic_run))
    assert synthetic_run.read_bytes() == before
    # Every video missing: each is named, then one error line; the file records both as skipped.
    root = tmp_path / "T"
    (root / "data").mkdir(parents=True)
    (root / "data" / "rotation.json").write_text(json.dumps({"0": entry("nowhere"), "1": entry("neither")}))
    out = tmp_path / "x.h5"
    assert cli_boundary(T.main)(["--model", TINY, "--dataset", "tomato", "--data-dir", str(root), "--no-progress",
                                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "skipped rotation-0" in err[-3] and "nowhere.mp4" in err[-3] and "skipped rotation-1" in err[-2]
    assert err[-1].startswith("error: ") and "none of the 2 questions could be run" in err[-1]
    assert [CacheReader(out).meta(i)["skipped"].endswith("file does not exist") for i in (0, 1)] == [True, True]


# ================================================================ resuming after kill -9
KILL_RUN = ["--model", TINY, "--dataset", "synthetic", "--tasks", "direction,order", "--limit", "4", "--frames", "4",
            "--shuffle-seeds", "1", "--counts", "1,2", "--singles", "first,human", "--batch-size", "2",
            "--bootstrap", "50", "--no-progress", "--no-figures", "--threads", "1"]  # 8 questions


def kill_after_first_question(out: Path) -> int:
    """Run the CLI in a subprocess, SIGKILL it as soon as ``out`` holds a finished
    question, and return the questions the file holds complete."""
    proc = subprocess.Popen([sys.executable, "-m", "analyses.tomato", *KILL_RUN, "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while proc.poll() is None:
        try:
            done = int(CacheReader(out).samples["complete"].sum()) if out.exists() else 0
        except Exception:  # being created
            done = 0
        if done > 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err.decode()[-2000:]}"
    return int(CacheReader(out).samples["complete"].sum())


def contents(path: Path) -> dict:
    """Every array and attribute of the file, the creation time aside."""
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        out["attrs"] = {k: str(v) for k, v in f.attrs.items() if k != "created"}
        f.visititems(lambda name, obj: out.update({name: obj[()], name + "@attrs": dict(obj.attrs)})
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_files(a: Path, b: Path) -> None:
    """Every stored array and attribute equal (NaN where NaN), the creation time aside."""
    x, y = contents(a), contents(b)
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], np.ndarray):
            assert x[k].dtype == y[k].dtype, k
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x[k] == y[k], k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        T.main([*KILL_RUN, "--out", str(out)])
    return out


@QUIET
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(uninterrupted, tmp_path, capsys):
    out = tmp_path / "run.h5"
    done = kill_after_first_question(out)
    assert 0 < done < 8
    with pytest.raises(ValueError, match=f"not finished \\({done} of 8 questions done\\)"):
        T.load_results(out)
    part = T.load_results(out, partial=True)
    assert len(part.ids) == done and not part.cos  # the order analysis needs every question
    full = T.load_results(uninterrupted)
    np.testing.assert_array_equal(part.probs, full.probs[:, :done])
    capsys.readouterr()
    T.main([*KILL_RUN, "--out", str(out)])
    assert f"{out}: resuming, {done} of 8 units already complete" in capsys.readouterr().err
    assert_same_files(out, uninterrupted)
    assert out.with_suffix(".md").read_text() == uninterrupted.with_suffix(".md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.csv", "run.h5", "run.md"]  # nothing else left
    # A finished run started again: nothing to run, the same file.
    T.main([*KILL_RUN, "--out", str(out)])
    assert f"{out}: resuming, 8 of 8 units already complete" in capsys.readouterr().err
    assert_same_files(out, uninterrupted)


# ================================================================ the organism
@pytest.fixture(scope="module")
def organism_rows():
    lm = load_model("organism", attn="sdpa")
    samples = make_dataset(["direction", "rotation", "order", "static_color"], 24, seed=7, n_frames=8, size=32)
    cfg = T.AblationConfig(frames=8, shuffle_seeds=2, counts=(), singles=("first",), internals=False)
    ab = T.run_ablation(lm, samples, cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        return {r["group"]: r for r in M.metric_rows([ab], "task", n_boot=200)}


@pytest.mark.parametrize("task", ["direction", "rotation", "order"])
def test_organism_needs_several_frames_in_order(organism_rows, task):
    r = organism_rows[task]
    assert r["acc_multi"] >= 90, r  # kappa and tau of a task answered at chance would measure nothing
    assert r["kappa"] > 40 and r["tau"] > 25, r


def test_organism_static_control_needs_neither(organism_rows):
    s = organism_rows["static_color"]
    assert s["acc_multi"] >= 90 and abs(s["kappa"]) < 10 and abs(s["tau"]) < 10, s


def test_undefined_metrics_are_one_line_each():
    """The CLI's notes: each distinct undefined metric once, one line, no warning source lines."""
    import warnings

    from analyses.tomato_metrics import relative_gain, undefined_notes

    lines = []
    with pytest.warns(UserWarning, match="something else"):  # not ours: passed through
        with undefined_notes(lines.append):
            assert np.isnan(relative_gain(1.0, 0.0, "kappa", "task count"))
            assert np.isnan(relative_gain(0.5, 0.0, "kappa", "task count"))
            assert np.isnan(relative_gain(np.nan, 1.0, "tau", "task when"))
            warnings.warn("something else", UserWarning)
    assert lines == ["note: kappa is undefined (task count): its denominator accuracy is 0",
                     "note: tau is undefined (task when): an accuracy has no questions"]


def test_findings_block_states_the_stored_accuracies(synthetic_run):
    """python -m analyses.findings' TOMATO block: its table equals the
    accuracies recomputed here from the stored per-question correctness, and
    its sentences name the tasks those numbers single out."""
    from analyses import findings_blocks

    text = findings_blocks.tomato_block({"tomato": str(synthetic_run)})
    flat = " ".join(text.split())
    ab = T.load_results(synthetic_run)
    tasks = ab.tasks.astype(str)
    acc = {}
    for t in ("direction", "order", "static_color"):
        m = tasks == t
        a = [100 * float(np.nanmean(x[m])) for x in (ab.correct_of("single_first"), ab.correct_of("multi"),
                                                    ab.shuffled_correct(), ab.correct_of("reversed"))]
        acc[t] = a
        row = f"| {findings_blocks._words(t)} | " + " | ".join(f"{v:.1f}" for v in a) + " |"
        assert row in text, (row, text)
    flips = [t for t in ("direction", "order") if acc[t][3] <= 10 and acc[t][1] >= 90]
    first = [t for t in ("direction", "order") if acc[t][0] >= 80]
    assert f"reversed, {findings_blocks.listing([findings_blocks._words(t) for t in flips])} answer the opposite" in flat
    assert ("answered from the first frame alone" in flat) == bool(first)
    s = acc["static_color"]
    assert f"the static control stays at {s[0]:.0f} / {s[1]:.0f} / {s[2]:.0f} / {s[3]:.0f}" in flat
    assert "3 questions per task, m = 8 frames" in flat and "2 shuffle seeds" in flat
