"""Select probe features from a cache of activations, without a model.

Every function reads through a *reader* that the caller passes: an object
with ``.samples`` ({field: array [n]}, including the completion record
``'complete'`` bool [n]), ``.acts(hook, samples)`` (the stored arrays of those
samples with their padding removed: one array [k, *shape], or a list of k
arrays when their shapes differ) and ``.path`` (named in errors) -- in
practice ``tracing.store.CacheReader(path)``, which owns the file format
(probes/ never imports tracing). What is here is the selection on top:
only samples flagged complete are ever returned; a hook stored with a token
axis ([T_i, D] per sample, positions="all" at capture) is reduced to one or a
few tokens, or their mean, counted on each sample's true length.

`iter_feature_chunks` reads a few samples at a time, for inputs larger than
memory; `RunningStandardizer` accumulates the mean and variance over those
chunks.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class Reader(Protocol):
    """What the functions here read from (tracing.store.CacheReader is one)."""

    path: object

    @property
    def samples(self) -> dict[str, np.ndarray]: ...

    def acts(self, hook: str, samples=None) -> np.ndarray | list[np.ndarray]: ...


def _indices(reader: Reader, samples) -> np.ndarray:
    """Sample indices to read: all complete ones (sorted) by default; given ones must be complete."""
    done = np.asarray(reader.samples["complete"], dtype=bool)
    if samples is None:
        return np.flatnonzero(done)
    idx = np.asarray(samples, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= len(done))]
    if len(bad):
        raise IndexError(f"{reader.path}: sample indices {bad.tolist()} out of range 0..{len(done) - 1}")
    if not done[idx].all():
        raise ValueError(f"{reader.path}: samples {idx[~done[idx]].tolist()} are not complete")
    return idx


def complete_indices(reader: Reader) -> np.ndarray:
    """Indices of the samples flagged complete, sorted: int [n_complete]."""
    return _indices(reader, None)


def load_labels(reader: Reader, samples=None, field: str = "gold") -> np.ndarray:
    """reader.samples[field] [k] (gold, predicted, id, task) of the complete samples (or the given ones)."""
    s = reader.samples
    idx = _indices(reader, samples)
    if field not in s:
        raise KeyError(f"{reader.path}: no sample field {field!r}; it holds {sorted(s)}")
    return np.asarray(s[field])[idx]


def _select(x, idx, positions, dtype, what) -> np.ndarray:
    """Features [k, ...] as dtype from the stored arrays of samples idx [k]: x is
    one array [k, *shape] or a list of k arrays [*shape_i] (padding removed).

    positions None: the arrays themselves (all must share one shape). int
    (negative counts from each sample's true end), list of ints, or "mean"
    (over the sample's tokens): along the first axis of a sample, the token axis.
    """
    if positions is None:
        if isinstance(x, list):
            other = next(a.shape for a in x if a.shape != x[0].shape)
            raise ValueError(f"{what}: samples have different shapes (e.g. {x[0].shape} and {other}); "
                             f"pass positions (an index, a list of indices or 'mean')")
        return x.astype(dtype, copy=False)
    sample_shape = x[0].shape if isinstance(x, list) else x.shape[1:]
    if len(sample_shape) < 2:
        raise ValueError(f"{what}: positions={positions!r} needs a token axis, but samples have shape "
                         f"{tuple(sample_shape)}")
    if isinstance(positions, str) and positions != "mean":
        raise ValueError(f"positions: expected an int, a list of ints, 'mean' or None, got {positions!r}")
    pos = None if isinstance(positions, str) else np.asarray(positions, dtype=np.int64)
    if len(x) == 0:
        lead = () if pos is None else pos.shape
        return np.zeros((0, *lead, *sample_shape[1:]), dtype)
    out = []
    for i, a in zip(idx, x):
        a = np.asarray(a).astype(dtype, copy=False)
        T = a.shape[0]
        if pos is None:
            out.append(a.mean(0))
            continue
        p = np.where(pos < 0, T + pos, pos)
        if ((p < 0) | (p >= T)).any():
            raise IndexError(f"{what}: position {positions!r} outside the {T} tokens of sample {int(i)}")
        out.append(a[p])
    return np.stack(out)


def _read(reader: Reader, hook, idx, positions, dtype) -> np.ndarray:
    """Features of one hook for sample indices idx [k] (all complete): see _select."""
    return _select(reader.acts(hook, idx), idx, positions, dtype, f"{reader.path}: {hook}")


def iter_feature_chunks(reader: Reader, hook, chunk_size: int, samples=None, positions=None,
                        dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (sample indices [k], features) for chunks of at most chunk_size samples.

    hook: one hook name -> features [k, ...]; a list of names -> [len(hooks), k, ...]
    (e.g. every layer's resid_post). samples: indices to read (all must be
    complete); default every complete sample, in file order. positions: see
    load_features. Completion flags are read once, at the start; each chunk
    is one read per hook.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    hooks = [hook] if isinstance(hook, str) else list(hook)
    idx = _indices(reader, samples)
    for start in range(0, len(idx), chunk_size):
        block = idx[start:start + chunk_size]
        feats = [_read(reader, h, block, positions, dtype) for h in hooks]
        yield block, (feats[0] if isinstance(hook, str) else np.stack(feats))


def load_features(reader: Reader, hook, samples=None, positions=None, dtype=np.float32) -> np.ndarray:
    """Features of the complete samples (or the given ones, all complete).

    hook: a hook name -> [k, ...], or a list of names -> [len(hooks), k, ...].
    positions: None (the stored arrays, padding removed; all samples must
    share one shape), an int such as -1 (that token of each sample, negative
    from its true end), a list of ints, or "mean" (mean over each sample's
    tokens) -- for hooks stored with a token axis ([n, T, D], positions="all"
    at capture). An unknown hook: the reader's KeyError.
    """
    hooks = [hook] if isinstance(hook, str) else list(hook)
    idx = _indices(reader, samples)
    feats = [_read(reader, h, idx, positions, dtype) for h in hooks]
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
