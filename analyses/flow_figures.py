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
    """One legend above the panels naming every line (from all panels), and
    the caption (the answer rule, what the band is) below them."""
    import textwrap

    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.tight_layout()
    width = fig.get_figwidth()
    fig.legend(list(seen.values()), list(seen), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=max(1, min(len(seen), int(width // 1.7))), fontsize=7,
               title=textwrap.fill(title, int(width * 15)), title_fontsize=8)
    if caption:
        fig.text(0.5, 0.0, textwrap.fill(caption, int(width * 17)), ha="center", va="top", fontsize=6.5,
                 color="0.3")


def edge_label(e: str) -> str:
    """An edge type in words ('video_question' -> 'video -/-> question')."""
    from analyses.plots import words

    return EDGE_LABELS.get(e) or words(e)


def _chance(res: dict, rows) -> float | None:
    """1 / number of options, averaged over the rows (None when unknown)."""
    k = np.asarray(res.get("n_options", []))[rows] if "n_options" in res else np.array([])
    k = k[k > 0] if k.size else k
    return float(np.mean(1.0 / k)) if k.size else None


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


def caption(res: dict, accuracy: bool = False, band: bool = True) -> str:
    """Which answer rule, samples and accuracy denominator the figure shows,
    and what its shaded band is."""
    from analyses.plots import BAND_NOTE

    rule = {"vocabulary": "argmax over the vocabulary (right only if the true letter)",
            "letters": "argmax over the option letters"}[res.get("answer_from", "letters")]
    samples = (res.get("config") or {}).get("samples")
    text = f"answer: {rule}" + {"correct": "; samples: answered correctly", "all": "; samples: all"}.get(samples, "")
    if accuracy:
        text += {"all": "; accuracy over all samples (a sample not kept counts as wrong)",
                 "kept": "; accuracy over the kept samples"}[res.get("accuracy_over", "kept")]
    if band:
        text += f"; line: mean, {BAND_NOTE} (n per panel)"
    return text


# The physical range of each drawn quantity: a probability cannot fall by more
# than all of it; an accuracy and a probability lie in [0, 1].
PCT_CHANGE, UNIT = (-100.0, None), (0.0, 1.0)


def plot_flow(res: dict, metric: str = "flow", width: float | None = None):
    """% change in probability against layer, one panel per task (kept samples
    only; n in the title), one line (mean, 95% bootstrap band clipped at -100%)
    per edge type, the panels sharing their y-axis, legend above."""
    from analyses.plots import COLORS, MARKERS, band, panels, words

    tasks = res["tasks"]
    fig, axes = panels(len(tasks), width=width, sharey=True)
    L = next(iter(res[metric].values())).shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        rows = (res["task"] == t) & res["kept"]
        ax.axhline(0, color="0.5", lw=0.8)
        for j, e in enumerate(res["edges"]):
            c, mk = COLORS[j % len(COLORS)], MARKERS[j % len(MARKERS)]
            if rows.any():
                band(ax, x, res[metric][e][rows], edge_label(e), c, limits=PCT_CHANGE, marker=mk, mark_start=j)
            else:
                ax.plot([], [], color=c, marker=mk, ms=3, label=edge_label(e))
        ax.set_title(f"{words(t)} (n={int(rows.sum())})")
        _window_axis(ax, L, res["k"])
    for ax in axes[:: _ncols(axes)]:
        ax.set_ylabel("% change in probability")
    what = "ground truth" if metric == "flow" else "model's answer"
    _legend(fig, axes, f"Attention knockout ({what}), window k={res['k']}: {res.get('model', '')}", caption(res))
    return fig


def _ncols(axes) -> int:
    """Columns of the panel grid (to label the y-axis of the first column only)."""
    return max(1, axes[0].get_subplotspec().get_gridspec().ncols)


def plot_accuracy(res: dict, width: float | None = None):
    """Accuracy after knockout against the window, one panel per task (from
    flow_correct, over the samples ``analyses.flow.accuracy_rows`` takes:
    all, a sample not kept counting as wrong, or the kept ones), one line
    (mean, 95% bootstrap band within [0, 1]) per edge type; the clean
    accuracy of the same samples dashed grey, chance dotted."""
    from analyses.plots import COLORS, MARKERS, band, chance_line, panels, words

    tasks = res["tasks"]
    fig, axes = panels(len(tasks), width=width, sharey=True)
    L = next(iter(res["flow_correct"].values())).shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        task = res["task"] == t
        n = len(accuracy_rows(res, res["edges"][0], task))
        if n:
            ax.axhline(clean_accuracy(res, task), color="0.5", lw=0.8, ls="--", label="no knockout")
        ch = _chance(res, task)
        if ch is not None:
            chance_line(ax, ch)
        for j, e in enumerate(res["edges"]):
            c, mk = COLORS[j % len(COLORS)], MARKERS[j % len(MARKERS)]
            if n:
                band(ax, x, accuracy_rows(res, e, task), edge_label(e), c, limits=UNIT, marker=mk, mark_start=j)
            else:
                ax.plot([], [], color=c, marker=mk, ms=3, label=edge_label(e))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{words(t)} (n={n})")
        _window_axis(ax, L, res["k"])
    for ax in axes[:: _ncols(axes)]:
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


def plot_pathways(res: dict, width: float | None = None):
    """Accuracy of the full model, with the effective pathways only, and with
    the same number of random edges cut (bar: mean over seeds, whisker: sd,
    within [0, 1]), per task (n and the share of edges kept under its name);
    chance dotted."""
    import textwrap

    from analyses.plots import COLORS, COLUMN, chance_line, panels, words

    rows = _pathway_rows(res)
    width = width or min(7.0, max(COLUMN, 0.75 * len(rows) + 1.2))
    wide = width >= 0.9 * len(rows) + 1  # room for two-line labels under each group
    fig, axes = panels(1, width=width, height=2.4 if wide else 3.4)
    ax = axes[0]
    x = np.arange(len(rows))
    w = 0.27
    full = np.array([r[2] for r in rows])
    pw = np.array([r[3] for r in rows])
    rnd, sd = np.array([r[4] for r in rows]), np.nan_to_num(np.array([r[5] for r in rows]))
    ax.bar(x - w, full, w, color=COLORS[0], label="full model")
    ax.bar(x, pw, w, color=COLORS[2], label="effective pathways")
    yerr = np.stack([np.minimum(sd, rnd), np.minimum(sd, 1 - rnd)])  # mean +- sd, kept within [0, 1]
    n_seeds = len(res["pathways"]["attrs"].get("seeds", []))
    ax.bar(x + w, rnd, w, yerr=yerr, color=COLORS[1], capsize=2,
           label=textwrap.fill(random_label(res) + (f": mean, whisker sd over {n_seeds} seeds" if n_seeds > 1 else ""),
                               int(width * 14)))
    ch = _chance(res, np.ones(len(res["task"]), bool))
    if ch is not None:
        chance_line(ax, ch)
    if wide:
        ax.set_xticks(x, [f"{words(r[0])}\nn={r[1]}, {100 * r[6]:.0f}% kept" for r in rows], fontsize=6)
    else:  # narrow: one line per task, upright
        ax.set_xticks(x, [f"{words(r[0])} (n={r[1]}, {100 * r[6]:.0f}%)" for r in rows], fontsize=6, rotation=45,
                      ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("task (samples, share of edges kept)")
    attrs = res["pathways"]["attrs"]
    _legend(fig, axes, f"Effective pathways {attrs.get('pathways', '')}: {res.get('model', '')}")
    return fig


def plot_layerwise(res: dict, width: float | None = None):
    """Layer-wise probability of the true vs false option letters at the last
    position, one panel per task (all samples; n in the title), without and
    with the final norm (mean, 95% bootstrap band within [0, 1]), the panels
    sharing their y-axis."""
    from analyses.plots import COLORS, band, panels, words

    lw, tasks = res["layerwise"], res["tasks"]
    fig, axes = panels(len(tasks), width=width, sharey=True)
    L = lw["true"].shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        rows = res["task"] == t
        band(ax, x, lw["true"][rows], "true option", COLORS[0], limits=UNIT)
        band(ax, x, lw["false"][rows], "false options (mean)", COLORS[1], limits=UNIT)
        band(ax, x, lw["true_norm"][rows], "true option, final norm", COLORS[2], limits=UNIT, ls="--")
        band(ax, x, lw["false_norm"][rows], "false options, final norm", COLORS[3], limits=UNIT, ls="--")
        ax.set_title(f"{words(t)} (n={int(rows.sum())})")
        ax.set_xlabel("layer")
        step = max(1, -(-L // 8))
        ax.set_xticks(x[::step])
    for ax in axes[:: _ncols(axes)]:
        ax.set_ylabel("probability")
    from analyses.plots import BAND_NOTE

    _legend(fig, axes, f"Layer-wise answer probability: {res.get('model', '')}",
            f"samples: all; line: mean, {BAND_NOTE} (n per panel); dashed: after the final norm")
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


