"""All-layer probe sweep: TorchProbe (every layer as one batched fit) against a
loop of scikit-learn fits (SklearnProbe) on the same train/test split, CV folds
and C grid.

    python -m bench.probes                      # 12 layers x 4096 x 3000 samples, ~3 minutes
    python -m bench.probes --full               # 33 layers: a 7B model's sweep, ~15 minutes
    python -m bench.probes --layers 8 --width 512 --samples 1000

Data: a planted linear signal whose strength rises and falls with depth (test
accuracy from near chance to ~85%), inside anisotropic features (a decaying
rank-64 spectrum plus isotropic noise, as residual streams look after
standardisation).

Timing on a shared machine: the scikit-learn loop is split into `--rounds`
groups of layers, and each group runs right after one full TorchProbe fit, so
both sides see the same load; the sklearn time is the sum over groups, the
torch time the median over rounds. Both run with the same thread count
(default 1, which is robust to other processes; CPU seconds are printed too).
Prints each side's time, the speedup, and the largest per-layer test-accuracy
difference in points. Target: >= 10x faster, within 1 point.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def planted(L: int, N: int, D: int, K: int = 3, seed: int = 0, rank: int = 64):
    """Features [L, N, D] float32 and labels [N]: a class signal in 8 of `rank`
    latent directions, whose strength follows a bump over depth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, N)
    means = rng.standard_normal((K, 8)).astype(np.float32)
    mix = rng.standard_normal((rank, D)).astype(np.float32) / np.sqrt(rank)
    spectrum = (3.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
    X = np.empty((L, N, D), np.float32)
    for l in range(L):
        strength = 0.05 + 0.35 * np.sin(np.pi * (l + 0.5) / L) ** 2
        lat = rng.standard_normal((N, rank), dtype=np.float32) * spectrum
        lat[:, :8] += strength * 3.0 * means[y]
        X[l] = lat @ mix + rng.standard_normal((N, D), dtype=np.float32)
    return X, y


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    from analyses.cli import RawHelpFormatter

    p = argparse.ArgumentParser(prog="python -m bench.probes", description=__doc__, formatter_class=RawHelpFormatter)
    p.add_argument("--layers", type=int, default=12, help="layers of planted features, one probe per layer")
    p.add_argument("--width", type=int, default=4096, help="feature width (a residual stream's hidden size)")
    p.add_argument("--samples", type=int, default=3000, help="samples, train + test (2/3 train)")
    p.add_argument("--classes", type=int, default=3, help="classes of the planted label")
    p.add_argument("--cv", type=int, default=3, help="cross-validation folds choosing C on the training part")
    p.add_argument("--full", action="store_true",
                   help="a 7B model's sweep: 33 layers x width 4096 x 3000 samples (overrides the three)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, the same for both sides")
    p.add_argument("--rounds", type=int, default=3, help="interleavings of the two sides (see above)")
    p.add_argument("--seed", type=int, default=0, help="seed of the planted data and of the CV folds")
    a = p.parse_args(argv)
    if a.full:
        a.layers, a.width, a.samples = 33, 4096, 3000

    import torch
    from threadpoolctl import threadpool_limits

    from probes.linear import DEFAULT_CS
    from probes.sklearn_probe import SklearnProbe
    from probes.torch_probe import TorchProbe
    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)

    X, y = planted(a.layers, a.samples, a.width, a.classes, a.seed)
    n_tr = 2 * a.samples // 3
    Xtr, ytr, Xte, yte = X[:, :n_tr], y[:n_tr], X[:, n_tr:], y[n_tr:]
    print(f"{a.layers} layers x width {a.width}, {n_tr} train / {a.samples - n_tr} test, K={a.classes}, "
          f"Cs={np.round(DEFAULT_CS, 4).tolist()}, cv={a.cv}, threads={a.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    L = a.layers
    t_torch, c_torch = [], []
    t_sk = c_sk = 0.0
    acc_s, C_s = np.empty(L), np.empty(L)
    cv_s = None
    for group in np.array_split(np.arange(L), max(1, min(a.rounds, L))):
        tp, t, c = _timed(lambda: TorchProbe(cv=a.cv, random_state=a.seed).fit(Xtr, ytr))
        t_torch.append(t)
        c_torch.append(c)
        sp, t, c = _timed(lambda: SklearnProbe(cv=a.cv, random_state=a.seed).fit(Xtr[group], ytr))
        t_sk += t
        c_sk += c
        acc_s[group], C_s[group] = sp.score(Xte[group], yte), sp.C_
        cv_s = sp.cv_scores_ if cv_s is None else np.concatenate([cv_s, sp.cv_scores_])
    t_torch, c_torch = float(np.median(t_torch)), float(np.median(c_torch))
    acc_t = tp.score(Xte, yte)

    print(f"TorchProbe   {t_torch:8.1f} s wall {c_torch:8.1f} s CPU   (iterations per C step: max "
          f"{tp.n_iter_cv_.max()}, refit: max {tp.n_iter_.max()})")
    print(f"SklearnProbe {t_sk:8.1f} s wall {c_sk:8.1f} s CPU")
    print("test accuracy per layer, torch  :", np.round(100 * acc_t, 1).tolist())
    print("test accuracy per layer, sklearn:", np.round(100 * acc_s, 1).tolist())
    diff = 100 * np.abs(acc_t - acc_s)
    print(f"speedup {t_sk / t_torch:.1f}x wall, {c_sk / c_torch:.1f}x CPU; largest test-accuracy difference "
          f"{diff.max():.2f} points (layer {int(diff.argmax())}); same C on {int((tp.C_ == C_s).sum())}/{L} layers; "
          f"largest CV-score difference {100 * np.abs(tp.cv_scores_ - cv_s).max():.2f} points; "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
