"""T3's figures, drawn from an ``analyses.t3.T3Result`` (``load_results``; no
model needed): probe accuracy by stage and layer against the model's own
answers, and the paper's bar chart by aspect.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses.t3 import T3Result

def plot_layers(res: T3Result):
    """Probe accuracy against stage/layer, one panel per task: frames
    concatenated and last position (mean, 95% band over seeds), the same
    probes on the control task dashed (selectivity is the gap), the model's
    video and text accuracies as horizontal lines, chance dotted."""
    from analyses.plots import COLORS as C, band, panels

    fig, axes = panels(len(res.tasks), width=3.1, height=2.3, ncols=3)
    x = np.arange(len(res.stages))
    for i, (ax, t) in enumerate(zip(axes, res.tasks)):
        ax.axvspan(-0.5, 1.5, color="0.92", lw=0, zorder=0)  # the vision side: encoder and projector
        ax.text(0.5, 2, "vision", ha="center", va="bottom", fontsize=6.5, color="0.35")
        ax.text(1.5 + len(res.stages[2:]) / 2, 2, "LLM", ha="center", va="bottom", fontsize=6.5, color="0.35")
        band(ax, x, 100 * res.probe_frames[i], "probe: video positions (frames concatenated)", C[0])
        band(ax, x[2:], 100 * res.probe_last[i][:, 2:], "probe: last position", C[2])
        if np.isfinite(res.control_frames[i]).any():
            ax.plot(x, 100 * res.control_frames[i].mean(0), color=C[0], lw=1, ls="--",
                    label="control task: video positions")
            ax.plot(x[2:], 100 * res.control_last[i][:, 2:].mean(0), color=C[2], lw=1, ls="--",
                    label="control task: last position")
        ax.axhline(100 * res.video_acc[i], color=C[1], lw=1.2, label="model, video")
        ax.axhline(100 * res.text_acc[i], color=C[3], lw=1.2, ls="--", label="model, captions (text)")
        ax.axhline(100 * res.chance[i], color="0.5", lw=0.8, ls=":", label="chance")
        ax.set_title(t)
        ax.set_ylim(0, 102)
        ax.set_xticks(x, ["enc", "proj", *[s.split()[-1] for s in res.stages[2:]]], fontsize=7)
        ax.set_xlabel("stage / LLM layer")
        ax.set_ylabel("accuracy (%)")
    h, lab = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8,
               title=f"T3 probes vs answers: {res.model}", title_fontsize=9)
    return fig


def plot_aspects(res: T3Result):
    """The T3 bar chart: per aspect, the model with the video, its LLM with the
    captions, and probes (projector output; last layer at the last position);
    probe bars show the 95% interval over seeds, the dotted line chance."""
    import matplotlib.pyplot as plt

    from analyses.plots import COLORS as C, STYLE, mean_ci

    plt.rcParams.update(STYLE)
    asp = res.aspects()
    names = list(asp)
    bars = [("video", "model, video", C[1]), ("text", "model, captions", C[3]),
            ("probe_projector", "probe, projector", C[0]), ("probe_last_layer", "probe, last layer", C[2])]
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names), 2.6))
    w = 0.8 / len(bars)
    for j, (k, label, color) in enumerate(bars):
        xs = np.arange(len(names)) + (j - (len(bars) - 1) / 2) * w
        vals = [asp[a][k] for a in names]
        if np.ndim(vals[0]) and len(res.seeds) > 1:  # per-seed values: mean and interval
            m, lo, hi = (np.array(v) for v in zip(*[mean_ci(100 * np.asarray(v)) for v in vals]))
            ax.bar(xs, m, w, color=color, label=label, yerr=[m - lo, hi - m], capsize=2,
                   error_kw={"lw": 0.8})
        else:
            ax.bar(xs, [100 * np.mean(v) for v in vals], w, color=color, label=label)
    for i, a in enumerate(names):
        ax.hlines(100 * asp[a]["chance"], i - 0.45, i + 0.45, colors="0.3", linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8,
              title=f"T3 by aspect: {res.model}", title_fontsize=9)
    fig.tight_layout()
    return fig


def save_figures(res: T3Result, folder) -> list[str]:
    """t3_layers and t3_aspects as PNG and PDF in folder; returns the paths."""
    from analyses.plots import save

    folder = Path(folder)
    return save(plot_layers(res), folder / "t3_layers") + save(plot_aspects(res), folder / "t3_aspects")


