"""The T3 diagnostic (analyses/t3.py): data, probing logic, an end-to-end run
on a tiny model with its figures and notebook, and, on the organism, that
temporal order is unreadable from one frame's projector tokens but readable
from the frames concatenated (the encoder sees one frame at a time)."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import t3
from tasks import t3 as t3data
from probes import groups
from probes.control import control_labels, selectivity
from tasks.synthetic import COLORS, caption_prompt, render
from tracing.capture import capture
from tracing.inputs import build_sample_inputs
from tracing.registry import load_model
from tracing.scoring import score
from tracing.store import CacheReader

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-llava-next"
# The tiny run: two tasks, one with a fixed question and one whose question
# varies (one video-position probe per question), 3 frames to keep it quick.
TINY_TASKS, TINY_N, TINY_FRAMES = ["order", "when"], 12, 3


# ---------------------------------------------------------------- data

def test_samples_balance_questions_and_answers_and_shift_the_test_split():
    data = t3data.t3_dataset(["referring", "order3"], 24, seed=3, n_frames=6, train_shape="square",
                         test_shape="circle", test_background="white")
    train = [s for s in data if s.meta["split"] == "train"]
    test = [s for s in data if s.meta["split"] == "test"]
    assert len(train) == len(test) == 48
    ref = [s for s in train if s.task == "referring"]
    # 3 segments x 4 colours, each (question, answer) pair twice
    assert Counter((s.question, s.answer) for s in ref) == {k: 2 for k in
                                                             {(s.question, s.answer) for s in ref}}
    assert len({s.question for s in ref}) == 3
    assert Counter(s.answer for s in train if s.task == "order3") == {i: 4 for i in range(6)}
    # the answer really is what the frames show: the asked segment's colour
    s = ref[5]
    seg = {"at the beginning": 0, "in the middle": 1, "at the end": 2}[s.question.split("appears ")[1][:-1]]
    assert s.latents["sequence"][seg] == s.options[s.answer]
    # the shift: every object of a split has its shape, the test background is white
    for split, shape in ((train, "square"), (test, "circle")):
        assert {o["shape"] for x in split for f in x.latents["objects"] for o in f} == {shape}
    assert {tuple(s.frames[0, 0, 0]) for s in test} == {(255, 255, 255)}
    assert {tuple(s.frames[0, 0, 0]) for s in train} == {(0, 0, 0)}
    ids = [s.id for s in data]
    assert len(set(ids)) == len(ids) and ids[0].startswith("train:referring-") and test[0].id.startswith("test:")
    with pytest.raises(ValueError, match="unknown T3 task 'direction'"):
        t3data.t3_samples(["direction"], 2)
    with pytest.raises(ValueError, match="unknown shape 'triangle'"):
        t3data.t3_samples(["order"], 2, shape="triangle")


def test_frame_views():
    X = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # [N, frames, d]
    c = t3.frame_view(X, "concat")
    assert c.shape == (2, 12) and np.array_equal(c[1, 4:8], X[1, 1])  # frame order kept
    assert np.array_equal(t3.frame_view(X, "mean"), X.mean(1))
    assert np.array_equal(t3.frame_view(X, "frame:2"), X[:, 2])
    r = t3.frame_view(X, "random_frame", seed=1)
    assert all(any(np.array_equal(r[n], X[n, t]) for t in range(3)) for n in range(2))
    with pytest.raises(ValueError, match="unknown frame view 'first'"):
        t3.frame_view(X, "first")


def test_probe_accuracy_fits_one_probe_per_question():
    # Two latent bits a, b in the features; the question (group) asks for a or for b.
    # One probe per question reads it; one probe over both questions cannot.
    rng = np.random.default_rng(0)
    n = 400
    a, b, g = rng.integers(2, size=n), rng.integers(2, size=n), np.arange(n) % 2
    X = np.c_[a, b].astype(float) * 2 - 1 + 0.1 * rng.normal(size=(n, 2))
    y = np.where(g == 0, a, b)
    train = np.arange(n) < n // 2
    per_q = groups.probe_accuracy(X, y, train, ~train, groups=g, seeds=(0, 1))
    pooled = groups.probe_accuracy(X, y, train, ~train, groups=None, seeds=(0, 1))
    assert per_q.shape == pooled.shape == (2, 1)
    assert per_q.min() == 1.0
    assert pooled.max() < 0.85
    # per-group accuracy is weighted by the group's test count: check against a direct fit
    for make in (groups.probe_factory(), groups.probe_factory(kind="sklearn")):
        ref = []
        for q in (0, 1):
            tr, te = train & (g == q), ~train & (g == q)
            ref.append(make(0).fit(X[tr], y[tr]).predict(X[te])[0] == y[te])
        assert per_q[0, 0] == pytest.approx(np.concatenate(ref).mean())
    with pytest.raises(ValueError, match="probe p1 .*one class"):
        groups.probe_accuracy(X, np.where(train, 0, y), train, ~train, what="p1")


def test_control_task_at_chance_without_type_information_and_above_it_with():
    """300 input types, each once in train and once in test; labels with a
    planted signal, not a function of the type. Features without the type:
    the control task (a random label per type) is at chance, selectivity is
    the real accuracy minus it. Features that also embed the type: the probe
    memorises types and the control accuracy rises, selectivity falls."""
    rng = np.random.default_rng(0)
    n_types, K, D = 300, 3, 40
    types = np.tile(np.arange(n_types), 2)
    train = np.arange(2 * n_types) < n_types
    y = rng.permutation(np.arange(2 * n_types) % K)
    signal = 3 * rng.standard_normal((K, D))
    X = np.stack([signal[y] + rng.standard_normal((2 * n_types, D)) for _ in range(2)])  # two "layers"
    acc, Cs = groups.probe_accuracy(X, y, train, ~train, seeds=(0, 1), return_C=True)
    ctrl = groups.control_accuracy(X, types, y, train, ~train, Cs, seeds=(0, 1))
    assert acc.shape == ctrl.shape == (2, 2)
    assert (acc > 0.9).all()
    # the test-time control labels are independent of the features: within 4 sd
    # of 1/3 (plus what the 300 per-type draws leave off a third)
    assert (np.abs(ctrl - 1 / 3) < 4 * np.sqrt(2 / 9 / n_types) + 0.05).all(), ctrl
    np.testing.assert_allclose(acc - ctrl, selectivity(acc, ctrl))
    # the same C per layer and seed as the real probe (a fixed-C factory), labels from control_labels
    yc = control_labels(types, K, seed=1, labels=y)
    by_hand = groups.probe_factory(C=Cs[0][1])(1).fit(X[:, train], yc[train]).score(X[:, ~train], yc[~train])
    np.testing.assert_allclose(ctrl[1], by_hand)

    embed = rng.standard_normal((n_types, 400))[types]  # the type, readable from the features
    Xt = np.concatenate([X, np.stack([embed, embed])], axis=2)
    acc_t, Cs_t = groups.probe_accuracy(Xt, y, train, ~train, seeds=(0,), return_C=True)
    ctrl_t = groups.control_accuracy(Xt, types, y, train, ~train, {0: np.full((1, 2), 10.0)}, seeds=(0,))
    assert (ctrl_t > 0.8).all(), ctrl_t
    assert (acc_t - ctrl_t < acc[:1] - ctrl[:1]).all()


def test_input_type_is_what_is_shown_not_when():
    data = t3data.t3_dataset(["order", "referring"], 24, seed=0, n_frames=6)
    s = next(x for x in data if x.task == "order")
    objs = s.latents["objects"]
    kind = t3data.input_type(s)
    assert kind.startswith(s.question + "|")
    colours = sorted({o["color"] for f in objs for o in f})
    assert [p.split(":")[0] for p in kind.split("|")[1].split(",")] == colours
    # the same clip with its frames reversed (the other order, other answer) is the same type
    rev = replace(s, latents={**s.latents, "objects": objs[::-1]})
    assert t3data.input_type(rev) == kind
    # types recur across the split (train squares, test circles) and are not the answer
    for task in ("order", "referring"):
        tr = {t3data.input_type(x) for x in data if x.task == task and x.meta["split"] == "train"}
        te = {t3data.input_type(x) for x in data if x.task == task and x.meta["split"] == "test"}
        assert tr & te
    by_type = {}
    for x in data:
        by_type.setdefault(t3data.input_type(x), set()).add(x.answer)
    assert any(len(a) > 1 for a in by_type.values())


# ---------------------------------------------------------------- tiny end to end

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t3") / "t3-tiny.h5"
    res = t3.main(["--model", TINY, "--tasks", ",".join(TINY_TASKS), "--samples", str(TINY_N),
                   "--frames", str(TINY_FRAMES), "--C", "1.0", "--probe-seeds", "1", "--no-progress",
                   "--out", str(out)])
    return res, out


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY)


def test_tiny_run_writes_results_cache_and_figures(tiny_run, tiny):
    res, out = tiny_run
    L = tiny.n_layers
    assert res.tasks == TINY_TASKS and res.stages == ["vision", "projector", *[f"layer {l}" for l in range(L)]]
    assert res.probe_frames.shape == res.probe_last.shape == (2, 1, 2 + L)
    assert np.isfinite(res.probe_frames).all()
    assert np.isnan(res.probe_last[:, :, :2]).all() and np.isfinite(res.probe_last[:, :, 2:]).all()
    assert res.chance.tolist() == [1 / 4, 1 / 3] and res.n_test.tolist() == [TINY_N, TINY_N]
    figs = out.with_name(out.stem + "_figures")
    for stem in ("t3_layers", "t3_aspects"):
        for ext in (".png", ".pdf"):
            assert (figs / (stem + ext)).stat().st_size > 1000
    # the file holds what the run returned
    back = t3.load_results(out)
    for name in ("probe_frames", "probe_last", "video_acc", "text_acc", "chance", "n_test"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.tasks == res.tasks and back.stages == res.stages and back.config["test_shape"] == "circle"
    assert set(back.aspects()) == {"order", "grounding"}


def test_tiny_run_model_accuracies_match_a_direct_scoring(tiny_run, tiny):
    res, out = tiny_run
    samples = t3data.t3_dataset(TINY_TASKS, TINY_N, 0, TINY_FRAMES, 32)
    test = [s for s in samples if s.meta["split"] == "test"]
    r = CacheReader(out)
    index, _ = r.result("t3/test_index")
    assert [r.samples["id"][i] for i in index] == [s.id for s in test]
    answers = np.array([s.answer for s in test])
    for form, ctx in (("video", lambda s: None), ("text", caption_prompt)):
        sc = score(tiny, [build_sample_inputs(tiny, s, context=ctx(s)) for s in test], batch_size=len(test))
        pred, _ = r.result(f"t3/{form}_pred")
        assert np.array_equal(pred, sc.pred)
        acc = getattr(res, f"{form}_acc")
        for i, task in enumerate(TINY_TASKS):
            mask = np.array([s.task == task for s in test])
            assert acc[i] == pytest.approx((sc.pred[mask] == answers[mask]).mean())


def test_tiny_run_cache_and_probe_values_recomputed(tiny_run, tiny):
    res, out = tiny_run
    r = CacheReader(out)
    samples = t3data.t3_dataset(TINY_TASKS, TINY_N, 0, TINY_FRAMES, 32)
    # cached views equal a direct capture at those positions
    s = samples[3]
    inputs, layout = build_sample_inputs(tiny, s)
    fm = capture(tiny, inputs, layout, ["projector.hook_out", "blocks.2.hook_resid_post"], "frame_mean")
    last = capture(tiny, inputs, layout, ["blocks.2.hook_resid_post"], "last")
    np.testing.assert_allclose(r.acts(t3.key("projector.hook_out", "frame_mean"), [3])[0],
                               fm["projector.hook_out"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.acts(t3.key("blocks.2.hook_resid_post", "frame_mean"), [3])[0],
                               fm["blocks.2.hook_resid_post"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.acts(t3.key("blocks.2.hook_resid_post", "last"), [3])[0],
                               last["blocks.2.hook_resid_post"].numpy(), rtol=1e-5, atol=1e-6)
    assert r.acts(t3.key("vision.hook_out", "frame_mean")).shape[:2] == (len(samples), TINY_FRAMES)

    # probe numbers refitted by hand from the cache (the run's estimator: the
    # default, torch, at --C 1.0): the projector stage of 'when' (one probe per
    # asked colour) and layer 3 at the last position of 'order'
    probe = groups.probe_factory(C=1.0)
    task = np.array([x.task for x in samples])
    train = np.array([x.meta["split"] == "train" for x in samples])
    y = np.array([x.answer for x in samples])
    q = np.array([x.question for x in samples])
    proj = r.acts(t3.key("projector.hook_out", "frame_mean")).reshape(len(samples), -1)
    ok = []
    for question in sorted(set(q[task == "when"])):
        tr, te = (task == "when") & (q == question) & train, (task == "when") & (q == question) & ~train
        ok.append(probe(0).fit(proj[tr], y[tr]).predict(proj[te])[0] == y[te])
    assert res.probe_frames[1, 0, 1] == pytest.approx(np.concatenate(ok).mean())
    h = r.acts(t3.key("blocks.3.hook_resid_post", "last"))
    tr, te = (task == "order") & train, (task == "order") & ~train
    acc = probe(0).fit(h[tr], y[tr]).score(h[te], y[te])[0]
    assert res.probe_last[0, 0, 2 + 3] == pytest.approx(acc)
    # the two probe kinds on the same split, run to convergence: the same point
    X = np.stack([r.acts(t3.key(f"blocks.{l}.hook_resid_post", "last")) for l in range(tiny.n_layers)])
    tp = groups.probe_factory(C=1.0, tol=1e-9)(0).fit(X[:, tr], y[tr])
    sp = groups.probe_factory(C=1.0, kind="sklearn", tol=1e-9)(0).fit(X[:, tr], y[tr])
    assert np.abs(tp.predict_proba(X[:, te]) - sp.predict_proba(X[:, te])).max() < 1e-5
    np.testing.assert_array_equal(tp.predict(X[:, te]), sp.predict(X[:, te]))

    # the control task: labels a fixed random function of each sample's input
    # type, the same probe (C 1.0), over all test questions as stored; the
    # selectivity: probe - control on the recurring test questions, as stored
    rf = CacheReader(out)
    types = np.array([t3data.input_type(x) for x in samples])
    np.testing.assert_array_equal(rf.result("t3/input_type")[0], types)
    o = task == "order"
    yc = control_labels(types[o], 4, seed=0, labels=y[o])
    ctrl = probe(0).fit(h[o & train], yc[train[o]]).score(h[o & ~train], yc[~train[o]])[0]
    assert res.control_last[0, 0, 2 + 3] == pytest.approx(ctrl)
    for where in ("frames", "last"):
        probe_acc, control = getattr(res, f"probe_{where}"), getattr(res, f"control_{where}")
        assert (np.isfinite(control) == np.isfinite(probe_acc)).all()
        p_rec, c_rec = getattr(res, f"probe_{where}_recurring"), getattr(res, f"control_{where}_recurring")
        stored, _ = rf.result(f"t3/selectivity_{where}")
        np.testing.assert_array_equal(stored, p_rec - c_rec)
        np.testing.assert_array_equal(getattr(res, f"selectivity_{where}"), p_rec - c_rec)
        np.testing.assert_array_equal(rf.result(f"t3/control_{where}")[0], control)
        np.testing.assert_array_equal(rf.result(f"t3/control_{where}_recurring")[0], c_rec)


def _recurring_by_sets(types, task, train, t):
    """Test questions of task t whose type is among its training types, counted with sets."""
    seen = {ty for ty, k, tr in zip(types, task, train) if k == t and tr}
    test = [ty for ty, k, tr in zip(types, task, train) if k == t and not tr]
    return sum(ty in seen for ty in test), len({ty for ty in test if ty in seen}), len(set(test))


def test_tiny_run_selectivity_on_recurring_types_recomputed(tiny_run):
    """The recurring counts against sets of the stored types and split; the
    selectivity of 'when' at the projector (one probe per asked colour) and of
    'order' at layer 3's last position refitted by hand on the recurring test
    questions only (the run's probe: torch, C 1.0, seed 0)."""
    res, out = tiny_run
    r = CacheReader(out)
    types = r.result("t3/input_type")[0].tolist()
    task = np.asarray(r.samples["task"]).astype(str)
    train = np.array([r.meta(i)["split"] == "train" for i in range(r.n_samples)])
    counts = [_recurring_by_sets(types, task, train, t) for t in res.tasks]
    assert res.n_recurring.tolist() == [c[0] for c in counts]
    assert res.n_recurring_types.tolist() == [c[1] for c in counts]
    assert res.n_test_types.tolist() == [c[2] for c in counts]
    back = t3.load_results(out)
    for name in ("n_recurring", "n_recurring_types", "n_test_types", "probe_frames_recurring",
                 "control_last_recurring"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert 0 < res.n_recurring.min() and (res.n_recurring < res.n_test).any()  # both cases occur here
    for i, t in enumerate(res.tasks):
        assert f"{res.n_recurring[i]}/{res.n_test[i]} ({res.n_recurring_types[i]}/{res.n_test_types[i]} types)" \
            in res.table().splitlines()[1 + i]

    probe = groups.probe_factory(C=1.0)
    types = np.array(types)
    y, q = np.asarray(r.samples["gold"]), np.array([r.meta(i)["question"] for i in range(r.n_samples)])
    seen = {(k, ty) for k, ty, tr in zip(task, types, train) if tr}
    rec = ~train & np.array([(k, ty) in seen for k, ty in zip(task, types)])

    def fit_score(X, labels, tr, te):
        if len(set(labels[tr])) < 2:  # a control draw with one class in training predicts it
            return labels[te] == labels[tr][0]
        return probe(0).fit(X[tr], labels[tr]).predict(X[te])[0] == labels[te]

    proj = r.acts(t3.key("projector.hook_out", "frame_mean")).reshape(r.n_samples, -1)
    w = task == "when"
    yc = np.zeros_like(y)
    yc[w] = control_labels(types[w], 3, seed=0, labels=y[w])
    ok, ok_c = [], []
    for question in sorted(set(q[w])):
        tr, te = w & (q == question) & train, w & (q == question) & rec
        ok.append(fit_score(proj, y, tr, te))
        ok_c.append(fit_score(proj, yc, tr, te))
    p_rec, c_rec = np.concatenate(ok).mean(), np.concatenate(ok_c).mean()
    assert len(np.concatenate(ok)) == res.n_recurring[1]
    assert res.probe_frames_recurring[1, 0, 1] == pytest.approx(p_rec)
    assert res.control_frames_recurring[1, 0, 1] == pytest.approx(c_rec)
    assert res.selectivity_frames[1, 0, 1] == pytest.approx(p_rec - c_rec)

    h = r.acts(t3.key("blocks.3.hook_resid_post", "last"))
    o = task == "order"
    yc = np.zeros_like(y)
    yc[o] = control_labels(types[o], 4, seed=0, labels=y[o])
    sel = fit_score(h, y, o & train, o & rec).mean() - fit_score(h, yc, o & train, o & rec).mean()
    assert res.selectivity_last[0, 0, 2 + 3] == pytest.approx(sel)


def test_selectivity_spread_over_seeds_and_the_table(tiny_run):
    """The spread is numpy's std / min / max over the stored per-seed values;
    the table shows mean ± sd, the recurring counts and a note of both; a task
    without a recurring test type shows no selectivity and says why."""
    res, _ = tiny_run
    rng = np.random.default_rng(0)
    R, S = 3, len(res.stages)
    per_seed = {n: rng.random((2, R, S)) for n in ("probe_frames", "probe_last", "probe_frames_recurring",
                                                   "probe_last_recurring", "control_frames_recurring",
                                                   "control_last_recurring")}
    per_seed["probe_last"][:, :, :2] = per_seed["probe_last_recurring"][:, :, :2] = np.nan
    many = replace(res, seeds=[0, 1, 2], **per_seed)
    for where in ("frames", "last"):
        sel = per_seed[f"probe_{where}_recurring"] - per_seed[f"control_{where}_recurring"]
        spread = many.selectivity_spread(where)
        np.testing.assert_array_equal(spread["sd"], np.std(sel, axis=1))
        np.testing.assert_array_equal(spread["min"], np.min(sel, axis=1))
        np.testing.assert_array_equal(spread["max"], np.max(sel, axis=1))
        np.testing.assert_array_equal(spread["mean"], np.mean(sel, axis=1))
    sel = per_seed["probe_frames_recurring"] - per_seed["control_frames_recurring"]
    proj = res.stages.index("projector")
    row = many.table().splitlines()[1]
    assert f"{100 * sel[0, :, proj].mean():.1f}±{100 * sel[0, :, proj].std():.1f}" in row
    assert "mean ± standard deviation over the 3 probe seeds" in " ".join(many.table().split())
    assert "one probe seed, so no spread" in " ".join(res.table().split())

    # no recurring test type in 'when': its selectivity is NaN, shown as '—' with a note
    nan = np.full((R, S), np.nan)
    none = replace(many, n_recurring=np.array([many.n_recurring[0], 0]),
                   n_recurring_types=np.array([many.n_recurring_types[0], 0]),
                   probe_frames_recurring=np.stack([per_seed["probe_frames_recurring"][0], nan]),
                   control_frames_recurring=np.stack([per_seed["control_frames_recurring"][0], nan]),
                   probe_last_recurring=np.stack([per_seed["probe_last_recurring"][0], nan]),
                   control_last_recurring=np.stack([per_seed["control_last_recurring"][0], nan]))
    table = none.table()
    assert np.isnan(none.selectivity_spread("frames")["sd"][1]).all()
    assert table.splitlines()[2].count("—") == 4 and "±" not in table.splitlines()[2]
    assert "no test input type of when occurs in training, so no selectivity" in " ".join(table.split())


def test_run_probes_without_a_recurring_test_type_gives_nan_not_an_error(tiny_run, tiny):
    """Test types renamed so that none occurs in training: counts 0, the
    recurring accuracies and selectivity NaN; the all-question accuracies stay."""
    res, out = tiny_run
    r = CacheReader(out)
    types = [("unseen " if r.meta(i)["split"] == "test" else "") + t
             for i, t in enumerate(r.result("t3/input_type")[0])]
    got = t3.run_probes(r, tiny.n_layers, groups.probe_factory(C=1.0), (0,), progress=False, types=types)
    assert got["n_recurring"].tolist() == got["n_recurring_types"].tolist() == [0, 0]
    assert got["n_test_types"].tolist() == res.n_test_types.tolist()
    for where in ("frames", "last"):
        assert np.isnan(got[f"probe_{where}_recurring"]).all() and np.isnan(got[f"control_{where}_recurring"]).all()
        np.testing.assert_allclose(got[f"probe_{where}"], getattr(res, f"probe_{where}"))


def test_old_results_are_refused_with_a_message(tiny_run, tmp_path):
    """A file whose T3 results predate the recurring-type selectivity: the
    probe stage refuses it naming the difference (--overwrite, which redoes
    only the probes, is tested above), and load_results says what to do."""
    import json
    import shutil

    import h5py

    from analyses.run import RunError

    _, src = tiny_run
    out = tmp_path / "old.h5"
    shutil.copy(src, out)
    with h5py.File(out, "r+") as f:
        d = f["results/t3/request"]
        d.attrs["attrs"] = json.dumps({k: v for k, v in json.loads(d.attrs["attrs"]).items() if k != "results"})
        for name in t3._COUNTS + t3._PER_SEED[4:]:
            del f[f"results/t3/{name}"]
    with pytest.raises(KeyError, match="older version.*--overwrite"):
        t3.load_results(out)
    args = ["--model", TINY, "--tasks", ",".join(TINY_TASKS), "--samples", str(TINY_N), "--frames",
            str(TINY_FRAMES), "--C", "1.0", "--probe-seeds", "1", "--no-progress", "--out", str(out)]
    with pytest.raises(RunError, match=r"t3.results: '<absent>' \(in file\) vs 2 \(this run\)"):
        t3.main(args)


from _notebooks import run_notebook  # noqa: E402


def test_notebook_redraws_from_the_file(tiny_run, tmp_path, monkeypatch):
    res, out = tiny_run
    outputs, images, text = run_notebook("t3.ipynb", {"CHRONOLENS_T3_H5": out}, tmp_path, monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert images == 2
    assert res.table() in text and str(out) in text
    assert "grounding" in text and "order" in text


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_refuses_another_configuration_and_overwrite_replaces_it(tiny_run, tmp_path, capsys):
    import shutil

    from analyses.run import RunError, UsageError

    _, src = tiny_run
    out = tmp_path / "t3.h5"
    shutil.copy(src, out)
    before = _digest(out)
    args = ["--model", TINY, "--tasks", ",".join(TINY_TASKS), "--frames", str(TINY_FRAMES), "--probe-seeds", "1",
            "--no-progress", "--out", str(out)]
    # other probe settings: refused, naming the file and what differs; nothing touched
    with pytest.raises(RunError) as e:
        t3.main(args + ["--samples", str(TINY_N), "--C", "0.5"])
    assert str(out) in str(e.value) and "C: 1.0 (in file) vs 0.5 (this run)" in str(e.value)
    assert "--overwrite" in str(e.value) and _digest(out) == before
    # another data configuration: refused the same way
    with pytest.raises(RunError, match="config.seed: 0 .in file. vs 1 .this run."):
        t3.main(args + ["--samples", str(TINY_N), "--C", "1.0", "--seed", "1"])
    # --overwrite of a data configuration whose probes cannot be cross-validated (2 samples
    # per task): refused before anything is computed or written; the old file as it was
    with pytest.raises(UsageError, match="raise --samples or lower --cv"):
        t3.main(args + ["--samples", "2", "--overwrite"])
    assert _digest(out) == before and not list(tmp_path.glob("*.next")) and not list(tmp_path.glob(".*"))
    # --overwrite of other probe settings: the probes redone on the stored arrays, which are kept
    r0 = CacheReader(out)
    created, acts = r0.attrs["created"], r0.acts("blocks.2.hook_resid_post@last")
    res = t3.main(args + ["--samples", str(TINY_N), "--C", "0.5", "--overwrite"])
    r = CacheReader(out)
    assert t3.load_results(out).config["C"] == 0.5 and "overwrite" not in r.config
    np.testing.assert_array_equal(r.result("t3/probe_last")[0], res.probe_last)
    assert r.attrs["created"] == created
    np.testing.assert_array_equal(r.acts("blocks.2.hook_resid_post@last"), acts)
    # the same configuration again: nothing recomputed, not refused
    again = t3.main(args + ["--samples", str(TINY_N), "--C", "0.5"])
    np.testing.assert_array_equal(again.probe_last, res.probe_last)


def test_cli_bad_arguments(capsys):
    from analyses.run import UsageError, cli_boundary

    assert cli_boundary(t3.main)(["--model", TINY, "--tasks", "order,direction"]) == 2
    assert "unknown T3 task(s) ['direction']" in capsys.readouterr().err
    assert cli_boundary(t3.main)(["--model", TINY, "--limit", "5"]) == 2
    assert "use --tasks and --samples" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown probe 'lstm'"):
        groups.probe_factory(kind="lstm")
    # A --samples value whose probes cannot be cross-validated: refused before the model is loaded.

    samples = t3data.t3_dataset(["referring"], 24, 0)
    train = Counter((s.question, s.answer) for s in samples if s.meta["split"] == "train")
    assert min(train.values()) < 3  # the case that crashed after minutes in the probes
    with pytest.raises(UsageError, match="raise --samples or lower --cv"):
        # a well-formed hub id that is not on this machine: its load would fail, it is never reached
        t3.main(["--model", "nobody/nothing", "--tasks", "referring", "--samples", "24"])
    t3.check_folds(t3data.t3_dataset(["referring"], 96, 0), 3)  # the default passes


# ---------------------------------------------------------------- the architecture

def _frame_independence(lm, frames: int):
    """The projector output of frame i depends on frame i only; the LLM's
    residual stream at frame i's positions depends on earlier frames too."""
    s = render("order", 7, frames, 32)
    changed = s.frames.copy()
    changed[0] = 255 - changed[0]  # another first frame
    last = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    a, b = (t3.sample_features(lm, replace(s, frames=f), ["projector.hook_out", last]) for f in (s.frames, changed))
    pa, pb = a[t3.key("projector.hook_out", "frame_mean")], b[t3.key("projector.hook_out", "frame_mean")]
    assert not np.allclose(pa[0], pb[0])
    np.testing.assert_allclose(pa[1:], pb[1:], rtol=1e-4, atol=1e-5)
    la, lb = a[t3.key(last, "frame_mean")], b[t3.key(last, "frame_mean")]
    assert np.abs(la[-1] - lb[-1]).max() > 1e-3


def test_tiny_projector_sees_one_frame_at_a_time(tiny):
    _frame_independence(tiny, 4)


def _binary_order(n: int, seed: int):
    """Order of two events, always red and green: which came first (label 0 = red).
    Both colours' runs, shapes and places are drawn alike, so a frame taken
    alone, without its index, says nothing about the order."""
    out = []
    for i in range(n):
        first, second = ("red", "green") if i % 2 == 0 else ("green", "red")
        out.append(render("order", seed * 100_003 + i, 8, 32, "black", answer=COLORS.index(first),
                          colors=[first, second]))
    return out


def test_organism_order_unreadable_from_one_frame_readable_from_concatenated_frames():
    lm = load_model("organism")
    _frame_independence(lm, 8)
    n = 120
    samples = _binary_order(n, 1) + _binary_order(n, 2)  # train, test: other clips
    final = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    hooks = ["projector.hook_out", final]
    feats = [t3.sample_features(lm, s, hooks) for s in samples]
    proj = np.stack([f[t3.key("projector.hook_out", "frame_mean")] for f in feats])  # [2n, 8, d]
    llm = np.stack([f[t3.key(final, "frame_mean")] for f in feats])
    y = np.array([int(s.answer != COLORS.index("red")) for s in samples])
    train = np.arange(2 * n) < n
    T = proj.shape[1]

    def acc(X, y, train):  # a fixed penalty: cross-validating C would cost 19 fits per probe
        return float(groups.probe_accuracy(X, y, train, ~train, factory=groups.probe_factory(C=1.0), seeds=(0,))[0, 0])

    concat = acc(t3.frame_view(proj), y, train)
    # one frame: every frame of every clip as its own sample, its index not given
    single = acc(proj.reshape(-1, proj.shape[-1]), np.repeat(y, T), np.repeat(train, T))
    bag = acc(t3.frame_view(proj, "mean"), y, train)  # any order-blind pooling of frames
    # inside the LLM, causal attention lets the last frame's tokens see the whole clip
    llm_last_frame = acc(t3.frame_view(llm, f"frame:{T - 1}"), y, train)
    print(f"organism binary order: projector concat {concat:.3f}, one frame {single:.3f}, "
          f"frames averaged {bag:.3f}; final layer, last frame {llm_last_frame:.3f}")
    assert concat >= 0.85
    assert 0.42 <= single <= 0.58
    assert bag <= 0.65
    assert llm_last_frame >= 0.75


def test_findings_block_rows_are_the_stored_accuracies(tiny_run):
    """python -m analyses.findings' T3 block: each row's numbers recomputed
    here from the stored per-seed arrays."""
    from analyses import findings_blocks

    _, out = tiny_run
    r = t3.load_results(out)
    text = findings_blocks.t3_block({"t3": str(out)})
    proj = r.stages.index("projector")
    for i, task in enumerate(r.tasks):
        f = r.probe_frames[i].mean(0)
        b = proj + int(np.argmax(f[proj:]))
        sel = (r.probe_frames_recurring[i, :, proj] - r.control_frames_recurring[i, :, proj]).mean()
        sel_cell = "-" if not np.isfinite(sel) else f"{100 * sel:.0f}"
        last = " ".join(f"{100 * v:.0f}" for v in r.probe_last[i].mean(0)[proj + 1:])
        row = (f"| {100 * r.video_acc[i]:.0f} | {100 * r.text_acc[i]:.0f} | {100 * f[proj]:.0f} ({sel_cell}) | "
               f"{100 * f[b]:.0f}, {'projector' if b == proj else r.stages[b]}")
        assert row in text and f"| {last} | {int(r.n_recurring[i])} of {int(r.n_test[i])} |" in text, (task, text)
    flat = " ".join(text.split())
    assert "cross-validated C, 1 seed;" in flat and "one probe seed, so no spread" in flat  # the run's --probe-seeds 1
