"""Read cached activations for probing, without a model.

The cache layout (written by tracing/store.py): ``/acts/<hook>`` of shape
[n_samples, *max_shape], chunked one sample per chunk; ``/acts_shape/<hook>``
[n_samples, ndim], each sample's true shape (variable-length hooks are padded
to max_shape); ``/samples/{id, task, label, answer, complete}`` [n_samples],
where ``complete`` is the completion record. Only samples flagged complete are
ever returned. Files are opened read-only without HDF5 locking, so a probe can
read while a run is still writing.

`iter_feature_chunks` reads a few samples at a time, for inputs larger than
memory; `RunningStandardizer` accumulates the mean and variance over those
chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np


def _open(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        raise OSError(f"{path}: cannot open as HDF5 ({e})") from e


def _complete(f, path) -> np.ndarray:
    if "samples" not in f:
        raise KeyError(f"{path}: no /samples group")
    s = f["samples"]
    n = s["id"].shape[0] if "id" in s else None
    if "complete" not in s:
        raise KeyError(f"{path}: no /samples/complete (the completion record)")
    done = s["complete"][()].astype(bool)
    if n is not None and done.shape[0] != n:
        raise ValueError(f"{path}: /samples/complete has {done.shape[0]} entries for {n} samples")
    return done


def _indices(done, samples, path) -> np.ndarray:
    """Sample indices to read: all complete ones (sorted) by default; given ones must be complete."""
    if samples is None:
        return np.flatnonzero(done)
    idx = np.asarray(samples, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= len(done))]
    if len(bad):
        raise IndexError(f"{path}: sample indices {bad.tolist()} out of range 0..{len(done) - 1}")
    if not done[idx].all():
        raise ValueError(f"{path}: samples {idx[~done[idx]].tolist()} are not complete")
    return idx


def complete_indices(path) -> np.ndarray:
    """Indices of the samples flagged complete, sorted: int [n_complete]."""
    with _open(path) as f:
        return np.flatnonzero(_complete(f, path))


def load_labels(path, samples=None, field: str = "label") -> np.ndarray:
    """/samples/<field> [k] (label, answer, id, task) of the complete samples (or the given ones)."""
    with _open(path) as f:
        idx = _indices(_complete(f, path), samples, path)
        if field not in f["samples"]:
            raise KeyError(f"{path}: no /samples/{field}; it holds {sorted(f['samples'])}")
        ds = f["samples"][field]
        out = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return np.asarray(out)[idx]


def _runs(idx):
    """Split indices into runs of consecutive values, each read as one slice."""
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


def _select(x, true_shapes, positions, what):
    """Per-sample features from x [k, *max_shape] given each sample's true shape [k, ndim].

    positions None: the arrays themselves (padding trimmed; all must share one
    true shape). int (negative counts from each sample's true end), list of
    ints, or "mean" (over true positions): along the first axis of a sample,
    the token axis.
    """
    if positions is None:
        if true_shapes is None:
            return x
        if (true_shapes != true_shapes[:1]).any():
            raise ValueError(f"{what}: samples have different shapes (padded); pass positions "
                             f"(an index, a list of indices or 'mean')")
        return x[(slice(None), *[slice(0, d) for d in true_shapes[0]])] if len(x) else x
    if x.ndim < 3:
        raise ValueError(f"{what}: positions={positions!r} needs a token axis, but samples have shape {x.shape[1:]}")
    T = true_shapes[:, 0] if true_shapes is not None else np.full(len(x), x.shape[1])
    if isinstance(positions, str):
        if positions != "mean":
            raise ValueError(f"positions: expected an int, a list of ints, 'mean' or None, got {positions!r}")
        return np.stack([x[i, :T[i]].mean(0) for i in range(len(x))]) if len(x) else x[:, 0]
    pos = np.asarray(positions, dtype=np.int64)
    rows = np.arange(len(x))[:, None]
    p = np.where(pos[None] < 0, T[:, None] + pos.reshape(1, -1), pos.reshape(1, -1))
    if ((p < 0) | (p >= T[:, None])).any():
        bad = int(np.flatnonzero(((p < 0) | (p >= T[:, None])).any(1))[0])
        raise IndexError(f"{what}: position {positions!r} outside the {T[bad]} tokens of sample row {bad}")
    out = x[rows, p]                                     # [k, len(pos), ...]
    return out[:, 0] if pos.ndim == 0 else out


def _read(f, path, hook, idx, positions, dtype):
    """Features of `hook` for sample indices idx [k]: one slice per run of
    consecutive indices (chunks hold one sample each, so a slice reads exactly
    the chunks it needs), then `_select`."""
    if "acts" not in f or hook not in f["acts"]:
        held = sorted(f["acts"]) if "acts" in f else []
        raise KeyError(f"{path}: no hook {hook!r}; it holds {held}")
    ds = f["acts"][hook]
    shp = f["acts_shape"][hook] if "acts_shape" in f and hook in f["acts_shape"] else None
    if len(idx) == 0:
        empty_shapes = None if shp is None else np.zeros((0, ds.ndim - 1), int)
        return _select(np.zeros((0, *ds.shape[1:]), dtype), empty_shapes, positions, f"{path}: {hook}")
    parts, shapes = [], []
    for run in _runs(idx):
        sl = slice(int(run[0]), int(run[-1]) + 1)
        parts.append(ds[sl])
        if shp is not None:
            shapes.append(shp[sl])
    x = np.concatenate(parts)
    true_shapes = np.concatenate(shapes) if shp is not None else None
    return _select(x, true_shapes, positions, f"{path}: {hook}").astype(dtype, copy=False)


def iter_feature_chunks(path, hook, chunk_size: int, samples=None, positions=None,
                        dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (sample indices [k], features) for chunks of at most chunk_size samples.

    hook: one hook name -> features [k, ...]; a list of names -> [len(hooks), k, ...]
    (e.g. every layer's resid_post). samples: indices to read (all must be
    complete); default every complete sample, in file order. positions: see
    load_features. The file is reopened for every chunk, so completion flags
    are read once, at the start.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    hooks = [hook] if isinstance(hook, str) else list(hook)
    with _open(path) as f:
        idx = _indices(_complete(f, path), samples, path)
    for start in range(0, len(idx), chunk_size):
        block = idx[start:start + chunk_size]
        with _open(path) as f:
            feats = [_read(f, path, h, block, positions, dtype) for h in hooks]
        yield block, (feats[0] if isinstance(hook, str) else np.stack(feats))


def load_features(path, hook, samples=None, positions=None, dtype=np.float32) -> np.ndarray:
    """Features of the complete samples (or the given ones, all complete).

    hook: a hook name -> [k, ...], or a list of names -> [len(hooks), k, ...].
    positions: None (the stored arrays, padding trimmed), an int such as -1
    (that token of each sample, negative from its true end), a list of ints,
    or "mean" (mean over each sample's true tokens) -- for hooks stored with a
    token axis ([n, T, D], positions="all" at capture).
    """
    hooks = [hook] if isinstance(hook, str) else list(hook)
    with _open(path) as f:
        idx = _indices(_complete(f, path), samples, path)
        feats = [_read(f, path, h, idx, positions, dtype) for h in hooks]
    return feats[0] if isinstance(hook, str) else np.stack(feats)


class RunningStandardizer:
    """Mean and variance accumulated over chunks (Chan et al.'s pairwise update,
    float64), for features that do not fit in memory at once.

    partial_fit(X) with X [n, D] or [L, n, D] (samples on the second-to-last
    axis); then mean_, var_ (population), scale_ (sqrt(var_), 1 where 0) of
    shape [D] or [L, D], n_samples_seen_; transform(X) -> (X - mean_) / scale_.
    """

    def __init__(self):
        self.n_samples_seen_ = 0
        self.mean_ = self._m2 = None

    def partial_fit(self, X) -> "RunningStandardizer":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim not in (2, 3):
            raise ValueError(f"X: expected [n, D] or [L, n, D], got shape {X.shape}")
        n_b = X.shape[-2]
        if n_b == 0:
            return self
        mean_b = X.mean(-2)
        m2_b = ((X - np.expand_dims(mean_b, -2)) ** 2).sum(-2)
        if self.mean_ is None:
            self.mean_, self._m2, self.n_samples_seen_ = mean_b, m2_b, n_b
            return self
        if mean_b.shape != self.mean_.shape:
            raise ValueError(f"X: features of shape {mean_b.shape}, earlier chunks had {self.mean_.shape}")
        n_a = self.n_samples_seen_
        n = n_a + n_b
        delta = mean_b - self.mean_
        self.mean_ = self.mean_ + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta ** 2 * (n_a * n_b / n)
        self.n_samples_seen_ = n
        return self

    @property
    def var_(self) -> np.ndarray:
        if self.mean_ is None:
            raise RuntimeError("RunningStandardizer: call partial_fit first")
        return self._m2 / self.n_samples_seen_

    @property
    def scale_(self) -> np.ndarray:
        sd = np.sqrt(self.var_)
        return np.where(sd <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mean_), 1), 1.0, sd)

    def transform(self, X, dtype=np.float32) -> np.ndarray:
        """(X - mean_) / scale_ for X of the fitted feature shape, as dtype."""
        X = np.asarray(X)
        return ((X - np.expand_dims(self.mean_, -2)) / np.expand_dims(self.scale_, -2)).astype(dtype)
