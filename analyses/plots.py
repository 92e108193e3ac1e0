"""Figure style shared by every analysis (the papers' look: serif font, light
grid, grey zero line, mean with a shaded 95% band), and small helpers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "font.family": "serif",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": 150,
    "savefig.bbox": "tight",
}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def mean_ci(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and a normal-approximation 95% interval over ``axis`` (NaNs ignored)."""
    x = np.asarray(x, dtype=float)
    n = np.sum(~np.isnan(x), axis=axis)
    m = np.nanmean(x, axis=axis)
    se = np.nanstd(x, axis=axis, ddof=1) / np.sqrt(np.maximum(n, 1)) if x.shape[axis] > 1 else np.zeros_like(m)
    se = np.nan_to_num(se)
    return m, m - 1.96 * se, m + 1.96 * se


def band(ax, x, samples: np.ndarray, label: str, color: str) -> None:
    """A mean line with its 95% band; ``samples`` is [n, len(x)]."""
    m, lo, hi = mean_ci(samples, axis=0)
    ax.plot(x, m, color=color, label=label, lw=1.4)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def panels(n: int, width: float = 2.6, height: float = 2.2, ncols: int | None = None):
    plt.rcParams.update(STYLE)
    ncols = ncols or min(n, 5)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def save(fig, stem: str | Path) -> list[str]:
    """Write ``stem``.png and ``stem``.pdf; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(stem.with_suffix(".png")), str(stem.with_suffix(".pdf"))]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths
