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

def curve_figure(ab, width: float | None = None):
    """Accuracy against frame count, one panel per task (n questions in the
    title; the panels share their y-axis): the uniform curve with a 95%
    bootstrap band within 0-100%, and shuffled / reversed at m and the other
    single frames at 1 (95% bootstrap intervals), chance dotted."""
    from .plots import BAND_NOTE, COLORS, band, chance_line, panels, words

    tasks = group_order(ab.tasks) + ["all"]
    fig, axes = panels(len(tasks), width=width, height=2.1, sharey=True)
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
        band(ax, xs, np.stack(cols, 1), "uniform", COLORS[0], limits=(0, 100))
        m = xs[-1]
        marks = [("shuffled", ab.shuffled_correct(), m, COLORS[1], "o"),
                 ("reversed", ab.correct_of("reversed"), m, COLORS[2], "s"),
                 ("middle frame", ab.correct_of("single_middle"), 1, COLORS[3], "^"),
                 ("random frame", ab.correct_of("single_random"), 1, COLORS[4], "v"),
                 ("frame chosen by people", ab.correct_of("single_human"), 1, COLORS[5], "*")]
        for j, (label, c, x, color, marker) in enumerate(marks):
            x = x * 2 ** (0.07 * (j - 0.5 if j < 2 else j - 3))  # side by side where they coincide
            c = c[mask]
            if np.isnan(c).all():
                continue
            lo, hi = bootstrap_mean(c, 500)
            mu = accuracy(c)
            lo, hi = max(0.0, min(lo, mu)), min(100.0, max(hi, mu))
            ax.errorbar([x], [mu], yerr=[[mu - lo], [hi - mu]], fmt=marker, color=color, ms=4, lw=0.8, label=label)
        chance_line(ax, float(np.mean(100.0 / ab.n_options[mask])))
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) if x == int(x) else f"{x:g}" for x in xs])
        ax.set_ylim(0, 102)
        ax.set_title(f"{words(task)} (n={int(mask.sum())})")
        ax.set_xlabel("frames")
    for ax in axes[::axes[0].get_subplotspec().get_gridspec().ncols]:
        ax.set_ylabel("accuracy (%)")
    fig.tight_layout()
    _legend_above(fig, axes, f"n: questions; line: uniform sampling, {BAND_NOTE}; "
                             "markers: 95% bootstrap intervals")
    return fig


def _legend_above(fig, axes, note: str | None = None) -> None:
    """One legend for all panels above them (every line named once), a note below."""
    import textwrap

    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    w = fig.get_figwidth()
    fig.legend(list(seen.values()), list(seen), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=max(1, min(len(seen), int(w // 1.6))), fontsize=7)
    if note:
        fig.text(0.5, 0.0, textwrap.fill(note, int(w * 17)), ha="center", va="top", fontsize=6.5, color="0.3")


def metrics_figure(rows: list[dict], width: float | None = None):
    """kappa, tau and rho per group with their bootstrap 95% intervals."""
    from .plots import COLORS, COLUMN, panels, words

    width = width or 7.0
    fig, axes = panels(3, width=width, height=0.3 * len(rows) + 1.0, ncols=3 if width > COLUMN + 0.5 else 1)
    labels = [words(r["group"]) if r["model"] in (rows[0]["model"],) else f"{r['model']}: {words(r['group'])}"
              for r in rows]
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
        ax.set_yticks(y, labels if ax is axes[0] or width <= COLUMN + 0.5 else [""] * len(rows))
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(title)
        ax.set_xlabel("%")
    for ax in axes if width <= COLUMN + 0.5 else axes[:1]:
        ax.set_ylabel("task")
    fig.tight_layout()
    fig.text(0.5, 0.0, "dot: the metric; whiskers: its 95% bootstrap interval (questions resampled)", ha="center",
             va="top", fontsize=6.5, color="0.3")
    return fig


def _palette(n: int) -> list[tuple]:
    """n distinguishable (colour, line style, marker): the colour-blind-safe
    house colours, then the same colours with another line style and marker
    (no light/dark pairs of one hue)."""
    from .plots import COLORS, LINESTYLES, MARKERS

    k = len(COLORS) - 2  # black (the all-question lines) and yellow (faint on white) left out
    return [(COLORS[i % k], LINESTYLES[(i // k) % len(LINESTYLES)], MARKERS[(i // k) % len(MARKERS)])
            for i in range(n)]


def layers_figure(ab, width: float | None = None):
    """Order sensitivity against layer: the last position's cosine distance from
    the ordered run (shuffled, averaged over seeds; reversed), per task with a 95%
    band, and 1 - linear CKA over all questions."""
    from .plots import BAND_NOTE, band, panels, words

    if not ab.cos:
        raise ValueError(f"run of {ab.model!r} holds no residual-stream measurements (run without --no-internals)")
    shuf = [n for n in ab.cos if n.startswith("shuffled")]
    kinds = ([("shuffled", np.mean([ab.cos[n] for n in shuf], 0), shuf)] if shuf else []) + \
            ([("reversed", ab.cos["reversed"], ["reversed"])] if "reversed" in ab.cos else [])
    fig, axes = panels(len(kinds) + 1, width=width, height=2.1)
    x = np.array(ab.layers)
    tasks = group_order(ab.tasks)
    pal = _palette(len(tasks))
    for ax, (label, cos, _) in zip(axes, kinds):
        for t, task in enumerate(tasks):
            c, ls, mk = pal[t]
            band(ax, x, cos[ab.tasks == task], f"{words(task)} (n={int((ab.tasks == task).sum())})", c,
                 limits=(0, 2), ls=ls, marker=mk if len(tasks) > 7 else None, mark_start=t)
        ax.set_title(f"{label}: 1 − cos to ordered")
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine distance (last position)")
    if len(kinds) > 1:  # the cosine panels show one quantity: one y-axis
        lims = [a.get_ylim() for a in axes[:-1]]
        for a in axes[:-1]:
            a.set_ylim(min(l[0] for l in lims), max(l[1] for l in lims))
    ax = axes[-1]
    for j, (label, _, names) in enumerate(kinds):
        ax.plot(x, 1 - np.mean([ab.cka[n] for n in names], 0), color="k", ls=["-", "--"][j % 2],
                label=f"{label}, all questions", marker="o", ms=3)
    if shuf:  # within a task (>= 8 questions): order is then the only thing that differs between the runs
        per = 1 - np.mean([ab.cka_task[n] for n in shuf], 0)
        for t, task in enumerate(tasks):
            if not np.isnan(per[t]).all():
                c, ls, _ = pal[t]
                ax.plot(x, per[t], color=c, ls=ls, lw=0.9, label=f"{words(task)} (n={int((ab.tasks == task).sum())})")
    ax.set_title("1 − linear CKA to ordered")
    ax.set_xlabel("layer")
    ax.set_ylabel("1 − linear CKA")
    step = max(1, -(-len(x) // 8))
    for a in axes:
        a.set_xticks(x[::step])
    fig.tight_layout()
    _legend_above(fig, axes, f"n: questions per task; line: mean, {BAND_NOTE}; CKA panel: black over all "
                             "questions, thin coloured lines within each task (shuffled)")
    return fig


def write_figures(ab, rows: list[dict], folder: str | Path) -> list[str]:
    """Save the three figures as <folder>/curve, metrics and layers (.png and .pdf)."""
    from .plots import save

    folder = Path(folder)
    paths = save(curve_figure(ab), folder / "curve") + save(metrics_figure(rows), folder / "metrics")
    if ab.cos:
        paths += save(layers_figure(ab), folder / "layers")
    return paths
