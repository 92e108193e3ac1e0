"""Result files as a notebook user reads them: /samples/gold and
/samples/predicted (schema 2), files of schema 1 (label, answer) read and
resumed as the same run, the prediction filled per unit by the engine, and
the reader's strings as str and configuration as a dict."""

import json

import h5py
import numpy as np
import pytest

from analyses.run import Declaration, RunError, SkipUnit, _compute, _merge, _open, run
from tracing.store import CacheMismatchError, CacheReader, CacheWriter, SampleMeta

HOOKS = {"h": ((3,), "float32"), "pred": ((1,), "int64")}


def unit_arrays(i):
    return {"h": np.full(3, i, np.float32), "pred": np.array([(i + 1) % 3])}


def write_schema1(path, config, rows, hooks=HOOKS, complete=(0,)):
    """A file as tracing/store.py wrote it before /samples/gold (schema 1, up to
    commit 2d59679), built by hand: rows are (id, task, label, answer, meta);
    the samples of ``complete`` hold unit_arrays(i)."""
    n, st = len(rows), h5py.string_dtype()

    def early():  # storage allocated at creation, as the store does
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        return dict(dcpl=dcpl, fill_time="never")

    with h5py.File(path, "w", libver="earliest") as f:
        a = f.attrs
        a["chronolens_version"], a["kind"], a["model"] = "0.1.0", "cache", "tiny"
        a["model_fingerprint"], a["dataset"] = "fp", "synthetic"
        a["config"] = json.dumps(config, sort_keys=True)
        a["created"], a["schema"] = "2026-11-01T00:00:00+00:00", 1
        a["float16"], a["max_json_bytes"] = False, 64
        a["hooks"] = json.dumps({k: [list(s), d] for k, (s, d) in hooks.items()}, sort_keys=True)
        s = f.create_group("samples")
        s.create_dataset("id", data=np.array([r[0] for r in rows], dtype=object), dtype=st)
        s.create_dataset("task", data=np.array([r[1] for r in rows], dtype=object), dtype=st)
        s.create_dataset("label", data=np.array([r[2] for r in rows], dtype=np.int64))
        s.create_dataset("answer", data=np.array([r[3] for r in rows], dtype=np.int64))
        s.create_dataset("meta", data=np.array([json.dumps(r[4]) for r in rows], dtype=object),
                         dtype=st)
        f.create_group("results")
        done = s.create_dataset("complete", shape=(n,), dtype=bool, **early())
        s.create_dataset("run_meta", shape=(n,), dtype="S64", **early())
        f.create_dataset("layout", shape=(n,), dtype="S64", **early())
        for name, (shape, dtype) in hooks.items():
            f.create_dataset(f"acts/{name}", shape=(n, *shape), dtype=dtype, chunks=(1, *shape), **early())
            f.create_dataset(f"acts_shape/{name}", shape=(n, len(shape)), dtype=np.int64, **early())
        done[:] = False
        for i in complete:
            for name, x in unit_arrays(i).items():
                f[f"acts/{name}"][i], f[f"acts_shape/{name}"][i] = x, x.shape
            f["layout"][i], s["run_meta"][i], done[i] = b"{}", b"{}", True


ROWS = [("q0", "order", 1, -1, {"question": "which?"}), ("q1", "count", 0, -1, {}), ("q2", "order", 2, -1, {})]


def decl(kind="flow", config=None, predicted="pred", compute=None, units=None):
    units = units or [SampleMeta(i, t, g, -1, m) for i, t, g, _, m in ROWS]
    return Declaration(kind, config or {"frames": 4}, units, compute or (lambda i: (unit_arrays(i), {}, {})),
                       shapes=HOOKS, predicted=predicted)


def test_sample_meta_positional_fields_and_read_only_aliases():
    m = SampleMeta("a", "order", 2, 1, {"x": 1})
    assert (m.gold, m.predicted, m.meta) == (2, 1, {"x": 1})
    assert (m.label, m.answer) == (2, 1)  # deprecated aliases
    with pytest.raises(AttributeError):
        m.label = 3
    assert SampleMeta("b", "t").gold == SampleMeta("b", "t").predicted == -1


def test_a_schema1_file_reads_as_gold_and_predicted(tmp_path):
    path = tmp_path / "old.h5"
    write_schema1(path, {"analysis": "flow", "frames": 4}, [(*r[:3], 2, r[4]) for r in ROWS])
    r = CacheReader(path)
    s = r.samples
    assert s["gold"].tolist() == [1, 0, 2] and s["predicted"].tolist() == [2, 2, 2]
    assert s["label"] is s["gold"] and s["answer"] is s["predicted"]
    assert s["complete"].tolist() == [True, False, False] and r.attrs["schema"] == 1
    assert r.meta(0) == {"question": "which?"} and np.array_equal(r.acts("h")[0], [0, 0, 0])
    # T3 wrote its gold label as the answer: read as no prediction, not as a perfect one
    t3 = tmp_path / "t3.h5"
    write_schema1(t3, {"analysis": "t3"}, [(*r[:3], r[2], r[4]) for r in ROWS])
    s = CacheReader(t3).samples
    assert s["gold"].tolist() == [1, 0, 2] and s["predicted"].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("kind, answer", [("flow", lambda row: -1), ("t3", lambda row: row[2])])
def test_a_schema1_file_resumes_as_the_same_run(tmp_path, kind, answer):
    """An old file (flow: answer -1; t3: answer = the gold label) and a new run
    of the same configuration are one run: the engine resumes it, fills what
    is missing and leaves it schema 1; another configuration is still refused."""
    path = tmp_path / "old.h5"
    write_schema1(path, {"analysis": kind, "frames": 4}, [(*r[:3], answer(r), r[4]) for r in ROWS])
    done = run(decl(kind), path, "tiny", "fp", "synthetic", progress=False, log=lambda m: None)
    assert (done.computed, done.resumed) == (2, 1)
    r = CacheReader(path)
    assert r.samples["complete"].all() and r.attrs["schema"] == 1
    assert np.array_equal(r.acts("h")[2], [2, 2, 2])
    with h5py.File(path, "r") as f:
        assert set(f["samples"]) >= {"label", "answer"} and "gold" not in f["samples"]
    before = path.read_bytes()
    with pytest.raises(RunError, match=r"config.frames: 4 \(in file\) vs 8 \(this run\)"):
        run(decl(kind, {"frames": 8}), path, "tiny", "fp", "synthetic", progress=False)
    units = [SampleMeta(i, t, 9 if i == "q1" else g, -1, m) for i, t, g, _, m in ROWS]
    with pytest.raises(CacheMismatchError, match=r"samples\[1\]: .*'gold': 0.* \(in file\) vs .*'gold': 9"):
        CacheWriter.open(path, "tiny", "fp", "synthetic", {"analysis": kind, "frames": 4}, units, HOOKS)
    assert path.read_bytes() == before


def test_the_engine_fills_predicted_per_unit(tmp_path):
    """/samples/predicted is the unit's own answer (Declaration.predicted, 'pred'
    by default): -1 for a skipped unit, a unit without one (empty) or with
    several (one per condition); the prediction is not part of the identity;
    Ray shards carry it through the merge."""
    def compute(i):
        if i == 1:
            raise SkipUnit("unreadable video")
        return unit_arrays(i), {}, {}

    path = tmp_path / "new.h5"
    run(decl(compute=compute), path, "tiny", "fp", "synthetic", progress=False, log=lambda m: None)
    s = CacheReader(path).samples
    assert s["gold"].tolist() == [1, 0, 2] and s["predicted"].tolist() == [1, -1, 0]
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == 2 and f["samples/predicted"][()].tolist() == [1, -1, 0]
        assert not {"label", "answer"} & set(f["samples"])
    # the same run with other predictions in its unit list: the same file, nothing to do
    units = [SampleMeta(i, t, g, 1, m) for i, t, g, _, m in ROWS]
    assert run(decl(units=units), path, "tiny", "fp", "synthetic", progress=False, log=lambda m: None).resumed == 3

    def some(i):  # none (a t3 training sample), one, several (tomato: one per condition)
        return {"h": np.zeros(3, np.float32), "pred": np.array([1, 2][: i % 3])}, {}, {}

    shapes = {"h": ((3,), "float32"), "pred": ((2,), "int64")}
    run(Declaration("x", {}, decl().units, some, shapes=shapes), tmp_path / "x.h5", "tiny", "fp", "synthetic",
        progress=False)
    assert CacheReader(tmp_path / "x.h5").samples["predicted"].tolist() == [-1, 1, -1]
    # a Ray worker's shard, merged by the driver
    d = decl(kind="t3", predicted="video_pred",
             compute=lambda i: ({"h": np.zeros(3, np.float32), "video_pred": np.array([2 - i])}, {}, {}))
    d.shapes = {"h": ((3,), "float32"), "video_pred": ((1,), "int64")}
    with _open(d, tmp_path / "shard.h5", "tiny", "fp", "synthetic") as w:
        _compute(d, w, [0, 2])
    with _open(d, tmp_path / "out.h5", "tiny", "fp", "synthetic") as w:
        assert _merge(w, [tmp_path / "shard.h5"]) == [0, 2]
    out = CacheReader(tmp_path / "out.h5")
    assert out.samples["predicted"].tolist() == [2, -1, 0]
    assert out.acts("video_pred").tolist() == [[2], [0]] and out.complete().tolist() == [0, 2]
    # a shard of another run (another model fingerprint) is refused, the output left as it was
    with _open(d, tmp_path / "other.h5", "tiny", "fp2", "synthetic") as w:
        _compute(d, w, [1])
    with _open(d, tmp_path / "out.h5", "tiny", "fp", "synthetic") as w:
        with pytest.raises(CacheMismatchError, match="other.h5"):
            _merge(w, [tmp_path / "other.h5"])
    assert CacheReader(tmp_path / "out.h5").complete().tolist() == [0, 2]


def test_the_reader_gives_str_and_dicts(tmp_path):
    path = tmp_path / "s.h5"
    units = [SampleMeta("clip-é", "order", 1, -1, {"options": ["a", "b"]})]
    config = {"tasks": ["order"], "frames": {"n": 4}}
    with CacheWriter.open(path, "tiny", "fp", "synthetic", config, units) as w:
        w.write_sample(0, {"h": np.zeros(2)}, {"last": 5}, {"note": "ok"})
        w.write_result("lens/vocab", np.array(["left", "ünïcode"]), {"k": 2})
        w.write_result("words", np.array(["a", "b"], dtype=object))
        w.write_result("ascii", np.array([b"ab", b"c"]))
        w.write_result("report/markdown", np.array("| a |"))
        w.write_result("numbers", np.arange(3))
    with h5py.File(path, "r+") as f:
        f["results/plain"] = np.arange(2)  # written by a notebook, without attrs
    r = CacheReader(path)
    assert r.config == config and r.attrs["config"] == config and isinstance(r.config, dict)
    assert r.attrs["hooks"] == {"h": [[2], "float64"]}
    for k in ("model", "model_fingerprint", "dataset", "kind", "created", "chronolens_version"):
        assert type(r.attrs[k]) is str, k
    assert type(r.attrs["schema"]) is int and type(r.attrs["float16"]) is bool
    s = r.samples
    assert s["id"].tolist() == ["clip-é"] and all(type(x) is str for x in s["id"].tolist() + s["task"].tolist())
    assert isinstance(s["id"][0], str)
    assert r.meta(0) == {"options": ["a", "b"], "note": "ok"} and r.layout(0) == {"last": 5}
    for name, want in (("lens/vocab", ["left", "ünïcode"]), ("words", ["a", "b"]), ("ascii", ["ab", "c"])):
        a, _ = r.result(name)
        assert a.tolist() == want and all(type(x) is str for x in a.flat), name
    assert r.result("lens/vocab")[1] == {"k": 2}
    assert r.result("report/markdown") == ("| a |", {})
    assert r.result("numbers")[0].tolist() == [0, 1, 2] and r.result("plain")[1] == {}
