"""The HDF5 store: activations per sample, their layouts, and analysis results.

One file per run. Layout (schema 2; tracing/store_identity.py reads schema 1)::

    attrs   chronolens_version, kind ("cache"), model,
            model_fingerprint, dataset, config (JSON, sorted keys), created
            (ISO time), schema, hooks (JSON {name: [max_shape, dtype]}, or
            null until the first sample defines them), float16, max_json_bytes
    /samples/id, task, gold, meta             [n]  written once, at creation
    /samples/predicted                        [n]  the model's prediction (-1: none)
    /samples/complete                         [n]  bool, the completion record
    /samples/run_meta                         [n]  JSON given by write_sample
    /layout                                   [n]  JSON TokenLayout spans
    /acts/<hook>        [n, *max_shape]  one sample per chunk
    /acts_shape/<hook>  [n, ndim]        each sample's true shape
    /results/<name>                      analysis outputs, attrs as JSON

``gold`` is the ground truth (an option index; -1 where there is none) and
``predicted`` the model's answer: the value given at creation, overwritten by
``write_sample(..., predicted=)`` (the run engine passes the unit's own; -1
where the analysis records none). Schema 1 files named them ``label`` and
``answer``; they are read, and resumed, as gold and predicted.

Why kill -9 cannot break a file: its whole structure (every group, dataset,
attribute, and all chunks, allocated early) is built in ``<file>.partial``
and moved into place with one atomic ``os.replace``. After that, writing a
sample only overwrites bytes inside storage that already exists -- the HDF5
metadata never changes while samples are written (tests/test_store.py checks
this byte by byte), so whatever moment a kill hits, the file opens. Variable
lengths (positions="all": token counts differ per sample) therefore use a
fixed maximum shape per hook plus the ``/acts_shape`` record; the reader trims
the padding. JSON fields are fixed-length for the same reason
(``max_json_bytes``). A sample's arrays are flushed before its ``complete``
flag is set and flushed again, so a flag never points at a half-written
sample; a resumed run rewrites every sample not flagged.

Readers open the file read-only without HDF5 file locking, once per call, so a
notebook can read while a run writes and always sees the flags as of now. SWMR
is not used: an SWMR writer killed by -9 leaves a file that can no longer be
opened for writing without ``h5clear``.

Writing results into an activation cache (``CacheWriter.write_result``)
changes metadata in place and is not kill-safe; the run engine's
``analyses.run.later_stage`` writes a stage's results into a copy of a
complete file that replaces it atomically, and is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

# _differences, _norm, diff_lines are also imported from here (analyses/run.py)
from tracing.store_identity import (SCHEMA, _differences, _dumps, _hook_spec, _identity, _norm,  # noqa: F401
                                    diff_lines, file_identity, plain_attr, sample_arrays)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("chronolens")
    except Exception:  # not installed (a source checkout): still write a file
        return "unknown"


class StoreError(Exception):
    """A file that is not what the store expects (not HDF5, not chronolens, busy)."""


class CacheMismatchError(StoreError):
    """An existing file was written by another model or configuration."""


@dataclass
class SampleMeta:
    """One sample of a run: its id, task, gold (the ground truth, e.g. the right
    option's index; -1: none), predicted (the model's answer if known before
    the run, else -1; an output, not part of the run's identity) and free
    metadata. ``label`` and ``answer`` are deprecated read-only aliases."""
    id: str
    task: str
    gold: int = -1
    predicted: int = -1
    meta: dict = field(default_factory=dict)

    @property
    def label(self) -> int:
        return self.gold

    @property
    def answer(self) -> int:
        return self.predicted


def _open_h5(path, mode="r"):
    """h5py.File with errors that name the path. Readers skip file locking so
    that they can read while a writer (which does lock) has the file open."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path}: not an HDF5 file")
    try:
        # Without HDF5's own file lock, for the writer too: a notebook's plain
        # h5py.File(path, "r") can then open a file while a run writes it (a
        # held lock refuses it). Two writers are kept apart by the run engine's
        # lock beside the file.
        return h5py.File(path, mode, locking=False)
    except OSError as e:
        if "lock" in str(e):
            raise StoreError(f"{path}: open for writing by another process "
                             "(a run still going?); wait for it or use another --out") from e
        raise StoreError(f"{path}: cannot open: {e}") from e


def _read_identity(f, path):
    if "schema" not in f.attrs or "kind" not in f.attrs:
        raise StoreError(f"{path}: an HDF5 file but not a chronolens file "
                         "(no schema/kind attributes); choose another --out")
    return file_identity(f)


def _check_existing(path, ident):
    """Raise CacheMismatchError if the file at path belongs to another run.
    Returns the file's identity. Reads only; the file is not touched."""
    with _open_h5(path) as f:
        old = _read_identity(f, path)
    diff = _differences(old, ident)
    if diff:
        raise CacheMismatchError(
            f"{path} was written by a different run; refusing to append to it:\n  "
            + "\n  ".join(diff)
            + "\nChoose another --out, or delete the file to start over.")
    return old


# ---------------------------------------------------------------- creation

def _early(**kw):
    """Dataset creation kwargs that allocate all storage now, so later writes
    only overwrite bytes in place (no metadata change, hence kill-safe)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dict(dcpl=dcpl, fill_time="never", **kw)


def _create(path, ident, created, max_json_bytes=0, static=None):
    """Build the whole file in <path>.partial, then move it into place atomically.
    static: {name: (array, attrs)} results known before any sample, written now."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    n = len(ident["samples"])
    samples = ident["samples"]
    # libver="earliest": superblock v0 has no "open for write" flag, which a
    # kill would leave set (and which then blocks reopening without h5clear).
    with h5py.File(tmp, "w", libver="earliest") as f:
        a = f.attrs
        a["chronolens_version"] = _version()
        for k in ("kind", "model", "model_fingerprint", "dataset"):
            a[k] = ident[k]
        a["config"] = _dumps(ident["config"])
        a["created"] = created
        a["schema"] = SCHEMA
        s = f.create_group("samples")
        st = h5py.string_dtype()
        s.create_dataset("id", data=np.array([x["id"] for x in samples], dtype=object), dtype=st)
        s.create_dataset("task", data=np.array([x["task"] for x in samples], dtype=object), dtype=st)
        s.create_dataset("gold", data=np.array([x["gold"] for x in samples], dtype=np.int64))
        # contiguous, its storage written now: write_sample overwrites one value in place
        s.create_dataset("predicted", data=np.array([x["predicted"] for x in samples], dtype=np.int64))
        s.create_dataset("meta", data=np.array([_dumps(x["meta"]) for x in samples], dtype=object), dtype=st)
        f.create_group("results")
        for name, (array, attrs) in (static or {}).items():
            _put_result(f, path, name, array, attrs, overwrite=False)
        if ident["kind"] == "cache":
            a["float16"] = ident["float16"]
            a["hooks"] = _dumps(ident["hooks"])
            a["max_json_bytes"] = max_json_bytes
            s.create_dataset("complete", shape=(n,), dtype=bool, **_early())
            s.create_dataset("run_meta", shape=(n,), dtype=f"S{max_json_bytes}", **_early())
            f.create_dataset("layout", shape=(n,), dtype=f"S{max_json_bytes}", **_early())
            acts, shapes = f.create_group("acts"), f.create_group("acts_shape")
            for name, (shape, dtype) in (ident["hooks"] or {}).items():
                acts.create_dataset(name, shape=(n, *shape), dtype=dtype,
                                    chunks=(1, *[max(d, 1) for d in shape]), **_early())
                shapes.create_dataset(name, shape=(n, len(shape)), dtype=np.int64, **_early())
    os.replace(tmp, path)


def _json_field(x, limit, what, path):
    b = _dumps(x).encode()
    if len(b) > limit:
        raise ValueError(f"{path}: {what} is {len(b)} bytes of JSON, more than the file's "
                         f"max_json_bytes={limit}; open a new file with a larger max_json_bytes")
    return b


def _check_samples(samples, path):
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: sample id {dup!r} appears more than once")


# ---------------------------------------------------------------- one row of a dataset

class _Rows:
    """One row (a sample) of a dataset, read and written through h5py's
    low-level calls with the dataspaces made once: ``ds[i] = x`` builds its
    selection anew each call, 3-4x the cost (190 against 55 us a row)."""

    def __init__(self, ds):
        self.id, self.row, self.dtype = ds.id, ds.shape[1:], ds.dtype
        self.file_space = ds.id.get_space()
        self.mem_space = h5py.h5s.create_simple((1, *self.row))
        self.count = (1, *self.row)

    def _select(self, i: int) -> None:
        self.file_space.select_hyperslab((i,) + (0,) * len(self.row), self.count)

    def write(self, i: int, x) -> None:
        """x: the whole row, already of the dataset's dtype and row shape."""
        self._select(i)
        self.id.write(self.mem_space, self.file_space, np.ascontiguousarray(x, dtype=self.dtype).reshape(self.count))

    def read(self, i: int) -> np.ndarray:
        out = np.empty(self.count, self.dtype)
        self._select(i)
        self.id.read(self.mem_space, self.file_space, out)
        return out[0]


# ---------------------------------------------------------------- writing

def _writer_lock(path: Path):
    """An exclusive lock beside the file for a writer's lifetime: a second writer
    is refused at once (HDF5's own file lock is off, so that readers can open
    the file while it is written)."""
    import fcntl

    lock = path.with_name(f".{path.name}.writer")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path}: open for writing by another process (a run still going?); "
                         "wait for it or use another --out") from None
    return lock, fd


def _unlock(lock) -> None:
    if lock is None:
        return
    import fcntl

    path, fd = lock
    path.unlink(missing_ok=True)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class CacheWriter:
    """Writes one run's activations sample by sample; resumable, kill-safe.

    with CacheWriter.open(path, model, fp, dataset, config, samples, hooks) as w:
        for i in w.pending():
            w.write_sample(i, {hook: array}, layout, meta)
    """

    def __init__(self, path, f, ident, static=None, lock=None):
        self.path, self._f, self._ident, self._static, self._lock = Path(path), f, ident, static, lock
        self.n_samples = len(ident["samples"])
        self._limit = int(f.attrs["max_json_bytes"])
        self._ds: dict = {}
        self._predicted = "predicted" in f["samples"]  # False in a schema-1 file

    def _dataset(self, name: str) -> _Rows:
        # h5py's path lookups cost more than a small sample's write: each dataset is looked up once
        d = self._ds.get(name)
        if d is None:
            d = self._ds[name] = _Rows(self._f[name])
        return d

    def _complete(self) -> np.ndarray:
        return self._f["samples/complete"][()]

    @classmethod
    def open(cls, path, model, model_fingerprint, dataset, config: dict,
             samples: list[SampleMeta], hooks: dict | None = None, float16: bool = False,
             max_json_bytes: int = 16384, static: dict | None = None) -> "CacheWriter":
        """Create the file, or resume it if it holds the same run.

        hooks: {name: (max_shape, dtype)}, max_shape being the per-sample shape
        (e.g. [n_positions, d_model]; with positions="all", the longest sample's).
        None: the first write_sample defines them from its arrays' shapes.
        float16: store floating hooks as float16. static: {name: (array, attrs)}
        results that do not depend on the samples (a vocabulary, word lists),
        written with the file's structure. Raises CacheMismatchError if the
        file exists with another model, fingerprint, dataset, config, sample list,
        hooks or float16 -- the file is then left untouched.
        """
        path = Path(path)
        if not samples:
            raise ValueError(f"{path}: no samples to write")
        _check_samples(samples, path)
        ident = _identity("cache", model, model_fingerprint, dataset, config, samples, hooks, float16)
        lock = _writer_lock(path)
        try:
            return cls._open(path, ident, max_json_bytes, static, lock)
        except BaseException:
            _unlock(lock)
            raise

    @classmethod
    def _open(cls, path, ident, max_json_bytes, static, lock):
        if path.exists():
            old = _check_existing(path, ident)
            if old["hooks"] is None and ident["hooks"] is not None:
                _create(path, ident, _attr(path, "created"), _attr(path, "max_json_bytes"), static)
            ident["hooks"] = old["hooks"] if ident["hooks"] is None else ident["hooks"]
        else:
            _create(path, ident, datetime.now(timezone.utc).isoformat(), max_json_bytes, static)
        return cls(path, _open_h5(path, "r+"), ident, static, lock)

    @property
    def hooks(self) -> dict | None:
        """{name: [max shape, dtype]}, or None until the first sample defines them."""
        return self._ident["hooks"]

    def pending(self) -> list[int]:
        """Indices of samples not yet complete, in order."""
        return [int(i) for i in np.flatnonzero(~self._complete())]

    def is_complete(self, i: int) -> bool:
        return bool(self._dataset("samples/complete").read(i))

    def write_sample(self, i: int, acts: dict, layout: dict, meta: dict | None = None,
                     predicted: int | None = None):
        """Store sample i: acts {hook: array [*shape]} (each shape at most the
        hook's max_shape), its layout, optional run metadata (JSON-able) and
        the model's prediction (/samples/predicted; None: left as it is; a
        schema-1 file has no place for it), then mark it complete. Nothing is
        kept in memory after the call."""
        if not 0 <= i < self.n_samples:
            raise IndexError(f"{self.path}: sample index {i} out of range 0..{self.n_samples - 1}")
        if self._ident["hooks"] is None:
            self._define_hooks(acts)
        hooks = self._ident["hooks"]
        if set(acts) != set(hooks):
            raise ValueError(f"{self.path}: sample {i} gives hooks {sorted(acts)}, the file "
                             f"holds {sorted(hooks)}")
        for name, x in acts.items():
            shape, _ = hooks[name]
            if np.ndim(x) != len(shape) or any(a > b for a, b in zip(np.shape(x), shape)):
                raise ValueError(f"{self.path}: hook {name!r} of sample {i} has shape "
                                 f"{tuple(np.shape(x))}, the file's maximum is {tuple(shape)}")
        layout_b = _json_field(layout, self._limit, f"layout of sample {i}", self.path)
        meta_b = _json_field(meta or {}, self._limit, f"meta of sample {i}", self.path)

        f, done = self._f, self._dataset("samples/complete")
        if done.read(i):  # a rewrite must not look complete while half-written
            done.write(i, False)
            f.flush()
        for name, x in acts.items():
            shape, dtype = hooks[name]
            x = np.ascontiguousarray(x, dtype=dtype)
            if x.shape != tuple(shape):
                # write the whole padded slot, so that padding left by a killed
                # attempt at a longer sample can never survive a rewrite
                slot = np.zeros(shape, dtype)
                slot[tuple(slice(0, d) for d in x.shape)] = x
                x = slot
            self._dataset(f"acts/{name}").write(i, x)
            self._dataset(f"acts_shape/{name}").write(i, np.shape(acts[name]))
        self._dataset("layout").write(i, layout_b)
        self._dataset("samples/run_meta").write(i, meta_b)
        if predicted is not None and self._predicted:
            self._dataset("samples/predicted").write(i, int(predicted))
        f.flush()
        done.write(i, True)
        f.flush()

    def _define_hooks(self, acts):
        """hooks=None at open: this first sample's shapes fix the file's layout."""
        spec = {k: (np.shape(v), np.asarray(v).dtype) for k, v in acts.items()}
        spec = _hook_spec(spec, self._ident["float16"])  # validate before closing
        self._f.close()
        self._ds = {}
        self._ident["hooks"] = spec
        _create(self.path, self._ident, _attr(self.path, "created"), self._limit, self._static)
        self._f = _open_h5(self.path, "r+")
        self._predicted = True

    def copy_units(self, src, units=None, check: bool = True) -> list[int]:
        """Copy from the file ``src`` of this same run (a Ray worker's shard:
        the same identity, so the same datasets) its complete units, those of
        ``units`` when given, that are not complete here -> the units copied.
        Whole rows, padding included, a block of consecutive units per read
        and write (the run engine merges batches of units as they finish);
        kill-safe as ``write_sample``: the rows are flushed before their
        flags are set. Raises CacheMismatchError for a file of another run
        (``check=False``: the caller has checked ``src`` already)."""
        if check:
            _check_existing(src, self._ident)
        with _open_h5(src) as g:
            done = g["samples/complete"][()]
            want = np.flatnonzero(done) if units is None else np.array([i for i in units if done[i]], dtype=int)
            want = np.sort(want[~self._complete()[want]])
            if not want.size:
                return []
            names = [f"{group}/{h}" for group in ("acts", "acts_shape") for h in self.hooks]
            names += ["layout", "samples/run_meta"] + (["samples/predicted"] if self._predicted else [])
            bad = check and [n for n in names if (g[n].shape, g[n].dtype) != (self._f[n].shape, self._f[n].dtype)]
            if bad:  # e.g. another max_json_bytes, which the identity does not hold
                raise StoreError(f"{src}: {', '.join(bad)} differ in shape from {self.path}'s: not a part of this run")
            cut = np.flatnonzero(np.diff(want) != 1) + 1  # blocks of consecutive units
            blocks = [(int(b[0]), int(b[-1]) + 1) for b in np.split(want, cut)]
            for name in names:
                for a, b in blocks:
                    self._f[name][a:b] = g[name][a:b]
            self._f.flush()
            for a, b in blocks:
                self._f["samples/complete"][a:b] = True
            self._f.flush()
        return want.tolist()

    def write_result(self, name: str, array, attrs: dict | None = None, overwrite: bool = False):
        """Store an analysis output at /results/<name>. In place: not kill-safe
        (results computed after a run: ``analyses.run.later_stage``)."""
        _put_result(self._f, self.path, name, array, attrs, overwrite)
        self._f.flush()

    def close(self):
        self._f.close()
        _unlock(self._lock)
        self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _attr(path, key):
    with _open_h5(path) as f:
        v = f.attrs[key]
    return v.item() if isinstance(v, np.generic) else v


def _put_result(f, path, name, array, attrs, overwrite):
    if not name or name.startswith("/") or "" in name.split("/"):
        raise ValueError(f"{path}: bad result name {name!r} (want e.g. 'flow/cross_frame')")
    full = f"results/{name}"
    if full in f:
        if not overwrite:
            raise ValueError(f"{path}: result {name!r} exists; pass overwrite=True to replace it")
        del f[full]
    a = np.asarray(array)
    if a.dtype.kind == "U" or (a.dtype.kind == "O" and all(isinstance(x, str) for x in a.flat)):
        d = f.create_dataset(full, data=a.astype(object), dtype=h5py.string_dtype())
    else:
        d = f.create_dataset(full, data=a)
    d.attrs["attrs"] = _dumps(attrs or {})


# ---------------------------------------------------------------- reading

class CacheReader:
    """Read-only view of a store file of either schema; safe while a writer is running.

    Each call reopens the file, so completion flags are always current.
    Strings come back as ``str`` (ids, tasks, string results, attributes),
    JSON as dicts and lists: ``config`` is the run's configuration; ``attrs``
    the file's attributes with ``config`` and ``hooks`` decoded.
    """

    def __init__(self, path):
        self.path = Path(path)
        with _open_h5(self.path) as f:
            _read_identity(f, self.path)  # raises on a non-chronolens file
            self.attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
        for k in ("config", "hooks"):
            if k in self.attrs:
                self.attrs[k] = json.loads(self.attrs[k])
        self.config = self.attrs["config"]
        self.n_samples = self.samples["id"].shape[0]

    @property
    def hooks(self) -> list[str]:
        """Hook names held (empty for a results file)."""
        with _open_h5(self.path) as f:
            return list(f["acts"]) if "acts" in f else []

    @property
    def samples(self) -> dict[str, np.ndarray]:
        """{'id', 'task': str [n]; 'gold': int [n] the ground truth (-1: none);
        'predicted': int [n] the model's answer (-1: none recorded); 'complete':
        bool [n]}. A schema-1 file's label and answer read as gold and predicted.
        'label' and 'answer' are the same arrays as gold and predicted, kept
        for older readers and deprecated: use gold and predicted."""
        with _open_h5(self.path) as f:
            out = sample_arrays(f)
            s, n = f["samples"], out["id"].shape[0]
            out["complete"] = s["complete"][()] if "complete" in s else np.ones(n, bool)
        out["label"], out["answer"] = out["gold"], out["predicted"]
        return out

    def complete(self) -> np.ndarray:
        """Indices of complete samples, int [k]."""
        return np.flatnonzero(self.samples["complete"])

    def acts(self, hook: str, samples=None, complete_only: bool = True):
        """Activations of hook for the given sample indices (default: all complete,
        or all with complete_only=False; a never-written sample reads as empty).

        Returns an array [k, *shape] when every sample has the same shape, else a
        list of k arrays [*shape_i] (e.g. positions="all"). Padding is removed.
        """
        with _open_h5(self.path) as f:
            if hook not in f.get("acts", {}):
                raise KeyError(f"{self.path}: no hook {hook!r}; it holds {list(f.get('acts', {}))}")
            done = f["samples/complete"][()]
            if samples is None:
                idx = np.flatnonzero(done) if complete_only else np.arange(done.size)
            else:
                idx = np.asarray(samples, dtype=int).reshape(-1)
            if complete_only and not done[idx].all():
                raise ValueError(f"{self.path}: samples {idx[~done[idx]].tolist()} are not complete "
                                 "(pass complete_only=False to read them anyway)")
            ds, shp = f["acts"][hook], f["acts_shape"][hook]
            arrays = [ds[i][tuple(slice(0, d) for d in shp[i])] for i in idx]
            empty = np.zeros((0, *ds.shape[1:]), ds.dtype)
        if len({a.shape for a in arrays}) <= 1:
            return np.stack(arrays) if arrays else empty
        return arrays

    def layout(self, i: int) -> dict:
        """The TokenLayout spans of sample i, as written."""
        return json.loads(self._json("layout", i))

    def units(self, indices=None):
        """Complete samples as ``CacheWriter.write_sample`` took them: yields (i,
        {hook: array}, layout, run metadata) for the given indices (default:
        every complete one), the file opened once; to copy samples between files."""
        with _open_h5(self.path) as f:
            done = f["samples/complete"][()]
            idx = np.flatnonzero(done) if indices is None else [i for i in indices if done[i]]
            acts = {h: _Rows(f["acts"][h]) for h in f["acts"]}
            shapes = {h: f["acts_shape"][h][()] for h in acts}
            layout, meta = _Rows(f["layout"]), _Rows(f["samples/run_meta"])
            for i in idx:
                i = int(i)
                arrays = {h: r.read(i)[tuple(slice(0, d) for d in shapes[h][i])] for h, r in acts.items()}
                yield i, arrays, json.loads(layout.read(i).decode()), json.loads(meta.read(i).decode())

    def meta(self, i: int) -> dict:
        """Sample i's metadata: the SampleMeta.meta, updated with write_sample's
        meta once the sample is complete."""
        with _open_h5(self.path) as f:
            m = json.loads(f["samples/meta"].asstr()[i])
            if "complete" in f["samples"] and f["samples/complete"][i]:
                m.update(json.loads(f["samples/run_meta"][i].decode()))
        return m

    def _json(self, dataset, i):
        with _open_h5(self.path) as f:
            if not f["samples/complete"][i]:
                raise ValueError(f"{self.path}: sample {i} is not complete")
            return f[dataset][i].decode()

    def result(self, name: str):
        """(array, attrs dict) stored at /results/<name>; strings as str (an
        array of them: a numpy object array of str)."""
        with _open_h5(self.path) as f:
            if f"results/{name}" not in f:
                raise KeyError(f"{self.path}: no result {name!r}; it holds {self._result_names(f)}")
            d = f[f"results/{name}"]
            a = d.asstr()[()] if h5py.check_string_dtype(d.dtype) else d[()]
            return a, json.loads(d.attrs["attrs"]) if "attrs" in d.attrs else {}

    def results(self) -> list[str]:
        """Names of all stored results, e.g. ['flow/cross_frame']."""
        with _open_h5(self.path) as f:
            return self._result_names(f)

    @staticmethod
    def _result_names(f):
        names = []
        f["results"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return names
