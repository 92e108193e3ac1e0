"""TOMATO's figures, drawn from an ``analyses.tomato.Ablation`` and the
metric rows of ``analyses.tomato_metrics.metric_rows`` (no model needed):
the accuracy-by-frame-count curves, the metrics per task, the residual
stream's order sensitivity by layer.

    from analyses import tomato, tomato_figures, tomato_metrics
    ab = tomato.load_results("cache/tomato-organism-synthetic.h5")
    tomato_figures.curve_figure(ab)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses.tomato_metrics import accuracy, bootstrap_mean, group_order

def curve_figure(ab):
    """Accuracy against frame count, one panel per task: the uniform curve with
    a 95% band, and shuffled / reversed at m and the other single frames at 1."""
    from .plots import COLORS, band, panels

    tasks = group_order(ab.tasks) + ["all"]
    fig, axes = panels(len(tasks), height=2.5)
    curve = ab.curve()
    for ax, task in zip(axes, tasks):
        mask = np.ones(len(ab.ids), bool) if task == "all" else ab.tasks == task
        xs, cols = [], []
        for k, name in curve:
            x = float(np.median(ab.effective_frames(name)[mask]))
            if xs and x <= xs[-1]:
                continue  # a nominal count past the videos' length repeats the last point
            xs.append(x)
            cols.append(ab.correct_of(name)[mask] * 100)
        band(ax, xs, np.stack(cols, 1), "uniform", COLORS[0])
        m = xs[-1]
        marks = [("shuffled", ab.shuffled_correct(), m, COLORS[1], "o"),
                 ("reversed", ab.correct_of("reversed"), m, COLORS[2], "s"),
                 ("middle", ab.correct_of("single_middle"), 1, COLORS[3], "^"),
                 ("random", ab.correct_of("single_random"), 1, COLORS[4], "v"),
                 ("human", ab.correct_of("single_human"), 1, COLORS[5], "*")]
        for label, c, x, color, marker in marks:
            c = c[mask]
            if np.isnan(c).all():
                continue
            lo, hi = bootstrap_mean(c, 500)
            mu = accuracy(c)
            ax.errorbar([x], [mu], yerr=[[mu - lo], [hi - mu]], fmt=marker, color=color, ms=4, lw=0.8, label=label)
        chance = float(np.mean(100.0 / ab.n_options[mask]))
        ax.axhline(chance, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) if x == int(x) else f"{x:g}" for x in xs])
        ax.set_ylim(0, 102)
        ax.set_title(task)
        ax.set_xlabel("frames")
    axes[0].set_ylabel("accuracy (%)")
    _legend_right(fig, axes)
    fig.tight_layout()
    return fig


def _legend_right(fig, axes) -> None:
    """One legend for all panels, outside them on the right (no line hidden under it)."""
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)


def metrics_figure(rows: list[dict]):
    """kappa, tau and rho per group with their bootstrap 95% intervals."""
    from .plots import COLORS, panels

    fig, axes = panels(3, width=2.8, height=0.35 * len(rows) + 1.0)
    labels = [r["group"] if r["model"] in (rows[0]["model"],) else f"{r['model']}: {r['group']}" for r in rows]
    y = np.arange(len(rows))[::-1]
    for ax, (k, title), color in zip(axes, [("kappa", "κ multi-frame gain"), ("tau", "τ order sensitivity"),
                                            ("rho", "ρ information disparity")], COLORS):
        v = np.array([r[k] for r in rows], dtype=float)
        lo = np.array([r[f"{k}_lo"] for r in rows], dtype=float)
        hi = np.array([r[f"{k}_hi"] for r in rows], dtype=float)
        ok = ~np.isnan(v)
        err = np.stack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        # A dot and its interval (not a bar): a gain of 0 must be visible too.
        ax.errorbar(v[ok], y[ok], xerr=err[:, ok], fmt="o", color=color, ms=4, lw=1.0, capsize=2)
        for yy in y[~ok]:
            ax.text(0, yy, " undefined", va="center", fontsize=6, color="grey")
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(rows))
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(title)
        ax.set_xlabel("%")
    fig.tight_layout()
    return fig


def _palette(n: int) -> list:
    """n distinguishable colours: the house colours, or tab20 beyond them."""
    from .plots import COLORS

    if n <= len(COLORS):
        return COLORS[:n]
    import matplotlib

    return [matplotlib.colormaps["tab20"](i % 20) for i in range(n)]


def layers_figure(ab):
    """Order sensitivity against layer: the last position's cosine distance from
    the ordered run (shuffled, averaged over seeds; reversed), per task with a 95%
    band, and 1 - linear CKA over all questions."""
    from .plots import band, panels

    if not ab.cos:
        raise ValueError(f"run of {ab.model!r} holds no residual-stream measurements (run without --no-internals)")
    shuf = [n for n in ab.cos if n.startswith("shuffled")]
    kinds = ([("shuffled", np.mean([ab.cos[n] for n in shuf], 0), shuf)] if shuf else []) + \
            ([("reversed", ab.cos["reversed"], ["reversed"])] if "reversed" in ab.cos else [])
    fig, axes = panels(len(kinds) + 1, width=2.8)
    x = np.array(ab.layers)
    tasks = group_order(ab.tasks)
    pal = _palette(len(tasks))
    for ax, (label, cos, _) in zip(axes, kinds):
        for t, task in enumerate(tasks):
            band(ax, x, cos[ab.tasks == task], task, pal[t])
        ax.set_title(f"{label}: 1 − cos to ordered")
        ax.set_xlabel("layer")
    axes[0].set_ylabel("cosine distance (last position)")
    _legend_right(fig, axes[:1])
    ax = axes[-1]
    for j, (label, _, names) in enumerate(kinds):
        ax.plot(x, 1 - np.mean([ab.cka[n] for n in names], 0), color="k", ls=["-", "--"][j % 2],
                label=f"{label}, all questions", marker="o", ms=3)
    if shuf:  # within a task (>= 8 questions): order is then the only thing that differs between the runs
        per = 1 - np.mean([ab.cka_task[n] for n in shuf], 0)
        for t, task in enumerate(tasks):
            if not np.isnan(per[t]).all():
                ax.plot(x, per[t], color=pal[t], lw=0.9)
    ax.set_title("1 − linear CKA to ordered")
    ax.set_xlabel("layer")
    ax.legend(fontsize=6)
    for a in axes:
        a.set_xticks(x)
    fig.tight_layout()
    return fig


def write_figures(ab, rows: list[dict], folder: str | Path) -> list[str]:
    """Save the three figures as <folder>/curve, metrics and layers (.png and .pdf)."""
    from .plots import save

    folder = Path(folder)
    paths = save(curve_figure(ab), folder / "curve") + save(metrics_figure(rows), folder / "metrics")
    if ab.cos:
        paths += save(layers_figure(ab), folder / "layers")
    return paths
