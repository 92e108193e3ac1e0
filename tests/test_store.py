"""tracing/store.py: round trip, resume after real kills, refusal of other runs."""

import gc
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

import _store_writer as W
from tracing.store import (CacheMismatchError, CacheReader, CacheWriter, SampleMeta, StoreError)

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"


def open_like_writer(path, **changes):
    """CacheWriter.open with the arguments of tests/_store_writer.py, some changed."""
    kw = dict(model="tiny-test", model_fingerprint="fp-0123", dataset="synthetic",
              config=W.CONFIG, samples=W.samples(), hooks=W.HOOKS)
    kw.update(changes)
    return CacheWriter.open(path, **kw)


def all_datasets(path):
    """{name: value} of every dataset in the file (strings decoded), read raw."""
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                str_dtype = h5py.check_string_dtype(obj.dtype) and obj.dtype.kind == "O"
                out[name] = obj.asstr()[()] if str_dtype else obj[()]
        f.visititems(visit)
        attrs = {k: v for k, v in f.attrs.items() if k != "created"}
    return out, attrs


def assert_complete_samples_match(path, ref, expect_done=(), only=None):
    """Every sample flagged complete in path (or those of `only`) equals the
    reference run's; the samples of expect_done are flagged complete."""
    r = CacheReader(path)
    done = np.flatnonzero(r.samples["complete"])
    assert set(expect_done) <= set(done.tolist())
    for i in done if only is None else only:
        acts, layout, meta = W.sample_data(i)
        for hook, x in acts.items():
            got = r.acts(hook, [i])
            assert np.array_equal(got[0], x), (hook, i)
            assert np.array_equal(got[0], ref.acts(hook, [i])[0])
        assert r.layout(i) == layout
        assert r.meta(i) == {**W.samples()[i].meta, **meta}
    return done


# ------------------------------------------------------------------ round trip

def test_round_trip_float32_and_float16(tmp_path):
    for float16 in (False, True):
        path = tmp_path / f"f16_{float16}.h5"
        W.run(path, float16=float16)
        r = CacheReader(path)
        dtype = np.float16 if float16 else np.float32
        assert r.hooks == sorted(W.HOOKS)
        assert r.config == W.CONFIG and r.attrs["config"] == W.CONFIG
        assert (r.attrs["model"], r.attrs["model_fingerprint"], r.attrs["dataset"]) == \
            ("tiny-test", "fp-0123", "synthetic")
        assert r.attrs["schema"] == 2 and r.attrs["kind"] == "cache" and "created" in r.attrs
        s = r.samples
        assert s["id"].tolist() == [m.id for m in W.samples()]
        assert s["task"].tolist() == [m.task for m in W.samples()]
        assert s["gold"].tolist() == [m.gold for m in W.samples()] == [i % 4 for i in range(W.N)]
        assert s["predicted"].tolist() == [m.predicted for m in W.samples()]
        assert s["label"] is s["gold"] and s["answer"] is s["predicted"]  # deprecated aliases
        assert s["complete"].all()
        with h5py.File(path, "r") as f:
            assert {"gold", "predicted"} <= set(f["samples"]) and not {"label", "answer"} & set(f["samples"])
        # token counts differ per sample: a list of arrays, trimmed to each true shape
        got = r.acts(HOOK)
        assert isinstance(got, list) and len(got) == W.N
        for i in (0, 1, 17, 49):
            acts, layout, meta = W.sample_data(i)
            assert got[i].dtype == dtype
            assert np.array_equal(got[i], acts[HOOK].astype(dtype))
            pat = r.acts("blocks.1.attn.hook_pattern", [i])
            assert np.array_equal(pat[0], acts["blocks.1.attn.hook_pattern"].astype(dtype))
            assert r.layout(i) == layout
            assert r.meta(i) == {"n_frames": 8 + i % 3, **meta}
        # samples of equal length stack into one array
        same = [i for i in range(W.N) if W.sample_data(i)[0][HOOK].shape[0] == 40]
        assert len(same) >= 2
        stacked = r.acts(HOOK, same)
        assert isinstance(stacked, np.ndarray) and stacked.shape == (len(same), 40, W.D_MODEL)
        assert np.array_equal(stacked[1], W.sample_data(same[1])[0][HOOK].astype(dtype))


def test_storage_is_one_sample_per_chunk_and_float16_halves_it(tmp_path):
    W.run(tmp_path / "a.h5", stop_after=1)
    W.run(tmp_path / "b.h5", stop_after=1, float16=True)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        ds = a["acts"][HOOK]
        assert ds.shape == (W.N, W.MAX_POS, W.D_MODEL)
        assert ds.chunks == (1, W.MAX_POS, W.D_MODEL)
        assert b["acts"][HOOK].dtype == np.float16
        assert b["acts"][HOOK].id.get_storage_size() * 2 == ds.id.get_storage_size()


def test_hooks_defined_by_first_sample_and_clear_errors(tmp_path):
    path = tmp_path / "deep" / "er" / "run.h5"  # missing parent folders are created
    samples = [SampleMeta("a", "t", 0, 1), SampleMeta("b", "t", 1, 1, {"x": [1, 2]})]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with CacheWriter.open(path, "m", "fp", "d", {"k": 1}, samples, hooks=None) as w:
        assert w.pending() == [0, 1]
        w.write_sample(1, {"h": x}, {"last": 2}, {"p": 3})
        assert w.is_complete(1) and not w.is_complete(0) and w.pending() == [0]
        with pytest.raises(ValueError, match=r"'h' of sample 0 has shape \(4, 4\).*\(3, 4\)"):
            w.write_sample(0, {"h": np.zeros((4, 4))}, {})
        with pytest.raises(ValueError, match=r"sample 0 gives hooks \['g'\]"):
            w.write_sample(0, {"g": x}, {})
        with pytest.raises(ValueError, match="max_json_bytes"):
            w.write_sample(0, {"h": x}, {"big": "y" * 20000})
        with pytest.raises(IndexError, match="sample index 2"):
            w.write_sample(2, {"h": x}, {})
        w.write_result("flow/cross_frame", np.eye(3), {"layers": [0, 1], "note": "n"})
        with pytest.raises(ValueError, match="overwrite=True"):
            w.write_result("flow/cross_frame", np.zeros(2))
        w.write_result("flow/cross_frame", np.eye(2), {"v": 2}, overwrite=True)
    r = CacheReader(path)
    assert r.hooks == ["h"] and r.samples["complete"].tolist() == [False, True]
    assert np.array_equal(r.acts("h")[0], x) and r.acts("h").shape == (1, 3, 4)
    with pytest.raises(ValueError, match=r"samples \[0\] are not complete"):
        r.acts("h", [0, 1])
    assert r.acts("h", [0], complete_only=False).shape == (1, 0, 0)  # never written
    every = r.acts("h", complete_only=False)
    assert [a.shape for a in every] == [(0, 0), (3, 4)] and np.array_equal(every[1], x)
    with pytest.raises(KeyError, match="no hook 'nope'"):
        r.acts("nope")
    assert r.meta(1) == {"x": [1, 2], "p": 3} and r.meta(0) == {}
    assert r.layout(1) == {"last": 2}
    assert r.results() == ["flow/cross_frame"]
    arr, attrs = r.result("flow/cross_frame")
    assert np.array_equal(arr, np.eye(2)) and attrs == {"v": 2}


def test_not_hdf5_or_not_chronolens_is_named(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    for path, msg in ((text, "not an HDF5 file"), (foreign, "not a chronolens file")):
        before = path.read_bytes()
        with pytest.raises(StoreError, match=msg) as e:
            open_like_writer(path)
        assert str(path) in str(e.value)
        with pytest.raises(StoreError, match=msg):
            CacheReader(path)
        assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        CacheReader(tmp_path / "missing.h5")


def test_mismatched_run_is_refused_and_file_untouched(tmp_path):
    path = tmp_path / "run.h5"
    W.run(path, stop_after=3)
    before = path.read_bytes()
    other_samples = W.samples()
    other_samples[5] = SampleMeta("s005", "order", 2, 0, {"n_frames": 99})
    cases = [
        (dict(model="other"), ["model: 'tiny-test' (in file) vs 'other' (this run)"]),
        (dict(model_fingerprint="fp-9"), ["model_fingerprint: 'fp-0123'", "'fp-9'"]),
        (dict(dataset="tomato"), ["dataset: 'synthetic'", "'tomato'"]),
        (dict(config={**W.CONFIG, "seed": 1, "frames": {"n": 16, "fps": 2}}),
         ["config.seed: 0 (in file) vs 1 (this run)", "config.frames.n: 8 (in file) vs 16"]),
        (dict(config={**W.CONFIG, "extra": True}), ["config.extra: '<absent>' (in file) vs True"]),
        (dict(samples=W.samples(49)), ["samples: 50 (in file) vs 49 (this run)"]),
        (dict(samples=other_samples), ["samples[5]:", "99"]),
        (dict(hooks={HOOK: ((W.MAX_POS, W.D_MODEL), "float32")}), ["hooks:"]),
        (dict(float16=True), ["float16: False (in file) vs True (this run)"]),
    ]
    for change, fragments in cases:
        with pytest.raises(CacheMismatchError) as e:
            open_like_writer(path, **change)
        msg = str(e.value)
        assert str(path) in msg and "another --out" in msg and "delete" in msg
        for frag in fragments:
            assert frag in msg, (change, msg)
        assert path.read_bytes() == before
    # same run: resumes where it stopped; a second writer at the same time is refused
    with open_like_writer(path) as w:
        assert w.pending() == list(range(3, W.N))
        with pytest.raises(StoreError, match="open for writing by another process"):
            open_like_writer(path)


def test_writes_touch_only_preallocated_data_bytes(tmp_path):
    """Why a kill cannot corrupt the file: after creation, writing (and rewriting)
    samples changes no byte outside the datasets' preallocated storage."""
    path = tmp_path / "run.h5"
    W.run(path, stop_after=0)  # creates the file, writes nothing
    before = np.frombuffer(path.read_bytes(), np.uint8)
    W.run(path, stop_after=3)
    with open_like_writer(path) as w:
        w.write_sample(1, *W.sample_data(2), predicted=0)  # rewrite of a complete sample (predicted was 3)
    assert CacheReader(path).samples["predicted"][1] == 0
    after = np.frombuffer(path.read_bytes(), np.uint8)
    assert after.size == before.size
    allowed = np.zeros(after.size, bool)
    with h5py.File(path, "r") as f:
        for group in ("acts", "acts_shape"):
            for name, ds in f[group].items():
                if ds.chunks:
                    for i in range(ds.shape[0]):
                        c = ds.id.get_chunk_info_by_coord((i,) + (0,) * (ds.ndim - 1))
                        allowed[c.byte_offset:c.byte_offset + c.size] = True
                else:
                    allowed[ds.id.get_offset():ds.id.get_offset() + ds.id.get_storage_size()] = True
        for name in ("samples/complete", "samples/run_meta", "samples/predicted", "layout"):
            ds = f[name]
            allowed[ds.id.get_offset():ds.id.get_offset() + ds.id.get_storage_size()] = True
    changed = np.flatnonzero(after != before)
    assert changed.size > 3 * W.MAX_POS  # the samples did land in the file
    assert allowed[changed].all(), f"bytes changed outside data storage: {changed[~allowed[changed]][:10]}"


def test_memory_does_not_grow_with_samples(tmp_path):
    tracemalloc.start()
    try:
        with open_like_writer(tmp_path / "m.h5") as w:
            data = W.sample_data(0)
            sizes = []
            for i in range(30):
                w.write_sample(i, *data)
                if i in (5, 29):
                    gc.collect()  # h5py's selection objects sit in reference cycles
                    sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    one_sample = sum(a.nbytes for a in data[0].values())
    assert sizes[1] - sizes[0] < one_sample / 10


# ------------------------------------------------------------------ kill -9

def start_writer(path, sleep):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(Path(W.__file__)), str(path), str(sleep)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def test_resume_after_real_kills_equals_uninterrupted_run(tmp_path):
    ref_path = tmp_path / "ref.h5"
    W.run(ref_path)  # uninterrupted
    ref = CacheReader(ref_path)
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    reported = []
    for kill in range(4):
        proc = start_writer(path, sleep=0.01)
        assert proc.stdout.readline().strip() == "open"
        new = []
        for _ in range(int(rng.integers(1, 4))):
            line = proc.stdout.readline().split()
            assert line[0] == "done"
            new.append(int(line[1]))
        reported += new
        # a reader (a notebook) reads while the writer keeps writing
        assert_complete_samples_match(path, ref, reported, only=new)
        # kill at a random moment: mid-write, mid-flush or between samples (a
        # sample takes ~10 ms to make and write, then the writer sleeps 10 ms)
        proc.stdout.read(int(rng.integers(0, 9)))  # let it write up to one more sample
        time.sleep(rng.uniform(0, 0.025))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done = assert_complete_samples_match(path, ref, reported)  # the file opens
        assert len(done) < W.N
    # finish in a fresh process; the result equals the uninterrupted run exactly
    proc = start_writer(path, sleep=0.0)
    lines = proc.communicate(timeout=120)[0].split("\n")
    assert proc.returncode == 0
    resumed = [int(x.split()[1]) for x in lines if x.startswith("done")]
    assert resumed == [i for i in range(W.N) if i not in set(done)]  # finished ones skipped
    got, got_attrs = all_datasets(path)
    want, want_attrs = all_datasets(ref_path)
    assert got_attrs == want_attrs
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert CacheReader(path).samples["complete"].all()


# ------------------------------------------------------------------ results file

def test_results_beside_the_samples(tmp_path):
    """/results/<name>: arrays of any shape with JSON attrs, refused when present
    unless overwrite; read back by name, a missing name named."""
    path = tmp_path / "res" / "flow.h5"
    samples = W.samples(4)
    scores = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with CacheWriter.open(path, "tiny-test", "fp", "synthetic", {"layers": [1, 2]}, samples) as w:
        w.write_result("flow/cross_frame", scores, {"layers": [1, 2], "window": 3})
        w.write_result("tomato/labels", np.array(["before", "after"]))
        with pytest.raises(ValueError, match="exists; pass overwrite=True"):
            w.write_result("flow/cross_frame", scores[0])
        w.write_result("flow/cross_frame", scores[1], {"layers": [2]}, overwrite=True)
    r = CacheReader(path)
    assert r.results() == ["flow/cross_frame", "tomato/labels"]
    arr, attrs = r.result("flow/cross_frame")
    assert np.array_equal(arr, scores[1]) and attrs == {"layers": [2]}
    assert r.result("tomato/labels")[0].tolist() == ["before", "after"]
    assert r.samples["id"].tolist() == ["s000", "s001", "s002", "s003"]
    with pytest.raises(KeyError, match="no result 'flow/x'"):
        r.result("flow/x")
    before = path.read_bytes()
    with pytest.raises(CacheMismatchError, match=r"config.layers: \[1, 2\] \(in file\) vs \[3\]"):
        CacheWriter.open(path, "tiny-test", "fp", "synthetic", {"layers": [3]}, samples)
    assert path.read_bytes() == before


def test_a_plain_h5py_reader_opens_a_file_being_written(tmp_path):
    """A notebook's h5py.File(path, "r"), with HDF5's default file locking, in
    another process, while a writer has the file open and is writing samples."""
    path = tmp_path / "open.h5"
    with open_like_writer(path) as w:
        acts, layout, meta = W.sample_data(0)
        w.write_sample(0, acts, layout, meta)
        code = ("import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
                "print(int(f['samples/complete'][()].sum()), f['acts'][sys.argv[2]].shape[0])")
        out = subprocess.run([sys.executable, "-c", code, str(path), HOOK], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", str(W.N)]
