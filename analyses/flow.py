"""Map the Flow (Kim, Kim, Han; ICLR 2026, arXiv 2510.13251): where does video
information travel to the answer? Attention knockout of one edge type
(cross-frame, video->question, video->last, question->last, ...) in a window of
k layers centred on every layer; the relative change of the answer's
probability, (p_KO - p_base) / p_base * 100, and the accuracy after knockout.
Also the layer-wise answer probability (each layer's last-position residual
stream through the unembedding).

    python -m analyses.flow --model organism --dataset synthetic --limit 6

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

Figures (PNG + PDF) are drawn from the file; notebooks/flow.ipynb redraws them.
"""
from __future__ import annotations

import argparse
import re
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
    return out


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
    if "layerwise" in res:
        paths += save(plot_layerwise(res), folder / "layerwise")
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
    return ap


def main(argv=None) -> dict:
    import torch

    from analyses.cli import default_out, figures_dir, load_data, load_from_args, run_config
    from tracing.store import ResultsFile

    ap = build_parser()
    a = ap.parse_args(argv)
    edge_names = parse_edges(a.edges)
    if a.window is not None and a.window < 1:
        ap.error(f"--window {a.window}: must be >= 1")
    out = Path(default_out("flow", a))
    figures = figures_dir(a, out)
    data = load_data(a)
    samples = data.samples
    lm = load_from_args(a)
    from tracing.knockout import EDGE_SETS, edges
    from tracing.inputs import build_sample_inputs

    _, lay = build_sample_inputs(lm, samples[0])
    for e in edge_names:  # fail early on a bad edge name
        try:
            edges(e, lay)
        except ValueError as err:
            ap.error(f"--edges: {err} (named sets: {', '.join(EDGE_SETS)})")
    torch.manual_seed(a.seed)
    res = flow_maps(lm, samples, edge_names, a.window, a.samples, progress=not a.no_progress,
                    layerwise=not a.no_layerwise)
    config = {kk: v for kk, v in run_config(a, edge_list=edge_names, k=res["k"]).items()
              if kk not in ("no_progress", "figures")}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # a results file of the same name is replaced by this run
    rf = ResultsFile.open(out, lm.name, lm.fingerprint, a.dataset, config, sample_metas(samples, res["pred"]))
    tasks = list(dict.fromkeys(s.task for s in samples))
    write_results(rf, res, tasks)
    back = load_results(out)
    paths = save_figures(back, figures)
    print(table(back))
    print(f"wrote {out}, {', '.join(paths)}", file=sys.stderr)
    return back


if __name__ == "__main__":
    main()
