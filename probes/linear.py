"""Linear probes: L2-penalised multinomial logistic regression on many layers at once.

Two estimators solve the same problem: `probes.torch_probe.TorchProbe` fits
every layer (and, during cross-validation, every fold) as one batched problem
in torch; `probes.sklearn_probe.SklearnProbe` is the same estimator as a loop
of scikit-learn fits, kept as the reference. Both minimise scikit-learn's
objective, so C means the same thing in both::

    sum_n CE(x_n W + b, y_n) + 1/(2C) ||W||^2        (the intercept b is not penalised)

on features standardised with each layer's training mean and (population) std.
With two classes there is, as in scikit-learn, one logit (class 1 against
class 0): a softmax over two penalised columns would halve the penalty.

This module holds what both share: the default C grid, the checks of their
inputs, the cross-validation folds and the choice of C.

Shapes: X is [L, N, D] (L layers or feature sets, N samples, D width) or [N, D]
(one layer); y is [N]; K is the number of classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

DEFAULT_CS = tuple(np.logspace(-3, 2, 6))


def as_layers(X, name: str = "X"):
    """[N, D] -> [1, N, D]; [L, N, D] unchanged; anything else is an error naming `name`."""
    if X.ndim == 2:
        return X[None]
    if X.ndim != 3:
        raise ValueError(f"{name}: expected shape [L, N, D] or [N, D], got {tuple(X.shape)}")
    return X


def cv_folds(y, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled k-fold split of range(len(y)), fixed by seed: [(train_idx, val_idx)] * cv."""
    y = np.asarray(y)
    counts = np.unique(y, return_counts=True)[1]
    if cv < 2 or counts.min() < cv:
        raise ValueError(f"cv={cv}: need cv >= 2 and at least cv samples in every class "
                         f"(smallest class has {counts.min()})")
    return list(StratifiedKFold(cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def select_C(cv_scores: np.ndarray, Cs) -> tuple[np.ndarray, np.ndarray]:
    """Best C per layer from cv_scores [L, n_folds, n_Cs]: highest mean over folds,
    ties to the smaller C (the stronger penalty). Returns (C_ [L], index into Cs [L])."""
    best = np.argmax(cv_scores.mean(axis=1), axis=1)
    return np.asarray(Cs, dtype=float)[best], best


def class_codes(y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes_ [K], integer codes [N]) of labels y [N]; needs K >= 2."""
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y: {y.shape[0]} labels for {n} samples in X")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y: needs at least 2 classes, got {classes.tolist()}")
    return classes, codes


def C_per_layer(C, L: int) -> np.ndarray:
    C = np.broadcast_to(np.asarray(C, dtype=float), (L,)).copy()
    if (C <= 0).any():
        raise ValueError(f"C: must be > 0, got {C.tolist()}")
    return C


def sorted_Cs(Cs) -> np.ndarray:
    Cs = np.sort(np.asarray(Cs, dtype=float).reshape(-1))
    if len(Cs) == 0 or (Cs <= 0).any():
        raise ValueError(f"Cs: needs one or more values > 0, got {Cs.tolist()}")
    return Cs
