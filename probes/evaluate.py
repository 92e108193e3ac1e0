"""Scoring probes: accuracy, balanced accuracy, chance levels, and the
mean and spread over seeds that the T3 diagnostic reports (5 seeds, mean test
accuracy; Li et al., 2025).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score


def _per_layer(metric, y_true, y_pred):
    """metric(y_true [N], y_pred [N]) -> float, or [L] for y_pred [L, N]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_pred.ndim == 1:
        return float(metric(y_true, y_pred))
    if y_pred.ndim != 2 or y_pred.shape[1] != y_true.shape[0]:
        raise ValueError(f"y_pred: expected [N] or [L, N] with N={y_true.shape[0]}, got {y_pred.shape}")
    return np.array([metric(y_true, p) for p in y_pred])


def accuracy(y_true, y_pred):
    """Fraction correct: y_true [N], y_pred [N] -> float, or [L, N] -> [L]."""
    return _per_layer(accuracy_score, y_true, y_pred)


def balanced_accuracy(y_true, y_pred):
    """Mean per-class recall (chance is 1/K whatever the class balance): [N] -> float, [L, N] -> [L].
    Classes predicted but absent from y_true (a small test split, a control
    task's labels) count for nothing, without scikit-learn's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        return _per_layer(balanced_accuracy_score, y_true, y_pred)


def chance_level(y) -> dict:
    """Chance levels of labels y [N]: {'majority': rate of the most frequent
    class (accuracy of always guessing it), 'uniform': 1/K, 'n_classes': K}."""
    _, counts = np.unique(np.asarray(y), return_counts=True)
    return {"majority": float(counts.max() / counts.sum()), "uniform": 1.0 / len(counts),
            "n_classes": int(len(counts))}


def evaluate_probe(probe_factory: Callable, X_train, y_train, X_test=None, y_test=None,
                   seeds=(0, 1, 2, 3, 4), split_fn: Callable | None = None) -> dict:
    """Fit and score a probe once per seed; mean and std over seeds per layer.

    probe_factory(seed) -> an unfitted probe with fit(X [L, N, D], y) and
    predict(X) -> [L, N] (TorchProbe, SklearnProbe); the seed changes its CV
    folds (and whatever else it seeds). Without split_fn the same train/test
    split is used for every seed. With split_fn(seed) -> (train_idx, test_idx),
    X_train / y_train are the whole pool ([L, N, D] / [N]), each seed draws
    its own split, and X_test / y_test must be None.

    Returns {'accuracy', 'balanced_accuracy': [S, L]; their '_mean' and
    '_std' (population std over seeds) [L]; 'C': [S, L] (when the probe has
    C_); 'chance': chance_level of the (last) test labels; 'seeds'}.
    """
    X_train, y_train = np.asarray(X_train), np.asarray(y_train)
    if split_fn is None and (X_test is None or y_test is None):
        raise ValueError("X_test, y_test: required unless split_fn draws the split")
    if split_fn is not None and (X_test is not None or y_test is not None):
        raise ValueError("X_test, y_test: must be None when split_fn draws the split from X_train")
    acc, bacc, Cs = [], [], []
    for seed in seeds:
        if split_fn is None:
            Xtr, ytr, Xte, yte = X_train, y_train, np.asarray(X_test), np.asarray(y_test)
        else:
            tr, te = split_fn(seed)
            Xtr, ytr, Xte, yte = X_train[..., tr, :], y_train[tr], X_train[..., te, :], y_train[te]
        probe = probe_factory(seed).fit(Xtr, ytr)
        pred = np.asarray(probe.predict(Xte))
        pred = pred[None] if pred.ndim == 1 else pred
        acc.append(accuracy(yte, pred))
        bacc.append(balanced_accuracy(yte, pred))
        if hasattr(probe, "C_"):
            Cs.append(np.broadcast_to(probe.C_, (pred.shape[0],)))
    acc, bacc = np.array(acc), np.array(bacc)
    out = {"accuracy": acc, "accuracy_mean": acc.mean(0), "accuracy_std": acc.std(0),
           "balanced_accuracy": bacc, "balanced_accuracy_mean": bacc.mean(0),
           "balanced_accuracy_std": bacc.std(0), "chance": chance_level(yte), "seeds": tuple(seeds)}
    if Cs:
        out["C"] = np.array(Cs)
    return out
