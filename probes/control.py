"""Control tasks (Hewitt & Liang, 2019, "Designing and Interpreting Probes with
Control Tasks"): give every input *type* a random but fixed label, fit the same
probe to those labels, and report selectivity = real accuracy - control
accuracy. A probe that reaches high accuracy on the control task is memorising
types, not reading a property out of the representation.

What a "type" is belongs to the caller: for a synthetic clip it can be the
stimulus identity with the temporal property removed (same objects and
background, any order), for a benchmark the video id.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _type_key(t) -> bytes:
    """Stable bytes of one type id (numpy scalars as their Python value)."""
    if isinstance(t, np.generic):
        t = t.item()
    if isinstance(t, bytes):
        t = t.decode()
    return repr(t).encode()


def control_labels(types, n_classes: int, seed: int = 0, labels=None) -> np.ndarray:
    """Control-task labels [N] for input types [N] (ints or strings).

    Each distinct type gets one label, drawn from the class distribution of the
    real `labels` [N] if given (Hewitt & Liang's empirical distribution), else
    uniform over n_classes. The draw for a type depends only on (seed, type,
    that distribution), not on which other types are present or their order,
    so train and test splits get consistent labels. The values returned are
    those of `labels` when given, else range(n_classes).
    """
    types = np.asarray(types)
    if types.ndim != 1:
        raise ValueError(f"types: expected a 1-d array of type ids, got shape {types.shape}")
    if n_classes < 1:
        raise ValueError(f"n_classes: must be >= 1, got {n_classes}")
    values = np.arange(n_classes)
    p = np.full(n_classes, 1.0 / n_classes)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != types.shape[0]:
            raise ValueError(f"labels: {labels.shape[0]} labels for {types.shape[0]} types")
        values, counts = np.unique(labels, return_counts=True)
        if len(values) > n_classes:
            raise ValueError(f"labels: {len(values)} distinct classes but n_classes={n_classes}")
        p = counts / counts.sum()
    # a uniform number per type from a hash of (seed, type): a fixed function of the type
    uniq, inverse = np.unique(types, return_inverse=True)
    u = np.empty(len(uniq))
    for i, t in enumerate(uniq):
        h = hashlib.sha256(str(int(seed)).encode() + b"\0" + _type_key(t)).digest()
        u[i] = int.from_bytes(h[:8], "little") / 2.0 ** 64
    per_type = values[np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), len(values) - 1)]
    return per_type[inverse]


def recurring(types, train, test, groups=None) -> np.ndarray:
    """The test samples whose input type also occurs among the training
    samples (of their group, when groups [N] are given: a probe fitted per
    group sees only its group's training types) -> boolean mask [N].

    Only these can have their control label memorised: a test sample of an
    unseen type gets a control label no probe was trained on, so over all
    test samples the control accuracy is capped and the selectivity inflated
    by the share of unseen types. Score both tasks on this mask."""
    types = np.asarray(types)
    train, test = np.asarray(train, bool), np.asarray(test, bool)
    if types.ndim != 1 or not types.shape == train.shape == test.shape:
        raise ValueError(f"types, train, test: expected 1-d arrays of one length, got shapes "
                         f"{types.shape}, {train.shape}, {test.shape}")
    keys = list(zip(np.zeros(len(types), int) if groups is None else np.asarray(groups).tolist(), types.tolist()))
    seen = {k for k, t in zip(keys, train) if t}
    return test & np.array([k in seen for k in keys], bool)


def selectivity(real_acc, control_acc):
    """Selectivity = real-task accuracy - control-task accuracy, elementwise
    (e.g. per layer [L]); a float for scalars."""
    out = np.asarray(real_acc, dtype=float) - np.asarray(control_acc, dtype=float)
    return float(out) if out.ndim == 0 else out
