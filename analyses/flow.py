"""Map the Flow (Kim, Kim, Han; ICLR 2026, arXiv 2510.13251): where does video
information travel to the answer? Attention knockout of one edge type
(cross-frame, video->question, video->last, question->last, ...) in a window of
k layers centred on every layer; the relative change of the answer's
probability, (p_KO - p_base) / p_base * 100, and the accuracy after knockout.
Also the layer-wise answer probability (each layer's last-position residual
stream through the unembedding), and the effective pathways
(analyses/pathways.py): each stage kept only in its layer range, against a
random-edge control.

    python -m analyses.flow --model organism --dataset synthetic --limit 6
    python -m analyses.flow --pathways CF=1-2,VQ=1-3,QL=1-3 --random-seeds 3
    python -m analyses.flow --find-pathways --tolerance 2

Results go to an HDF5 results file (tracing/store.py ResultsFile), rows aligned
with its /samples (NaN where a sample was left out, e.g. answered wrongly):

    /results/flow/<edge>          [N, L] % change of the ground truth's probability
    /results/flow_answer/<edge>   [N, L] % change of the model's answer's probability
    /results/flow_correct/<edge>  [N, L] 1 if the knocked-out model answers correctly
    /results/flow_acc/<edge>      [L]    accuracy after knockout over the kept samples
    /results/baseline             [N, K] clean option probabilities (NaN padded)
    /results/kept                 [N]    1 if the sample entered the flow maps
    /results/accuracy             []     clean accuracy over all samples
    /results/layerwise/{true,false}{,_norm}  [N, L] option probability per layer

With --pathways or --find-pathways (all samples, whatever --samples says; R =
--random-seeds), each with the pathway configuration in its attributes:

    /results/pathways/probs           [N, K] option probabilities under the pathways
    /results/pathways/correct         [N]    1 if answered correctly under them
    /results/pathways/clean_correct   [N]    1 if answered correctly without knockout
    /results/pathways/blocked         [N]    causal edges cut (summed over layers)
    /results/pathways/edge_share      [N]    share of causal edges kept
    /results/pathways/random_correct  [R, N] the same under the random-edge control
    /results/pathways/random_blocked  [R, N] edges the control cut (= blocked)
    /results/pathways/search          [S, 10] --find-pathways steps: CF, VQ, QL, VL
                                             first/last (1-indexed; VL NaN if absent),
                                             accuracy, share kept
    /results/pathways/summary         [5]    accuracy full, pathways, random mean,
                                             random sd over seeds, mean share kept

An existing --out is never replaced silently: one written with another
configuration is refused (the error names the differing keys) unless
--overwrite, which writes the new file beside it and swaps it in at the end; one
of this configuration is resumed (flow maps already complete are not
recomputed; pathways of another request need --overwrite, which keeps the flow
maps). The pathway options are not part of the file's configuration.

Figures (PNG + PDF) are drawn from the file; notebooks/flow.ipynb redraws them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

DEFAULT_EDGES = ["cross_frame", "video_question", "video_last", "question_last"]
EDGE_LABELS = {"cross_frame": "cross-frame", "video_question": "video -/-> question",
               "video_last": "video -/-> last", "question_last": "question -/-> last",
               "last_last": "last -/-> last"}


def key(edge: str) -> str:
    """An edge name as an HDF5 dataset name ('video->last' -> 'video__last')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", edge)


def rel_change(p_ko, p_base):
    """(p_KO - p_base) / p_base * 100."""
    return (np.asarray(p_ko, dtype=float) - p_base) / p_base * 100.0


# ---------------------------------------------------------------- the core

def flow_maps(lm, samples, edge_names=DEFAULT_EDGES, k: int | None = None, samples_mode: str = "correct",
              progress: bool = True, layerwise: bool = True) -> dict:
    """Knockout sweeps over every sample.

    For each sample: the clean option probabilities; with samples_mode
    'correct' only correctly answered samples enter the maps ('all': every
    sample). For each edge type and window centre l, the edge set is cut in
    window(l, k, L); all conditions of a sample run in one KnockoutRunner.run.

    -> dict with (N samples, L layers, K max options):
      baseline [N, K], pred [N], label [N], kept [N] bool, n_options [N],
      flow / flow_answer / flow_correct: {edge: [N, L]} (NaN where not kept),
      flow_acc: {edge: [L]}, accuracy (clean, all samples), k, edges,
      layerwise (if asked): {'true', 'false', 'true_norm', 'false_norm': [N, L]}.
    """
    import torch
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs
    from tracing.knockout import KnockoutRunner, default_window, edges, window

    if samples_mode not in ("correct", "all"):
        raise ValueError(f"samples_mode={samples_mode!r}: expected 'correct' or 'all'")
    L = lm.n_layers
    k = default_window(L) if k is None else int(k)
    N, K = len(samples), max(len(s.options) for s in samples)
    base = np.full((N, K), np.nan)
    pred, label = np.zeros(N, int), np.array([int(s.answer) for s in samples])
    kept = np.zeros(N, bool)
    nopt = np.array([len(s.options) for s in samples])
    flow = {e: np.full((N, L), np.nan) for e in edge_names}
    flow_ans = {e: np.full((N, L), np.nan) for e in edge_names}
    correct = {e: np.full((N, L), np.nan) for e in edge_names}
    lw = {n: np.full((N, L), np.nan) for n in ("true", "false", "true_norm", "false_norm")} if layerwise else None
    for i, s in enumerate(tqdm(samples, desc="flow maps", unit="sample", disable=not progress)):
        inputs, layout = build_sample_inputs(lm, s)
        runner = KnockoutRunner(lm, inputs, layout)
        p0 = runner.clean().float().cpu().numpy()
        base[i, : len(p0)] = p0
        pred[i] = int(np.argmax(p0))
        if layerwise:
            for name, arr in layerwise_probs(lm, inputs, layout, runner=runner).items():
                lw[name][i] = arr
        if samples_mode == "correct" and pred[i] != label[i]:
            continue
        kept[i] = True
        conds = [(edges(e, layout), window(c, k, L)) for e in edge_names for c in range(L)]
        with torch.no_grad():
            p = runner.run(conds).float().cpu().numpy().reshape(len(edge_names), L, -1)
        for j, e in enumerate(edge_names):
            flow[e][i] = rel_change(p[j, :, label[i]], p0[label[i]])
            flow_ans[e][i] = rel_change(p[j, :, pred[i]], p0[pred[i]])
            correct[e][i] = (p[j].argmax(-1) == label[i]).astype(float)
    acc = {e: np.nanmean(correct[e], 0) if kept.any() else np.full(L, np.nan) for e in edge_names}
    out = {"baseline": base, "pred": pred, "label": label, "kept": kept, "n_options": nopt,
           "flow": flow, "flow_answer": flow_ans, "flow_correct": correct, "flow_acc": acc,
           "accuracy": float((pred == label).mean()), "k": k, "edges": list(edge_names)}
    if layerwise:
        out["layerwise"] = lw
    return out


def layerwise_probs(lm, inputs, layout, runner=None) -> dict[str, np.ndarray]:
    """Layer-wise answer probability: the last position's residual stream after
    each layer through the unembedding (softmax over the full vocabulary),
    without ('true', 'false') and with ('*_norm') the final norm. 'true' is the
    ground-truth option letter, 'false' the mean over the other letters.
    -> {name: [L]}."""
    import torch

    from tracing.capture import capture

    L = lm.n_layers
    acts = capture(lm, inputs, layout, "resid_post", positions="last")
    h = torch.stack([acts[f"blocks.{l}.hook_resid_post"].reshape(-1) for l in range(L)])  # [L, d]
    norm, unembed = lm.module(lm.family.final_norm), lm.module(lm.family.unembed)
    ids, ans = list(layout.option_ids), layout.answer
    out = {}
    with torch.no_grad():
        for suffix, x in (("", h), ("_norm", norm(h))):
            p = torch.softmax(unembed(x.to(next(unembed.parameters()).dtype)).float(), -1)[:, ids].cpu().numpy()
            out["true" + suffix] = p[:, ans]
            out["false" + suffix] = np.delete(p, ans, axis=1).mean(1)
    return out


def full_block_accuracy(lm, samples, edge_name: str, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cut edge_name in every layer of every sample -> (correct [N] bool under
    the knockout, clean correct [N] bool)."""
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs
    from tracing.knockout import KnockoutRunner, edges

    ko, clean = [], []
    for s in tqdm(samples, desc=edge_name, disable=not progress):
        inputs, layout = build_sample_inputs(lm, s)
        r = KnockoutRunner(lm, inputs, layout)
        p = r.run([(edges(edge_name, layout), range(lm.n_layers))])[0]
        ko.append(int(p.argmax()) == s.answer)
        clean.append(int(r.clean().argmax()) == s.answer)
    return np.array(ko), np.array(clean)


# ---------------------------------------------------------------- results file

def sample_metas(samples, pred):
    from tracing.store import SampleMeta

    return [SampleMeta(s.id, s.task, int(s.answer), int(p), {"question": s.question, "options": list(s.options)})
            for s, p in zip(samples, pred)]


def write_results(rf, res: dict, tasks: list[str]) -> None:
    attrs = {"edges": res["edges"], "k": res["k"], "tasks": tasks}
    for e in res["edges"]:
        a = {**attrs, "edge": e, "label": EDGE_LABELS.get(e, e)}
        rf.write_result(f"flow/{key(e)}", res["flow"][e], {**a, "metric": "% change, ground truth"}, overwrite=True)
        rf.write_result(f"flow_answer/{key(e)}", res["flow_answer"][e],
                        {**a, "metric": "% change, model's answer"}, overwrite=True)
        rf.write_result(f"flow_correct/{key(e)}", res["flow_correct"][e], a, overwrite=True)
        rf.write_result(f"flow_acc/{key(e)}", res["flow_acc"][e], a, overwrite=True)
    rf.write_result("baseline", res["baseline"], attrs, overwrite=True)
    rf.write_result("pred", res["pred"], attrs, overwrite=True)
    rf.write_result("kept", res["kept"].astype(np.int8), attrs, overwrite=True)
    rf.write_result("n_options", res["n_options"], attrs, overwrite=True)
    rf.write_result("accuracy", np.array(res["accuracy"]), attrs, overwrite=True)
    for name, arr in (res.get("layerwise") or {}).items():
        rf.write_result(f"layerwise/{name}", arr, attrs, overwrite=True)


def load_results(path) -> dict:
    """The flow results in the file at path -> dict as flow_maps returns
    (edges in run order), plus 'task' [N], 'model' and 'config'."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    names = r.results()
    if "baseline" not in names:
        raise KeyError(f"{path}: no flow results (it holds {names}); run python -m analyses.flow first")
    base, attrs = r.result("baseline")
    out = {"baseline": base, "edges": list(attrs["edges"]), "k": attrs["k"], "tasks": list(attrs["tasks"]),
           "config": r.config, "model": r.attrs.get("model"), "task": np.array(r.samples["task"]).astype(str),
           "label": np.array(r.samples["label"])}
    for n in ("pred", "kept", "n_options", "accuracy"):
        out[n] = r.result(n)[0]
    out["kept"] = out["kept"].astype(bool)
    out["accuracy"] = float(out["accuracy"])
    for group in ("flow", "flow_answer", "flow_correct", "flow_acc"):
        out[group] = {e: r.result(f"{group}/{key(e)}")[0] for e in out["edges"]}
    lw = [n for n in names if n.startswith("layerwise/")]
    if lw:
        out["layerwise"] = {n.split("/", 1)[1]: r.result(n)[0] for n in lw}
    if "pathways/summary" in names:  # written last: the pathway results are complete
        pw = {n.split("/", 1)[1]: r.result(n)[0] for n in names if n.startswith("pathways/")}
        pw["attrs"] = r.result("pathways/summary")[1]
        out["pathways"] = pw
    return out


FLOW_GROUPS = ("flow", "flow_answer", "flow_correct", "flow_acc")
BASE_RESULTS = ("baseline", "pred", "kept", "n_options", "accuracy")
LAYERWISE = ("true", "false", "true_norm", "false_norm")


def flow_complete(path, edge_names, layerwise: bool) -> bool:
    """Whether the file holds every flow result of these edges."""
    from tracing.store import CacheReader

    have = set(CacheReader(path).results())
    want = {f"{g}/{key(e)}" for g in FLOW_GROUPS for e in edge_names} | set(BASE_RESULTS)
    if layerwise:
        want |= {f"layerwise/{n}" for n in LAYERWISE}
    return want <= have


# ---------------------------------------------------------------- figures and table

def _legend(fig, axes, title):
    h, lab = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(lab), 4), fontsize=8,
               title=title, title_fontsize=9)


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
        ax.set_xlabel("layer (window centre)")
        ax.set_ylabel("% change in probability")
        ax.set_xticks(x)
    what = "ground truth" if metric == "flow" else "model's answer"
    _legend(fig, axes, f"Attention knockout ({what}), window k={res['k']}: {res.get('model', '')}")
    return fig


def plot_accuracy(res: dict):
    """Accuracy after knockout against layer (window centre), one panel per
    task (kept samples, from /results/flow_correct), one line (mean, 95% band)
    per edge type; the clean accuracy of the same samples dashed grey."""
    from analyses.plots import COLORS, band, panels

    tasks = res["tasks"]
    fig, axes = panels(len(tasks))
    L = next(iter(res["flow_correct"].values())).shape[1]
    x = np.arange(1, L + 1)
    for ax, t in zip(axes, tasks):
        rows = (res["task"] == t) & res["kept"]
        if rows.any():
            clean = float((res["pred"][rows] == res["label"][rows]).mean())
            ax.axhline(clean, color="0.5", lw=0.8, ls="--", label="no knockout")
        for j, e in enumerate(res["edges"]):
            if rows.any():
                band(ax, x, res["flow_correct"][e][rows], EDGE_LABELS.get(e, e), COLORS[j % len(COLORS)])
            else:
                ax.plot([], [], color=COLORS[j % len(COLORS)], label=EDGE_LABELS.get(e, e))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{t} (n={int(rows.sum())})")
        ax.set_xlabel("layer (window centre)")
        ax.set_ylabel("accuracy after knockout")
        ax.set_xticks(x)
    _legend(fig, axes, f"Accuracy after attention knockout, window k={res['k']}: {res.get('model', '')}")
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
    ax.bar(x + w, rnd, w, yerr=sd, color=COLORS[1], label="random edges cut", capsize=2)
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
    mean % change (ground truth) and its layer (1-indexed window centre)."""
    edges = res["edges"]
    head = f"{'task':<16}{'n':>4}{'acc':>6}" + "".join(f"{e[:18]:>22}" for e in edges)
    rows = [head, " " * 26 + "".join(f"{'min %chg @layer':>22}" for _ in edges)]
    for t in res["tasks"]:
        m = res["task"] == t
        kr = m & res["kept"]
        acc = float((res["pred"][m] == res["label"][m]).mean())
        cells = ""
        for e in edges:
            if kr.any():
                mean = np.nanmean(res["flow"][e][kr], 0)
                l = int(np.argmin(mean))
                cells += f"{f'{mean[l]:.1f} @{l + 1}':>22}"
            else:
                cells += f"{'-':>22}"
        rows.append(f"{t:<16}{int(kr.sum()):>4}{100 * acc:6.1f}{cells}")
    rows.append(f"clean accuracy (all samples): {100 * res['accuracy']:.1f}%; kept {int(res['kept'].sum())}")
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
    lines = [f"effective pathways {a['pathways']} (1-indexed, inclusive; {how})",
             f"{'task':<16}{'n':>4}{'full':>8}{'pathways':>10}{f'random ({n_seeds} seeds)':>24}{'edges kept':>12}"]
    for g, n, full, p, rm, rsd, share in _pathway_rows(res):
        rnd = f"{100 * rm:.1f} +- {100 * rsd:.1f}" if n_seeds else "-"
        lines.append(f"{g:<16}{n:>4}{100 * full:8.1f}{100 * p:10.1f}{rnd:>24}{100 * share:11.1f}%")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def parse_edges(spec: str) -> list[str]:
    """'cross_frame,video->question,trailing,last' -> ['cross_frame',
    'video->question,trailing,last']: a comma starts a new edge type unless the
    next piece is a bare span name continuing a 'src->tgt' string."""
    from tracing.knockout import EDGE_SETS

    out: list[str] = []
    for piece in (p.strip() for p in spec.split(",")):
        if not piece:
            continue
        if out and "->" not in piece and piece not in EDGE_SETS and "->" in out[-1]:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def build_parser() -> argparse.ArgumentParser:
    from analyses.cli import common_parser

    ap = common_parser("python -m analyses.flow", __doc__.split("\n\n")[0].replace("\n", " "), limit=6)
    ap.add_argument("--window", type=int, default=None,
                    help="layers blocked around each centre layer (default: 9 for 32+ layers, else ~L/4)")
    ap.add_argument("--edges", default=",".join(DEFAULT_EDGES),
                    help="comma-separated edge types: names of tracing.knockout.EDGE_SETS (cross_frame, "
                         "video_question, video_last, question_last, last_last, ...) or 'src->tgt' strings "
                         "(use ';' inside one string for several span pairs)")
    ap.add_argument("--samples", default="correct", choices=["correct", "all"],
                    help="which samples enter the flow maps: the correctly answered ones (the paper) or all")
    ap.add_argument("--no-layerwise", action="store_true",
                    help="skip the layer-wise answer probability (one extra forward per sample)")
    pw = ap.add_argument_group("effective pathways (analyses/pathways.py; evaluated on all samples)")
    pw.add_argument("--pathways", default=None, metavar="CF=a-b,VQ=c-d,QL=e-f[,VL=g-h]",
                    help="keep cross-frame (CF), video->question (VQ) and question->last (QL) attention only in these "
                         "layer ranges (1-indexed, inclusive, as in the paper: LLaVA-NeXT-7B CF=6-15,VQ=6-20,QL=16-25; "
                         "'CF=3' is one layer); video->last and last->last are cut in every layer, video<->video after "
                         "VQ ends, question<->question after QL ends; reports accuracy, share of edges kept and the "
                         "random-edge control. Beyond the paper, an optional VL=g-h keeps video->last in g..h")
    pw.add_argument("--find-pathways", action="store_true",
                    help="propose the three ranges from the flow maps (needs cross_frame, video_question and "
                         "question_last in --edges), then grow/shrink them greedily to the sparsest set whose "
                         "accuracy is within --tolerance of the full model (deterministic; see "
                         "analyses.pathways.find_pathways). If no three ranges can reach it and video_last is in "
                         "--edges, a VL range joins")
    pw.add_argument("--tolerance", type=float, default=2.0,
                    help="--find-pathways: accuracy points (0-100) the pathways may lose against the full model")
    pw.add_argument("--pathway-threshold", type=float, default=5.0,
                    help="--find-pathways: %% drop of the answer's probability in the flow maps that puts a window "
                         "centre into a stage's starting range")
    pw.add_argument("--random-seeds", type=int, default=3,
                    help="seeds of the random-edge control (same number of causal edges cut at random among positions "
                         ">= the first video token); 0: no control")
    lens = ap.add_argument_group("logit lens on video tokens (analyses/lens.py; also python -m analyses.lens)")
    lens.add_argument("--lens", action="store_true",
                      help="also run the logit lens on the video tokens (residual stream entering each layer against "
                           "the input embedding and the unembedding) and count top-1 words of --lens-words per layer "
                           "bin; stored under /results/lens, figures lens_*")
    lens.add_argument("--lens-words", default="auto",
                      help="word lists: a preset ('synthetic', 'paper'; auto picks by --dataset), "
                           "'spatial=left,right;temporal=first,then', or a JSON file {list: [words]}")
    return ap


# Arguments of the pathways and lens steps: recorded with their results, not in
# the file's configuration, so that a file of flow maps can be extended with them.
PATHWAY_ARGS = ("pathways", "find_pathways", "tolerance", "pathway_threshold", "random_seeds", "lens", "lens_words")


def pathway_request(a, given=None) -> dict | None:
    """What the pathways step of this run computes (None: nothing); compared
    with the request stored in the file on resume."""
    if not (a.pathways or a.find_pathways):
        return None
    req = {"find": bool(a.find_pathways), "random_seeds": int(a.random_seeds), "seed": int(a.seed)}
    if a.find_pathways:
        req.update(tolerance=float(a.tolerance), threshold=float(a.pathway_threshold))
    else:
        req["given"] = str(given)
    return req


def _flat(d, prefix="config"):
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out


def _dict_differences(old: dict, new: dict, prefix: str) -> list[str]:
    fo, fn = _flat(old, prefix), _flat(new, prefix)
    return [f"{k}: {fo.get(k, '<absent>')!r} (in file) vs {fn.get(k, '<absent>')!r} (this run)"
            for k in sorted(set(fo) | set(fn)) if fo.get(k, "<absent>") != fn.get(k, "<absent>")]


def file_differences(path, lm, dataset: str, config: dict, samples) -> list[str]:
    """How the results file at path differs from this run (model, fingerprint,
    dataset, configuration, sample list); [] if it is this run's file. Reads only."""
    from tracing.store import CacheReader, StoreError

    try:
        r = CacheReader(path)
    except (StoreError, OSError, KeyError) as e:
        return [f"not a chronolens results file ({e})"]
    diff = []
    for k, mine in (("kind", "results"), ("model", lm.name), ("model_fingerprint", lm.fingerprint),
                    ("dataset", dataset)):
        if str(r.attrs.get(k)) != str(mine):
            diff.append(f"{k}: {r.attrs.get(k)!r} (in file) vs {mine!r} (this run)")
    diff += _dict_differences(r.config, json.loads(json.dumps(config, default=str)), "config")
    s = r.samples
    theirs = list(zip(s["id"].tolist(), s["task"].tolist(), [int(x) for x in s["label"]]))
    mine = [(x.id, x.task, int(x.answer)) for x in samples]
    if theirs != mine:
        if len(theirs) != len(mine):
            diff.append(f"samples: {len(theirs)} (in file) vs {len(mine)} (this run)")
        else:
            i = next(i for i in range(len(mine)) if theirs[i] != mine[i])
            diff.append(f"samples[{i}] (id, task, label): {theirs[i]} (in file) vs {mine[i]} (this run)")
    return diff


def stored_request(path) -> dict | None:
    """The pathway request of complete pathway results in the file, or None."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    if "pathways/summary" not in r.results():
        return None
    return r.result("pathways/summary")[1].get("request")


def _refuse(out, diffs: list[str], what: str):
    raise SystemExit(f"error: {out} holds {what} of a different configuration; refusing to replace it:\n  "
                     + "\n  ".join(diffs)
                     + f"\nChoose another --out, or pass --overwrite to replace {'it' if what == 'results' else what}.")


class _Target:
    """Where this run writes, and what is already done there.

    path: the file written (``out``, or ``<out>.new`` beside it when an
    existing file is being replaced: moved over ``out`` by ``finish`` with one
    atomic os.replace, removed by ``abandon``; a killed run leaves ``out`` as it was)."""

    def __init__(self, out: Path, path: Path, flow_done: bool, pathways_done: bool):
        self.out, self.path, self.flow_done, self.pathways_done = out, path, flow_done, pathways_done

    @property
    def swap(self) -> bool:
        return self.path != self.out

    def finish(self):
        if self.swap and self.path.exists():
            os.replace(self.path, self.out)

    def abandon(self):
        if self.swap:
            self.path.unlink(missing_ok=True)
            self.path.with_name(self.path.name + ".partial").unlink(missing_ok=True)


def plan_output(out: Path, lm, dataset: str, config: dict, samples, edge_names, layerwise: bool,
                request: dict | None, overwrite: bool) -> _Target:
    """Decide, before any compute, what to do with an existing --out (see the
    module docstring); SystemExit naming the file and the differing keys when
    it is refused."""
    out = Path(out)
    if not out.exists():
        return _Target(out, out, False, False)
    tmp = out.with_name(out.name + ".new")
    diffs = file_differences(out, lm, dataset, config, samples)
    if diffs:
        if not overwrite:
            _refuse(out, diffs, "results")
        _Target(out, tmp, False, False).abandon()  # what a killed --overwrite run left: ours to remove
        return _Target(out, tmp, False, False)
    flow_done = flow_complete(out, edge_names, layerwise)
    old = stored_request(out)
    if request is None or old is None:
        return _Target(out, out, flow_done, False)
    if old == json.loads(json.dumps(request)):
        return _Target(out, out, flow_done, True)
    if not overwrite:
        _refuse(out, _dict_differences(old, request, "pathways"), "the pathway results")
    # Keep the flow maps, drop the old pathways, all in a copy swapped in at the end.
    import h5py

    _Target(out, tmp, False, False).abandon()
    shutil.copyfile(out, tmp)
    with h5py.File(tmp, "r+") as f:
        if "results/pathways" in f:
            del f["results/pathways"]
    return _Target(out, tmp, flow_done, False)


def write_pathways(rf, ev: dict, request: dict, n_layers: int, found: dict | None = None) -> None:
    """Store ``analyses.pathways.evaluate``'s output (and the search) under
    /results/pathways/; the summary last, so that its presence means complete."""
    from analyses.pathways import TRACE_COLUMNS, parse_pathways, trace_array

    p = parse_pathways(ev["pathways"])
    attrs = {"request": request, "find": request["find"], "pathways": ev["pathways"], "ranges": p.to_dict(),
             "indexing": "1-indexed, inclusive", "seeds": ev["seeds"], "n_layers": n_layers,
             "tolerance": request.get("tolerance"), "threshold": request.get("threshold")}
    if found is not None:
        attrs["within_tolerance"] = bool(found["within_tolerance"])
    for name in ("probs", "correct", "clean_correct", "blocked", "edge_share", "random_correct", "random_blocked"):
        arr = ev[name]
        rf.write_result(f"pathways/{name}", arr.astype(np.int8) if arr.dtype == bool else arr, attrs, overwrite=True)
    if found is not None:
        rf.write_result("pathways/search", trace_array(found["trace"]),
                        {**attrs, "steps": [t["step"] for t in found["trace"]],
                         "columns": TRACE_COLUMNS}, overwrite=True)
    acc = ev["accuracy"]
    r = np.asarray(acc["random"], dtype=float)
    summary = np.array([acc["full"], acc["pathways"], r.mean() if r.size else np.nan,
                        r.std() if r.size else np.nan, float(ev["edge_share"].mean())])
    rf.write_result("pathways/summary", summary,
                    {**attrs, "columns": ["accuracy full", "accuracy pathways", "accuracy random (mean)",
                                          "accuracy random (sd)", "edge share kept"]}, overwrite=True)


def main(argv=None) -> dict:
    import torch

    from analyses.cli import PRESENTATION, default_out, figures_dir, load_data, load_from_args, run_config
    from analyses.pathways import STAGE_EDGES, STAGES, SampleSet, evaluate, find_pathways, parse_pathways
    from tracing.store import CacheMismatchError, ResultsFile

    ap = build_parser()
    a = ap.parse_args(argv)
    edge_names = parse_edges(a.edges)
    from analyses.cli import check_flags

    check_flags(a)
    if a.window is not None and a.window < 1:
        ap.error(f"--window {a.window}: must be >= 1")
    if a.pathways and a.find_pathways:
        ap.error("--pathways and --find-pathways: give one (the first evaluates given ranges, the second finds them)")
    if a.tolerance < 0 or a.random_seeds < 0:
        ap.error("--tolerance and --random-seeds must be >= 0")
    if a.find_pathways:
        missing = [STAGE_EDGES[s] for s in STAGES if STAGE_EDGES[s] not in edge_names]
        if missing:
            ap.error(f"--find-pathways reads the flow maps of {', '.join(STAGE_EDGES.values())}; "
                     f"add {', '.join(missing)} to --edges")
    out = Path(default_out("flow", a))
    figures = figures_dir(a, out)
    data = load_data(a)
    samples = data.samples
    lm = load_from_args(a)
    from tracing.inputs import build_sample_inputs
    from tracing.knockout import EDGE_SETS, default_window, edges

    _, lay = build_sample_inputs(lm, samples[0])
    for e in edge_names:  # fail early on a bad edge name
        try:
            edges(e, lay)
        except ValueError as err:
            ap.error(f"--edges: {err} (named sets: {', '.join(EDGE_SETS)})")
    given = None
    if a.pathways:
        try:
            given = parse_pathways(a.pathways, lm.n_layers)
        except ValueError as err:
            ap.error(f"--pathways: {err}")
    if a.window is not None and a.window > lm.n_layers:
        ap.error(f"--window {a.window}: the model has {lm.n_layers} layers")
    k = default_window(lm.n_layers) if a.window is None else a.window
    config = {kk: v for kk, v in run_config(a, edge_list=edge_names, k=k).items()
              if kk not in PRESENTATION + PATHWAY_ARGS}
    request = pathway_request(a, given)
    target = plan_output(out, lm, a.dataset, config, samples, edge_names, not a.no_layerwise, request, a.overwrite)
    tasks = list(dict.fromkeys(s.task for s in samples))
    progress = not a.no_progress
    try:
        torch.manual_seed(a.seed)
        if target.flow_done:
            res = load_results(target.path)
            print(f"{out}: flow maps complete, not recomputed", file=sys.stderr)
        else:
            res = flow_maps(lm, samples, edge_names, k, a.samples, progress=progress, layerwise=not a.no_layerwise)
        try:
            rf = ResultsFile.open(target.path, lm.name, lm.fingerprint, a.dataset, config,
                                  sample_metas(samples, res["pred"]))
        except CacheMismatchError as err:
            raise SystemExit(f"error: {err}\nor pass --overwrite to replace it") from None
        if not target.flow_done:
            write_results(rf, res, tasks)
        if request is not None and not target.pathways_done:
            ss = SampleSet(lm, samples, progress=progress)
            found = None
            if a.find_pathways:
                kept = np.asarray(res["kept"], bool)
                curves = {s: (np.nanmean(np.asarray(res["flow"][e])[kept], 0) if kept.any() else np.zeros(lm.n_layers))
                          for s, e in STAGE_EDGES.items() if e in res["flow"]}
                found = find_pathways(ss, curves, a.tolerance, a.pathway_threshold,
                                      log=lambda m: print(m, file=sys.stderr))
                chosen = found["pathways"]
            else:
                chosen = given
            ev = evaluate(ss, chosen, seeds=range(a.random_seeds), seed_base=a.seed)
            write_pathways(rf, ev, request, lm.n_layers, found)
        elif request is not None:
            print(f"{out}: pathway results of this request complete, not recomputed", file=sys.stderr)
        if a.lens:
            from analyses import lens as lens_mod

            if "lens/bins" in rf.reader().results():
                print(f"{out}: logit lens complete, not recomputed (--overwrite to redo it)", file=sys.stderr)
            else:
                lres = lens_mod.lens_analysis(lm, samples, lens_mod.parse_words(a.lens_words, a.dataset),
                                              progress=progress)
                lens_mod.write_results(rf, lres, prefix="lens")
    except BaseException:
        target.abandon()  # an --overwrite run that fails leaves the old file as it was
        raise
    target.finish()
    back = load_results(out)
    paths = save_figures(back, figures)
    print(table(back))
    if "pathways" in back:
        print(pathways_table(back))
    if a.lens:
        from analyses import lens as lens_mod

        lres = lens_mod.load_results(out, prefix="lens")
        paths += lens_mod.save_figures(lres, figures, prefix="lens")
        print(lens_mod.table(lres))
    print(f"wrote {out}, {', '.join(paths)}", file=sys.stderr)
    return back


if __name__ == "__main__":
    main()
