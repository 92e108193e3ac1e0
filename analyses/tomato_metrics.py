"""TOMATO's three ablation metrics (Shangguan et al. 2024), with bootstrap intervals.

All three are relative gains in percent (PAPERS.md section 3):

    kappa  multi-frame gain            (A_m - A_1) / A_1 * 100
    tau    frame order sensitivity     (A_m - A_shuffled) / A_shuffled * 100
    rho    frame information disparity (A_1[H] - A_1) / A_1 * 100

A_m: accuracy with m frames sampled uniformly; A_1: one frame (the first, as
TOMATO's code takes); A_shuffled: the same m frames in a random order;
A_1[H]: the single frame a human picked as the most informative. A zero
denominator makes a metric undefined: it is NaN, with an
``UndefinedMetricWarning`` naming the metric and where, never an infinity.
An average over models is the mean of the per-model metric values, not the
metric of averaged accuracies (which is what the paper's averages are).

Pure numpy; nothing here knows about models or files.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


class UndefinedMetricWarning(RuntimeWarning):
    """A metric whose denominator accuracy is zero (or has no questions)."""


def _where(where: str) -> str:
    return f" ({where})" if where else ""


def relative_gain(a: float, b: float, name: str = "relative gain", where: str = "") -> float:
    """(a - b) / b * 100, or NaN with a warning when b is 0 or either side is undefined."""
    a, b = float(a), float(b)
    if np.isnan(a) or np.isnan(b):
        warnings.warn(f"{name} is undefined{_where(where)}: an accuracy has no questions", UndefinedMetricWarning,
                      stacklevel=2)
        return float("nan")
    if b == 0:
        warnings.warn(f"{name} is undefined{_where(where)}: its denominator accuracy is 0",
                      UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return (a - b) / b * 100.0


def kappa(a_m: float, a_1: float, where: str = "") -> float:
    """Multi-frame gain (A_m - A_1) / A_1 * 100."""
    return relative_gain(a_m, a_1, "kappa (multi-frame gain)", where)


def tau(a_m: float, a_shuffled: float, where: str = "") -> float:
    """Frame order sensitivity (A_m - A_shuffled) / A_shuffled * 100."""
    return relative_gain(a_m, a_shuffled, "tau (frame order sensitivity)", where)


def rho(a_human: float, a_1: float, where: str = "") -> float:
    """Frame information disparity (A_1[H] - A_1) / A_1 * 100."""
    return relative_gain(a_human, a_1, "rho (frame information disparity)", where)


def accuracy(correct: np.ndarray) -> float:
    """Percent correct over the defined entries of ``correct`` (float [n]: 1, 0, or NaN
    for a question the condition did not run); NaN when none is defined."""
    c = np.asarray(correct, dtype=float)
    c = c[~np.isnan(c)]
    return float(c.mean() * 100) if c.size else float("nan")


def paired(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The questions both conditions ran: (num [k], den [k]) of float correctness.

    Both accuracies of a metric must come from the same questions (e.g. rho only
    where a human frame exists), or the gain mixes question sets."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {num.shape} vs {den.shape}")
    keep = ~np.isnan(num) & ~np.isnan(den)
    return num[keep], den[keep]


def gain(num: np.ndarray, den: np.ndarray, name: str = "relative gain", where: str = "") -> float:
    """relative_gain of the accuracies of two per-question correctness arrays [n],
    over the questions both ran."""
    n, d = paired(num, den)
    return relative_gain(accuracy(n), accuracy(d), name, where)


def average_over_models(values: Sequence[float], name: str = "metric", where: str = "") -> float:
    """Mean of per-model metric values. Undefined (NaN) if any model's value is:
    dropping a model silently would change what the average is of."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return float("nan")
    if np.isnan(v).any():
        warnings.warn(f"average of {name} over models is undefined{_where(where)}: "
                      f"{int(np.isnan(v).sum())} of {v.size} models have it undefined", UndefinedMetricWarning,
                      stacklevel=2)
        return float("nan")
    return float(v.mean())


def bootstrap_gain(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a relative gain, averaged over models.

    pairs: one (num [n_i], den [n_i]) per model, per-question correctness of the
           numerator and denominator conditions (NaN entries dropped pairwise).
           Questions are resampled with replacement within each model, keeping
           each question's two outcomes together; the statistic is the mean over
           models of (A_num - A_den) / A_den * 100 (a single model: its own gain).
    Resamples whose denominator accuracy is 0 are left out (the metric is
    undefined there); if more than half are, the interval is (NaN, NaN).
    Returns (lo, hi).
    """
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    valid = np.ones(n_boot, dtype=bool)
    for num, den in pairs:
        n, d = paired(num, den)
        if n.size == 0:
            return float("nan"), float("nan")
        idx = rng.integers(0, n.size, size=(n_boot, n.size))
        a_n, a_d = n[idx].mean(1), d[idx].mean(1)
        ok = a_d > 0
        valid &= ok
        stats += np.where(ok, (a_n - a_d) / np.where(ok, a_d, 1.0) * 100.0, 0.0)
    if valid.sum() * 2 < n_boot:
        return float("nan"), float("nan")
    s = stats[valid] / len(pairs)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of 100 * mean(x) over the defined entries of x [n]."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1) * 100
    alpha = (1 - level) / 2
    lo, hi = np.quantile(m, [alpha, 1 - alpha])
    return float(lo), float(hi)


# -- inside the model ---------------------------------------------------------

def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a, b) along the last axis: a, b [..., d] -> [...]. A zero vector
    gives NaN (its direction is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (a * b).sum(-1) / (na * nb)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n
    inputs: x [n, d1], y [n, d2] -> a number in [0, 1] (1: the same up to rotation
    and isotropic scale). NaN when n < 2 or one side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        return float("nan")
    x = x - x.mean(0)
    y = y - y.mean(0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):  # Gram form: n x n is the smaller product
        kx, ky = x @ x.T, y @ y.T
        num, dx, dy = (kx * ky).sum(), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        num = np.linalg.norm(x.T @ y) ** 2
        dx, dy = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if dx == 0 or dy == 0:
        return float("nan")
    return float(num / (dx * dy))
