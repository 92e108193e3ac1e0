"""Map the Flow's figures and tables, drawn from ``analyses.flow.load_results``
(no model needed): the flow maps per task, the accuracy after knockout, the
layer-wise answer probability, the effective pathways.

    from analyses import flow, flow_figures
    res = flow.load_results("cache/flow-organism-synthetic.h5")
    print(flow_figures.table(res)); flow_figures.plot_flow(res)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses.flow import EDGE_LABELS, accuracy_rows, clean_accuracy


def _legend(fig, axes, title, caption: str | None = None):
    h, lab = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(lab), 4), fontsize=8,
               title=title, title_fontsize=9)
    if caption:
        import textwrap

        fig.text(0.5, 0.0, textwrap.fill(caption, int(fig.get_figwidth() * 17)), ha="center", va="top", fontsize=7,
                 color="0.3")


def window_label(center: int, k: int, n_layers: int) -> str:
    """The layers (1-indexed, inclusive) the window of size k around
    ``center`` (0-indexed) cuts: 'a-b', or 'a' for one layer."""
    from tracing.knockout import window

    w = window(center, k, n_layers)
    return f"{w[0] + 1}" if len(w) == 1 else f"{w[0] + 1}-{w[-1] + 1}"


def _window_axis(ax, n_layers: int, k: int) -> None:
    """x = window centre 1..L, each tick labelled with the layers it cuts."""
    x = np.arange(1, n_layers + 1)
    step = max(1, -(-n_layers // 12))  # at most ~12 labels
    ax.set_xticks(x[::step], [window_label(c - 1, k, n_layers) for c in x[::step]], fontsize=6,
                  rotation=90 if k > 1 else 0)
    ax.set_xlabel(f"layers cut (window of {k})")


def caption(res: dict, accuracy: bool = False) -> str:
    """Which answer rule, samples and accuracy denominator the figure shows."""
    rule = {"vocabulary": "argmax over the vocabulary (right only if the true letter)",
            "letters": "argmax over the option letters"}[res.get("answer_from", "letters")]
    samples = (res.get("config") or {}).get("samples")
    text = f"answer: {rule}" + {"correct": "; samples: answered correctly", "all": "; samples: all"}.get(samples, "")
    if accuracy:
        text += {"all": "; accuracy over all samples (a sample not kept counts as wrong)",
                 "kept": "; accuracy over the kept samples"}[res.get("accuracy_over", "kept")]
    return text


def plot_flow(res: dict, metric: str = "flow"):
    """% change in probability against layer, one panel per task (kept samples
    only), one line (mean, 95% band) per edge type, legend above."""
    from analyses.plots import COLORS, band, panels

    tasks = res["tasks"]
    fig, axes = panels(len(tasks))
    L = next(iter(res[metric].values())).shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        rows = (res["task"] == t) & res["kept"]
        ax.axhline(0, color="0.5", lw=0.8)
        for j, e in enumerate(res["edges"]):
            if rows.any():
                band(ax, x, res[metric][e][rows], EDGE_LABELS.get(e, e), COLORS[j % len(COLORS)])
            else:
                ax.plot([], [], color=COLORS[j % len(COLORS)], label=EDGE_LABELS.get(e, e))
        ax.set_title(f"{t} (n={int(rows.sum())})")
        _window_axis(ax, L, res["k"])
        ax.set_ylabel("% change in probability")
    what = "ground truth" if metric == "flow" else "model's answer"
    _legend(fig, axes, f"Attention knockout ({what}), window k={res['k']}: {res.get('model', '')}", caption(res))
    return fig


def plot_accuracy(res: dict):
    """Accuracy after knockout against the window, one panel per task (from
    flow_correct, over the samples ``analyses.flow.accuracy_rows`` takes:
    all, a sample not kept counting as wrong, or the kept ones), one line
    (mean, 95% band) per edge type; the clean accuracy of the same samples
    dashed grey."""
    from analyses.plots import COLORS, band, panels

    tasks = res["tasks"]
    fig, axes = panels(len(tasks))
    L = next(iter(res["flow_correct"].values())).shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        task = res["task"] == t
        n = len(accuracy_rows(res, res["edges"][0], task))
        if n:
            ax.axhline(clean_accuracy(res, task), color="0.5", lw=0.8, ls="--", label="no knockout")
        for j, e in enumerate(res["edges"]):
            if n:
                band(ax, x, accuracy_rows(res, e, task), EDGE_LABELS.get(e, e), COLORS[j % len(COLORS)])
            else:
                ax.plot([], [], color=COLORS[j % len(COLORS)], label=EDGE_LABELS.get(e, e))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{t} (n={n})")
        _window_axis(ax, L, res["k"])
        ax.set_ylabel("accuracy after knockout")
    _legend(fig, axes, f"Accuracy after attention knockout, window k={res['k']}: {res.get('model', '')}",
            caption(res, accuracy=True))
    return fig


def _pathway_rows(res: dict):
    """(group, n, full, pathways, random mean, random sd, share) per task and
    for all samples, from the stored per-sample pathway results."""
    pw = res["pathways"]
    groups = [(t, res["task"] == t) for t in res["tasks"]] + [("all", np.ones(len(res["task"]), bool))]
    rc = np.asarray(pw["random_correct"], dtype=float).reshape(-1, len(res["task"]))
    out = []
    for g, m in groups:
        if not m.any():
            continue
        r = rc[:, m].mean(1) if len(rc) else np.array([np.nan])
        out.append((g, int(m.sum()), float(pw["clean_correct"][m].mean()), float(pw["correct"][m].mean()),
                    float(np.mean(r)), float(np.std(r)) if len(r) > 1 else 0.0, float(pw["edge_share"][m].mean())))
    return out


def random_label(res: dict) -> str:
    """The random control's form (and ratio), as the file records it."""
    a = res["pathways"]["attrs"]
    form = a.get("random_control", "uniform")
    if form == "per-layer":
        return f"random edges cut (per layer, ratio {a.get('random_ratio', float('nan')):.3f})"
    return "random edges cut (uniform over layers)"


def plot_pathways(res: dict):
    """Accuracy of the full model, with the effective pathways only, and with
    the same number of random edges cut (mean and sd over seeds), per task."""
    from analyses.plots import COLORS, panels

    rows = _pathway_rows(res)
    fig, axes = panels(1, width=max(4.0, 0.9 * len(rows) + 1.5), height=2.6)
    ax = axes[0]
    x = np.arange(len(rows))
    w = 0.27
    full = [r[2] for r in rows]
    pw = [r[3] for r in rows]
    rnd, sd = [r[4] for r in rows], [r[5] for r in rows]
    ax.bar(x - w, full, w, color=COLORS[0], label="full model")
    ax.bar(x, pw, w, color=COLORS[2], label="effective pathways")
    ax.bar(x + w, rnd, w, yerr=sd, color=COLORS[1], label=random_label(res), capsize=2)
    ax.set_xticks(x, [f"{r[0]}\n{100 * r[6]:.0f}% kept" for r in rows], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    attrs = res["pathways"]["attrs"]
    _legend(fig, axes, f"Effective pathways {attrs.get('pathways', '')}: {res.get('model', '')}")
    return fig


def plot_layerwise(res: dict):
    """Layer-wise probability of the true vs false option letters at the last
    position, one panel per task (all samples), without and with the final norm."""
    from analyses.plots import COLORS, band, panels

    lw, tasks = res["layerwise"], res["tasks"]
    fig, axes = panels(len(tasks))
    L = lw["true"].shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        rows = res["task"] == t
        band(ax, x, lw["true"][rows], "true option", COLORS[0])
        band(ax, x, lw["false"][rows], "false options (mean)", COLORS[1])
        band(ax, x, lw["true_norm"][rows], "true option, final norm", COLORS[2])
        band(ax, x, lw["false_norm"][rows], "false options, final norm", COLORS[3])
        ax.set_title(t)
        ax.set_xlabel("layer")
        ax.set_ylabel("probability")
        ax.set_xticks(x)
    _legend(fig, axes, f"Layer-wise answer probability: {res.get('model', '')}")
    return fig


def save_figures(res: dict, folder) -> list[str]:
    from analyses.plots import save

    folder = Path(folder)
    paths = save(plot_flow(res, "flow"), folder / "flow") + save(plot_flow(res, "flow_answer"), folder / "flow_answer")
    paths += save(plot_accuracy(res), folder / "flow_acc")
    if "layerwise" in res:
        paths += save(plot_layerwise(res), folder / "layerwise")
    if "pathways" in res:
        paths += save(plot_pathways(res), folder / "pathways")
    return paths


def table(res: dict) -> str:
    """Per task: n kept, clean accuracy, and per edge type the most negative
    mean % change (ground truth), its window centre and the layers that
    window cuts (1-indexed)."""
    edges = res["edges"]
    L = next(iter(res["flow"].values())).shape[1]
    head = f"{'task':<16}{'n':>4}{'acc':>6}" + "".join(f"{e[:18]:>22}" for e in edges)
    rows = [head, " " * 26 + "".join(f"{'min %chg @c (layers)':>22}" for _ in edges)]
    for t in res["tasks"]:
        m = res["task"] == t
        kr = m & res["kept"]
        acc = float((res["pred"][m] == res["label"][m]).mean())
        cells = ""
        for e in edges:
            if kr.any():
                mean = np.nanmean(res["flow"][e][kr], 0)
                l = int(np.argmin(mean))
                cell = f"{mean[l]:.1f} @{l + 1} ({window_label(l, res['k'], L)})"
                cells += f"{cell:>22}"
            else:
                cells += f"{'-':>22}"
        rows.append(f"{t:<16}{int(kr.sum()):>4}{100 * acc:6.1f}{cells}")
    rows.append(f"clean accuracy (all samples): {100 * res['accuracy']:.1f}%; kept {int(res['kept'].sum())}")
    rows.append(caption(res, accuracy=True))
    return "\n".join(rows)


def pathways_table(res: dict) -> str:
    """Full -> pathways -> random accuracy and the share of edges kept, per
    task and over all samples."""
    pw = res["pathways"]
    a = pw["attrs"]
    how = (f"found by --find-pathways (tolerance {a['tolerance']} points, threshold {a['threshold']}%"
           f"{'' if a.get('within_tolerance', True) else '; NOT within tolerance'})"
           if a.get("find") else "given")
    n_seeds = len(a.get("seeds", []))
    lines = [f"effective pathways {a['pathways']} (1-indexed, inclusive; {how}); control: {random_label(res)}",
             f"{'task':<16}{'n':>4}{'full':>8}{'pathways':>10}{f'random ({n_seeds} seeds)':>24}{'edges kept':>12}"]
    for g, n, full, p, rm, rsd, share in _pathway_rows(res):
        rnd = f"{100 * rm:.1f} +- {100 * rsd:.1f}" if n_seeds else "-"
        lines.append(f"{g:<16}{n:>4}{100 * full:8.1f}{100 * p:10.1f}{rnd:>24}{100 * share:11.1f}%")
    return "\n".join(lines)


