"""Figure style shared by every analysis (the papers' look: serif font, light
grid, grey zero line, mean with a shaded band), and small helpers:

- ``STYLE``: rcParams, with TrueType fonts embedded in PDFs (fonttype 42);
- ``COLORS``: the Okabe-Ito palette (safe for colour-blind readers), and
  ``MARKERS`` to tell apart more lines than colours;
- ``words``: identifiers such as ``order3`` or ``video_question`` as words;
- ``interval``: the mean and a 95% bootstrap (or t) interval of the mean,
  clipped to the quantity's physical range; ``band`` draws it, ``BAND_NOTE``
  says what it is;
- ``n_note``: the number of samples written in a panel's corner;
- ``panels``: a grid of panels sized for a total width (3.3 in = one column
  of a two-column paper, 7 in = full width).
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "font.family": "serif",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType fonts embedded in the PDF (not Type 3)
    "ps.fonttype": 42,
}
# Okabe & Ito (2008), "Color Universal Design": blue, vermillion, bluish green,
# orange, reddish purple, sky blue, black, yellow (last: faint on white).
COLORS = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
COLUMN, FULL = 3.3, 7.0  # inches: one column / the full width of a two-column paper
LEVEL = 0.95
BAND_NOTE = "shaded: 95% bootstrap interval of the mean"
CHANCE = "chance"

_WORDS = {
    # tasks
    "order3": "order of three", "order": "order of two", "size_change": "size change",
    "static_color": "static colour", "ground_position": "grounding: position", "ground_color": "grounding: colour",
    "ground_size": "grounding: size", "when": "when", "referring": "referring", "brightness": "brightness",
    # flow's edges
    "cross_frame": "cross-frame", "video_question": "video -/-> question", "video_last": "video -/-> last",
    "question_last": "question -/-> last", "last_last": "last -/-> last",
    # conditions
    "single_middle": "middle frame", "single_random": "random frame", "single_human": "frame chosen by people",
    "all": "all",
}


def words(name) -> str:
    """An identifier as words: the known ones from a table ('order3' -> 'order
    of three', 'video_question' -> 'video -/-> question'), an edge 'a->b' as
    'a -/-> b', otherwise underscores become spaces."""
    name = str(name)
    if name in _WORDS:
        return _WORDS[name]
    if "->" in name and "-/->" not in name:
        return re.sub(r"\s*->\s*", " -/-> ", name).replace("_", " ")
    return name.replace("_", " ")


def interval(x, axis: int = 0, limits: tuple[float, float] | None = None, method: str = "bootstrap",
             level: float = LEVEL, n_boot: int = 2000, seed: int = 0):
    """Mean, lower, upper bound of a ``level`` interval of the mean over
    ``axis`` (NaNs ignored), and the count n of finite values. ``method``:
    'bootstrap' (percentile interval, seeded: the same figure each time) or
    't' (Student's t). The bounds are clipped to ``limits`` (the quantity's
    physical range, e.g. (0, 1) for a probability, (-100, None) for a %
    change). With one value the interval is that value; with none, NaN."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, 0)
    shape = x.shape[1:]
    flat = x.reshape(x.shape[0], -1)
    m, lo, hi = (np.full(flat.shape[1], np.nan) for _ in range(3))
    n = np.sum(np.isfinite(flat), axis=0)
    rng = np.random.default_rng(seed)
    a = (1 - level) / 2
    if method not in ("bootstrap", "t"):
        raise ValueError(f"method must be 'bootstrap' or 't', got {method!r}")
    full = np.isfinite(flat).all(0)  # columns without NaN: resampled together (the same draws)
    if method == "bootstrap" and full.any() and flat.shape[0] > 1:
        v = flat[:, full]
        idx = rng.integers(0, v.shape[0], (n_boot, v.shape[0]))
        means = v[idx].mean(1)  # [n_boot, columns]
        m[full] = v.mean(0)
        lo[full], hi[full] = np.quantile(means, [a, 1 - a], axis=0)
    for j in range(flat.shape[1]):
        if method == "bootstrap" and full[j] and flat.shape[0] > 1:
            continue
        v = flat[:, j][np.isfinite(flat[:, j])]
        if not len(v):
            continue
        m[j] = v.mean()
        if len(v) == 1 or np.all(v == v[0]):
            lo[j] = hi[j] = m[j]
        elif method == "t":
            from scipy import stats

            h = stats.t.ppf(1 - a, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            lo[j], hi[j] = m[j] - h, m[j] + h
        else:
            means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
            lo[j], hi[j] = np.quantile(means, [a, 1 - a])
    if limits is not None:
        lo, hi = np.clip(lo, *limits), np.clip(hi, *limits)
    return m.reshape(shape), lo.reshape(shape), hi.reshape(shape), n.reshape(shape)


def mean_ci(x: np.ndarray, axis: int = 0, limits: tuple[float, float] | None = None):
    """Mean and its 95% bootstrap interval over ``axis`` (see ``interval``)."""
    m, lo, hi, _ = interval(x, axis, limits)
    return m, lo, hi


def band(ax, x, samples: np.ndarray, label: str, color: str, limits: tuple[float, float] | None = None,
         marker: str | None = None, ls: str = "-", offset: float = 0.0, mark_start: int = 0, **kw) -> int:
    """A mean line with its 95% bootstrap band clipped to ``limits``;
    ``samples`` is [n, len(x)]. ``marker`` (every few points, from
    ``mark_start``: lines that coincide show their markers side by side) and a
    small x ``offset`` keep lines that coincide visible. Returns the largest n
    over x."""
    m, lo, hi, n = interval(samples, 0, limits)
    x = np.asarray(x, dtype=float) + offset
    every = max(1, len(x) // 12)
    ax.plot(x, m, color=color, label=label, lw=1.2, ls=ls, marker=marker, ms=3 if marker else None,
            markevery=(mark_start % every, every) if marker else None, **kw)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    return int(np.max(n)) if np.size(n) else 0


def n_note(ax, n, loc: str = "lower right") -> None:
    """'n = ...' in a corner of the panel (n: a count or a text)."""
    x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
    y, va = (0.02, "bottom") if "lower" in loc else (0.98, "top")
    ax.text(x, y, f"n = {n}", transform=ax.transAxes, ha=ha, va=va, fontsize=6.5, color="0.25")


def chance_line(ax, y: float, **kw):
    """A dotted grey horizontal line labelled 'chance' (in the legend)."""
    return ax.axhline(y, color="0.45", lw=0.9, ls=":", label=CHANCE, **kw)


def panels(n: int, width: float | None = None, height: float = 2.0, ncols: int | None = None,
           sharey: bool = False, min_panel: float = 1.55):
    """A grid of n panels, ``width`` inches wide in all (default: full width;
    ``COLUMN`` for one column), as many columns as fit ``min_panel`` inches
    each (at most 5), ``height`` inches a row; panels of the same quantity
    share their y-axis with ``sharey``."""
    plt.rcParams.update(STYLE)
    width = FULL if width is None else width
    if ncols is None:
        ncols = max(1, min(n, 5, int(width // min_panel)))
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False,
                             sharey="all" if sharey else "none")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def save(fig, stem: str | Path) -> list[str]:
    """Write ``stem``.png and ``stem``.pdf (fonts embedded); returns the paths."""
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(stem.with_suffix(".png")), str(stem.with_suffix(".pdf"))]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths
