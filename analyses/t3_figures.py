"""T3's figures, drawn from an ``analyses.t3.T3Result`` (``load_results``; no
model needed): probe accuracy by stage and layer against the model's own
answers, and the paper's bar chart by aspect.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses.t3_results import T3Result

def plot_layers(res: T3Result, width: float | None = None):
    """Probe accuracy against stage/layer, one panel per task (the panels
    sharing their y-axis; test questions n and how many of them have an
    input type that recurs in training in the title): frames concatenated
    and last position (mean, 95% bootstrap band over seeds, within 0-100%,
    all test questions), the same probes on the control task dashed, scored
    on the recurring test questions only (a control label can be memorised
    only for a type seen in training; the table's selectivity compares the
    probe on those same questions), the model's video and text accuracies as
    horizontal lines, chance dotted.
    Lines that coincide (several at 100%) keep apart by their markers and a
    small horizontal offset."""
    from analyses.plots import BAND_NOTE, COLORS as C, band, chance_line, panels, words

    fig, axes = panels(len(res.tasks), width=width, height=2.1, sharey=True)
    x = np.arange(len(res.stages))
    lim = (0.0, 100.0)
    for i, (ax, t) in enumerate(zip(axes, res.tasks)):
        ax.axvspan(-0.5, 1.5, color="0.92", lw=0, zorder=0)  # the vision side: encoder and projector
        ax.text(0.5, 2, "vision", ha="center", va="bottom", fontsize=6, color="0.35")
        ax.text(1.5 + len(res.stages[2:]) / 2, 2, "LLM", ha="center", va="bottom", fontsize=6, color="0.35")
        band(ax, x, 100 * res.probe_frames[i], "probe: video positions (frames concatenated)", C[0], limits=lim,
             marker="o", offset=-0.08)
        band(ax, x[2:], 100 * res.probe_last[i][:, 2:], "probe: last position", C[2], limits=lim, marker="s",
             offset=0.08, mark_start=1)
        if np.isfinite(res.control_frames_recurring[i]).any():
            ax.plot(x - 0.08, 100 * res.control_frames_recurring[i].mean(0), color=C[0], lw=1, ls="--",
                    label="control task: video positions (recurring types)")
        if np.isfinite(res.control_last_recurring[i][:, 2:]).any():
            ax.plot(x[2:] + 0.08, 100 * res.control_last_recurring[i][:, 2:].mean(0), color=C[2], lw=1,
                    ls="--", label="control task: last position (recurring types)")
        ax.axhline(100 * res.video_acc[i], color=C[1], lw=1.2, label="model, video")
        ax.axhline(100 * res.text_acc[i], color=C[3], lw=1.2, ls=(0, (4, 2)), label="model, captions (text)")
        chance_line(ax, 100 * res.chance[i])
        rec = f", {int(res.n_recurring[i])} recurring" if res.n_recurring[i] >= 0 else ""
        ax.set_title(f"{words(t)} (n={int(res.n_test[i])}{rec})")
        ax.set_ylim(0, 104)
        step = max(1, -(-len(x) // 8))
        ax.set_xticks(x[::step], ["enc", "proj", *[s.split()[-1] for s in res.stages[2:]]][::step], fontsize=6)
        ax.set_xlabel("stage / LLM layer")
    ncols = axes[0].get_subplotspec().get_gridspec().ncols
    for ax in axes[::ncols]:
        ax.set_ylabel("accuracy (%)")
    import textwrap

    h, lab = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    w = fig.get_figwidth()
    fig.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(1, min(3, int(w // 2.2))),
               fontsize=7, title=f"T3 probes vs answers: {res.model}", title_fontsize=8)
    note = (f"n: test questions; recurring: those whose input type occurs in training, on which the dashed "
            f"control lines are scored; probe lines: mean over {len(res.seeds)} seeds, {BAND_NOTE}; lines at the "
            "same value are drawn side by side (markers, offset).")
    fig.text(0.5, 0.0, textwrap.fill(note, int(w * 17)), ha="center", va="top", fontsize=6.5, color="0.3")
    return fig


def plot_aspects(res: T3Result, width: float | None = None):
    """The T3 bar chart: per aspect, the model with the video, its LLM with the
    captions, and probes (projector output; last layer at the last position);
    probe bars show the 95% bootstrap interval over seeds (within 0-100%), the
    dotted line chance."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from analyses.plots import COLORS as C, STYLE, interval, words

    plt.rcParams.update(STYLE)
    asp = res.aspects()
    names = list(asp)
    bars = [("video", "model, video", C[1]), ("text", "model, captions", C[3]),
            ("probe_projector", "probe, projector", C[0]), ("probe_last_layer", "probe, last layer", C[2])]
    width = width or min(7.0, max(3.3, 1.0 + 1.1 * len(names)))
    fig, ax = plt.subplots(figsize=(width, 2.5))
    w = 0.8 / len(bars)
    for j, (k, label, color) in enumerate(bars):
        xs = np.arange(len(names)) + (j - (len(bars) - 1) / 2) * w
        vals = [asp[a][k] for a in names]
        if np.ndim(vals[0]) and len(res.seeds) > 1:  # per-seed values: mean and interval
            m, lo, hi = (np.array(v) for v in zip(*[interval(100 * np.asarray(v), limits=(0, 100))[:3]
                                                     for v in vals]))
            ax.bar(xs, m, w, color=color, label=label + " (95% bootstrap over seeds)", yerr=[m - lo, hi - m],
                   capsize=2, error_kw={"lw": 0.8})
        else:
            ax.bar(xs, [100 * np.mean(v) for v in vals], w, color=color, label=label)
    for i, a in enumerate(names):
        ax.hlines(100 * asp[a]["chance"], i - 0.45, i + 0.45, colors="0.3", linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(names)), [words(a) for a in names])
    ax.set_xlabel("aspect")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    h, lab = ax.get_legend_handles_labels()
    h.append(Line2D([], [], color="0.3", ls=":", lw=1))
    lab.append("chance")
    ax.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2 if width >= 5 else 1, fontsize=7,
              title=f"T3 by aspect: {res.model}", title_fontsize=8)
    fig.tight_layout()
    return fig


def save_figures(res: T3Result, folder) -> list[str]:
    """t3_layers and t3_aspects as PNG and PDF in folder; returns the paths."""
    from analyses.plots import save

    folder = Path(folder)
    return save(plot_layers(res), folder / "t3_layers") + save(plot_aspects(res), folder / "t3_aspects")


