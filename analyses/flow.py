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

The run engine (analyses/run.py) writes one unit per sample into the HDF5
file; ``load_results`` computes the maps from them (``reduce``), so figures
and tables can be redrawn, and runs merged, without the model. Per sample
(K options at most, E edge types, L layers):

    /acts/probs       [N, K]        clean option probabilities (NaN past a sample's options)
    /acts/pred        [N, 1]        the option letter of highest probability
    /acts/top         [N, 2]        the vocabulary's argmax: token id, option (-1: none)
    /acts/top_prob    [N, 1]        its probability
    /acts/kept        [N, 1]        1 if the sample entered the flow maps
    /acts/knockout    [N, E, L, K]  option probabilities with edge type e cut in the
                                    window around layer l (NaN when not kept)
    /acts/knockout_top       [N, E, L]  the option that is the vocabulary's argmax
                                        under it (-1: none, or not kept)
    /acts/knockout_top_prob  [N, E, L]  the probability of the clean argmax token
                                        under it (NaN when not kept)
    /acts/layerwise   [N, 4, L]     true, false, true_norm, false_norm option
                                    probability per layer (unless --no-layerwise)
    /acts/topk_ids@<readout>, /acts/topk_probs@<readout>, /results/lens/...
                                    the logit lens on the video tokens (--lens;
                                    see analyses/lens.py)

``load_results`` -> flow / flow_answer {edge: [N, L]} % change of the ground
truth's / the model's answer's probability, flow_correct, flow_acc (accuracy
after knockout), baseline, kept, accuracy, layerwise.

The model's answer (--answer-from): 'vocabulary' (the paper, default) the
argmax over the whole vocabulary, right only if it is the true option's
letter; 'letters' the argmax over the option letters. It decides which
samples are kept (--samples correct), the clean accuracy, the accuracy after
knockout and whose probability flow_answer follows (the argmax token's, as
the paper's "relative_diff"). Accuracy after knockout (--accuracy-over):
'all' (the paper, default) right answers of the kept samples divided by all
samples (a sample not kept counts as wrong); 'kept' the mean over the kept
samples. Both choices are in the file's configuration and on the figures.

With --pathways or --find-pathways (all samples, whatever --samples says; R =
--random-seeds), a later stage stores, with the request in its attributes
(not part of the file's identity, so a file of flow maps can be extended):

    /results/pathways/probs           [N, K] option probabilities under the pathways
    /results/pathways/correct         [N]    1 if answered correctly under them
    /results/pathways/clean_correct   [N]    1 if answered correctly without knockout
    /results/pathways/blocked         [N]    causal edges cut (summed over layers)
    /results/pathways/edge_share      [N]    share of causal edges kept
    /results/pathways/random_correct  [R, N] the same under the random-edge control
    /results/pathways/random_blocked  [R, N] edges the control cut (--random-control:
                                             per-layer, the paper's: L x int(ratio
                                             N(N+1)/2); uniform: = blocked)
    /results/pathways/search          [S, 10] --find-pathways steps: CF, VQ, QL, VL
                                             first/last (1-indexed; VL NaN if absent),
                                             accuracy, share kept
    /results/pathways/summary         [5]    accuracy full, pathways, random mean,
                                             random sd over seeds, mean share kept

A rerun of the same configuration resumes per sample; another configuration
is refused (the error names the differing settings) unless --overwrite, which
writes beside the file and swaps the new one in when it completes. Pathways of
another request are refused unless --overwrite, which keeps the flow maps.

Figures (PNG + PDF) and tables are drawn from the file (analyses/flow_figures.py);
notebooks/flow.ipynb redraws them.
"""
from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from analyses.flow_pathways import PATHWAY_ARGS, add_pathway_arguments, pathway_request, pathway_stage  # noqa: F401

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

LAYERWISE = ("true", "false", "true_norm", "false_norm")
ANSWER_FROM = ("vocabulary", "letters")  # the paper's first
ACCURACY_OVER = ("all", "kept")


def _check_choices(answer_from: str, accuracy_over: str = "all") -> None:
    if answer_from not in ANSWER_FROM:
        raise ValueError(f"answer_from={answer_from!r}: expected one of {', '.join(ANSWER_FROM)}")
    if accuracy_over not in ACCURACY_OVER:
        raise ValueError(f"accuracy_over={accuracy_over!r}: expected one of {', '.join(ACCURACY_OVER)}")


def top_option(top_ids, option_ids) -> np.ndarray:
    """Vocabulary argmax token ids [...] -> the option whose letter each is (-1: none)."""
    top_ids = np.asarray(top_ids)
    out = np.full(top_ids.shape, -1, np.int64)
    for j, t in enumerate(option_ids):
        out[top_ids == t] = j
    return out


def sample_arrays(lm, inputs, layout, edge_names, k: int, samples_mode: str, layerwise: bool, n_options: int,
                  lens=None, answer_from: str = "vocabulary") -> dict[str, np.ndarray]:
    """One sample's knockout sweep as the arrays the engine stores (K = n_options,
    the largest option count of the run; E edge types; L layers):

      probs      float32 [K]        clean option probabilities (NaN past its options)
      pred       int [1]            the option letter of highest probability
      top        int [2]            the vocabulary's argmax: token id, option (-1: none)
      top_prob   float32 [1]        its probability
      kept       int8 [1]           1 if the sample enters the flow maps
      knockout   float32 [E, L, K]  option probabilities with edge type e cut in
                                    window(l, k, L); NaN when not kept
      knockout_top       int8 [E, L]     the vocabulary argmax's option under it (-1: none)
      knockout_top_prob  float32 [E, L]  probability of the clean argmax token under it
      layerwise  float32 [4, L]     LAYERWISE probabilities per layer (if asked)
      topk_ids@<readout>, topk_probs@<readout>   the logit lens (if ``lens``)
    """
    import torch

    from tracing.edges import edges
    from tracing.knockout import KnockoutRunner, window

    _check_choices(answer_from)
    L, E = lm.n_layers, len(edge_names)
    runner = KnockoutRunner(lm, inputs, layout)
    ids = list(layout.option_ids)
    full0 = torch.softmax(runner.clean_logits.float(), -1)
    p0 = full0[ids].cpu().numpy()
    top = int(full0.argmax())
    probs = np.full(n_options, np.nan, np.float32)
    probs[: len(p0)] = p0
    pred = int(np.argmax(p0))
    out = {"probs": probs, "pred": np.array([pred]), "top": np.array([top, top_option(top, ids)]),
           "top_prob": np.array([full0[top].item()], np.float32)}
    answer = int(out["top"][1]) if answer_from == "vocabulary" else pred
    if layerwise:
        lw = layerwise_probs(lm, inputs, layout, runner=runner)
        out["layerwise"] = np.stack([lw[n] for n in LAYERWISE]).astype(np.float32)
    kept = samples_mode == "all" or answer == layout.answer
    ko = np.full((E, L, n_options), np.nan, np.float32)
    ko_top, ko_top_p = np.full((E, L), -1, np.int8), np.full((E, L), np.nan, np.float32)
    if kept:
        conds = [(edges(e, layout), window(c, k, L)) for e in edge_names for c in range(L)]
        with torch.no_grad():
            full = torch.softmax(runner.logits(conds).float(), -1)
        ko[..., : len(p0)] = full[:, ids].cpu().numpy().reshape(E, L, -1)
        ko_top[:] = top_option(full.argmax(-1).cpu().numpy(), ids).reshape(E, L)
        ko_top_p[:] = full[:, top].cpu().numpy().reshape(E, L)
    out.update(kept=np.array([kept], np.int8), knockout=ko, knockout_top=ko_top, knockout_top_prob=ko_top_p)
    if lens is not None:
        out.update(lens.arrays(inputs, layout)[0])
    return out


def declare(lm, samples, edge_names=DEFAULT_EDGES, k: int | None = None, samples_mode: str = "correct",
            layerwise: bool = True, lens=None, config: dict | None = None, answer_from: str = "vocabulary",
            accuracy_over: str = "all"):
    """Map the Flow on every sample as a run-engine declaration (one unit per
    sample, ``sample_arrays``). lens: an ``analyses.lens.LensUnits`` to store the
    logit lens of the same forward passes. answer_from, accuracy_over: see the
    module docstring (the paper's 'vocabulary', 'all' by default); both are
    recorded in the configuration."""
    from analyses.run import Declaration, SkipUnit
    from tracing.inputs import build_sample_inputs
    from tracing.knockout import default_window
    from tracing.store import SampleMeta

    if samples_mode not in ("correct", "all"):
        raise ValueError(f"samples_mode={samples_mode!r}: expected 'correct' or 'all'")
    _check_choices(answer_from, accuracy_over)
    L = lm.n_layers
    k = default_window(L) if k is None else int(k)
    K, E = max(len(s.options) for s in samples), len(edge_names)
    shapes = {"probs": ((K,), "float32"), "pred": ((1,), "int64"), "kept": ((1,), "int8"),
              "knockout": ((E, L, K), "float32"), "top": ((2,), "int64"), "top_prob": ((1,), "float32"),
              "knockout_top": ((E, L), "int8"), "knockout_top_prob": ((E, L), "float32")}
    if layerwise:
        shapes["layerwise"] = ((len(LAYERWISE), L), "float32")
    if lens is not None:
        shapes.update(lens.shapes)

    def compute(i):
        try:
            inputs, layout = build_sample_inputs(lm, samples[i])
        except ValueError as e:
            raise SkipUnit(str(e)) from None
        return sample_arrays(lm, inputs, layout, edge_names, k, samples_mode, layerwise, K, lens, answer_from), \
            layout.to_dict(), {}

    units = [SampleMeta(s.id, s.task, int(s.answer), -1, {"question": s.question, "options": list(s.options)})
             for s in samples]
    cfg = {"edge_list": list(edge_names), "k": k, "samples": samples_mode, "layerwise": bool(layerwise),
           "answer_from": answer_from, "accuracy_over": accuracy_over,
           **({} if lens is None else {"lens": lens.config}), **(config or {})}
    return Declaration("flow", cfg, units, compute, shapes=shapes, static=None if lens is None else lens.static,
                       describe="flow maps")


def reduce(arrays: dict[str, np.ndarray], label: np.ndarray, edge_names, k: int, answer_from: str = "vocabulary",
           accuracy_over: str = "all") -> dict:
    """The flow results from the per-sample arrays (``sample_arrays``, stacked
    over N samples) -> dict with (L layers, K options):
      baseline [N, K], pred [N] (the answer by ``answer_from``; -1: the
      vocabulary's argmax is no option letter), label [N], kept [N] bool,
      n_options [N],
      flow / flow_answer: {edge: [N, L]} % change of the ground truth's / the
      answer's probability (NaN where not kept), flow_correct {edge: [N, L]}
      (1 if the knocked-out model answers right, by ``answer_from``; NaN where
      not kept), flow_acc {edge: [L]} (the mean of ``accuracy_rows`` over all
      samples), accuracy (clean, all samples), k, edges, answer_from,
      accuracy_over, layerwise {'true', 'false', 'true_norm', 'false_norm':
      [N, L]} if stored.
    answer_from 'vocabulary': the answer is the vocabulary's argmax
    (``knockout_top``) and flow_answer follows the clean argmax token
    (``knockout_top_prob`` against ``top_prob``), whatever token it is;
    'letters': the argmax over the option letters and its probability.
    Arrays of files written before these choices (no ``top``) allow 'letters' only."""
    _check_choices(answer_from, accuracy_over)
    if answer_from == "vocabulary" and "knockout_top" not in arrays:
        raise ValueError("answer_from='vocabulary' needs the stored vocabulary argmax (top, knockout_top): "
                         "this file predates it; use answer_from='letters'")
    base = arrays["probs"].astype(float)
    N = len(base)
    pred = (arrays["top"][:, 1] if answer_from == "vocabulary" else arrays["pred"][:, 0]).astype(int)
    kept = arrays["kept"][:, 0].astype(bool)
    rows = np.arange(N)
    out = {"baseline": base, "pred": pred, "label": label, "kept": kept, "n_options": np.isfinite(base).sum(1),
           "flow": {}, "flow_answer": {}, "flow_correct": {}, "flow_acc": {},
           "accuracy": float((pred == label).mean()), "k": k, "edges": list(edge_names),
           "answer_from": answer_from, "accuracy_over": accuracy_over}
    for j, e in enumerate(edge_names):
        p = arrays["knockout"][:, j].astype(float)  # [N, L, K]
        out["flow"][e] = rel_change(p[rows, :, label], base[rows, label][:, None])
        if answer_from == "vocabulary":
            top_p = arrays["top_prob"][:, :1].astype(float)
            out["flow_answer"][e] = rel_change(arrays["knockout_top_prob"][:, j].astype(float), top_p)
            answer = arrays["knockout_top"][:, j].astype(int)  # [N, L]
        else:
            out["flow_answer"][e] = rel_change(p[rows, :, pred], base[rows, pred][:, None])
            answer = np.nan_to_num(p, nan=-1.0).argmax(-1)
        correct = (answer == label[:, None]).astype(float)
        correct[~kept] = np.nan
        out["flow_correct"][e] = correct
    for e in edge_names:
        vals = accuracy_rows(out, e, np.ones(N, bool))
        out["flow_acc"][e] = vals.mean(0) if len(vals) else np.full(vals.shape[1], np.nan)
    if "layerwise" in arrays:
        out["layerwise"] = {n: arrays["layerwise"][:, i].astype(float) for i, n in enumerate(LAYERWISE)}
    return out


def accuracy_rows(res: dict, edge: str, rows: np.ndarray) -> np.ndarray:
    """The [n, L] 0/1 values whose mean over samples is the accuracy after
    knockout of ``edge`` among ``rows`` (bool [N]), by res['accuracy_over']:
    'all' (the paper): every row, a sample not kept counting as wrong (the
    paper's right answers / all samples); 'kept': the kept rows only."""
    c = res["flow_correct"][edge]
    if res.get("accuracy_over", "kept") == "all":
        return np.nan_to_num(c[rows], nan=0.0)
    return c[rows & res["kept"]]


def clean_accuracy(res: dict, rows: np.ndarray) -> float:
    """Accuracy without knockout on the samples ``accuracy_rows`` averages over."""
    m = rows if res.get("accuracy_over", "kept") == "all" else rows & res["kept"]
    return float((res["pred"][m] == res["label"][m]).mean()) if m.any() else float("nan")


def flow_maps(lm, samples, edge_names=DEFAULT_EDGES, k: int | None = None, samples_mode: str = "correct",
              progress: bool = True, layerwise: bool = True, answer_from: str = "vocabulary",
              accuracy_over: str = "all") -> dict:
    """The flow results of ``samples`` in memory, without a file (``run`` writes
    one): every sample's ``sample_arrays`` -> ``reduce``. With samples_mode
    'correct' only correctly answered samples enter the maps ('all': every one)."""
    from tqdm import tqdm

    decl = declare(lm, samples, edge_names, k, samples_mode, layerwise, answer_from=answer_from,
                   accuracy_over=accuracy_over)
    per = [decl.compute(i)[0] for i in tqdm(range(len(samples)), desc="flow maps", unit="sample",
                                             disable=not progress)]
    arrays = {n: np.stack([x[n] for x in per]) for n in per[0]}
    return reduce(arrays, np.array([int(s.answer) for s in samples]), edge_names, decl.config["k"], answer_from,
                  accuracy_over)


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


def full_block_accuracy(lm, samples, edge_name: str, progress: bool = False,
                        answer_from: str = "vocabulary") -> tuple[np.ndarray, np.ndarray]:
    """Cut edge_name in every layer of every sample -> (correct [N] bool under
    the knockout, clean correct [N] bool); the answer as ``answer_from``."""
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs
    from tracing.edges import edges
    from tracing.knockout import KnockoutRunner

    ko, clean = [], []
    for s in tqdm(samples, desc=edge_name, disable=not progress):
        inputs, layout = build_sample_inputs(lm, s)
        r = KnockoutRunner(lm, inputs, layout)
        ids = list(layout.option_ids)
        for logits, to in ((r.logits([(edges(edge_name, layout), range(lm.n_layers))])[0], ko),
                           (r.clean_logits, clean)):
            a = int(top_option(int(logits.argmax()), ids)) if answer_from == "vocabulary" else \
                int(logits[ids].argmax())
            to.append(a == s.answer)
    return np.array(ko), np.array(clean)


# ---------------------------------------------------------------- results file

def load_results(path, accuracy_over: str | None = None) -> dict:
    """The flow results of the file at path -> ``reduce``'s dict (edges in run
    order), plus 'task' [N], 'tasks', 'model', 'config' and, when stored, the
    pathway results ('pathways', with their request in 'attrs'). The answer
    rule and the accuracy's denominator are the run's (files written before
    they were recorded: 'letters', 'kept'); ``accuracy_over`` redraws with the
    other denominator."""
    from analyses.run import stored
    from tracing.store import CacheReader

    r = CacheReader(path)
    if "knockout" not in r.hooks:
        raise KeyError(f"{path}: no flow results (it holds {r.hooks}); run python -m analyses.flow first")
    cfg = r.config
    fills = {"probs": np.nan, "knockout": np.nan, "layerwise": np.nan, "pred": -1, "kept": 0, "top": -1,
             "top_prob": np.nan, "knockout_top": -1, "knockout_top_prob": np.nan}
    arrays = {n: stored(path, n, fill) for n, fill in fills.items() if n in r.hooks}
    out = reduce(arrays, np.array(r.samples["gold"]), cfg["edge_list"], cfg["k"], cfg.get("answer_from", "letters"),
                 accuracy_over or cfg.get("accuracy_over", "kept"))
    task = np.array(r.samples["task"]).astype(str)
    out.update(task=task, tasks=list(dict.fromkeys(task.tolist())), config=cfg, model=r.attrs.get("model"))
    names = r.results()
    if "pathways/request" in names:  # written last: the pathway results are complete
        pw = {n.split("/", 1)[1]: r.result(n)[0] for n in names if n.startswith("pathways/") and n != "pathways/request"}
        pw["attrs"] = r.result("pathways/summary")[1]
        out["pathways"] = pw
    return out


def run(lm, samples, out, edge_names=DEFAULT_EDGES, k: int | None = None, samples_mode: str = "correct",
        layerwise: bool = True, lens=None, dataset: str = "synthetic", config: dict | None = None,
        overwrite: bool = False, progress: bool = True, answer_from: str = "vocabulary",
        accuracy_over: str = "all") -> dict:
    """Map the Flow on every sample into the HDF5 file ``out`` on the run engine
    (resumable per sample; another configuration refused unless ``overwrite``)
    -> load_results(out). answer_from ('vocabulary' | 'letters') and
    accuracy_over ('all' | 'kept'): as --answer-from and --accuracy-over."""
    from analyses import run as engine

    decl = declare(lm, samples, edge_names, k, samples_mode, layerwise, lens, config, answer_from, accuracy_over)
    done = engine.run(decl, out, lm.name, lm.fingerprint, dataset, overwrite=overwrite, progress=progress)
    return load_results(done.path)


# ---------------------------------------------------------------- CLI

def parse_edges(spec: str) -> list[str]:
    """'cross_frame,video->question,trailing,last' -> ['cross_frame',
    'video->question,trailing,last']: a comma starts a new edge type unless the
    next piece is a bare span name continuing a 'src->tgt' string."""
    from tracing.edges import EDGE_SETS

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
                    help="comma-separated edge types: names of tracing.edges.EDGE_SETS (cross_frame, "
                         "video_question, video_last, question_last, last_last, ...) or 'src->tgt' strings "
                         "(use ';' inside one string for several span pairs)")
    ap.add_argument("--samples", default="correct", choices=["correct", "all"],
                    help="which samples enter the flow maps: the correctly answered ones (the paper) or all")
    ap.add_argument("--answer-from", default="vocabulary", choices=ANSWER_FROM,
                    help="the model's answer: the argmax over the whole vocabulary, right only if it is the true "
                         "option's letter (the paper), or the argmax over the option letters; decides the kept "
                         "samples, the accuracies and whose probability flow_answer follows")
    ap.add_argument("--accuracy-over", default="all", choices=ACCURACY_OVER,
                    help="accuracy after knockout: right answers of the kept samples over all samples, a sample not "
                         "kept counting as wrong (the paper), or the mean over the kept samples")
    ap.add_argument("--no-layerwise", action="store_true",
                    help="skip the layer-wise answer probability (one extra forward per sample)")
    add_pathway_arguments(ap)
    lens = ap.add_argument_group("logit lens on video tokens (analyses/lens.py; also python -m analyses.lens)")
    lens.add_argument("--lens", action="store_true",
                      help="also run the logit lens on the video tokens (residual stream entering each layer against "
                           "the input embedding and the unembedding) and count top-1 words of --lens-words per layer "
                           "bin; stored under /results/lens, figures lens_*")
    lens.add_argument("--lens-words", default="auto",
                      help="word lists: a preset ('synthetic', 'paper'; auto picks by --dataset), "
                           "'spatial=left,right;temporal=first,then', or a JSON file {list: [words]}")
    return ap


def prepare(argv):
    """The CLI arguments -> run.Prepared (model, declaration, dataset), in the
    driver and in every Ray worker."""
    import torch

    from analyses.cli import check_flags, load_data, load_from_args, preflight, run_config
    from analyses.pathways import STAGE_EDGES, STAGES, parse_pathways
    from analyses.run import Prepared, UsageError

    a = build_parser().parse_args(argv)
    check_flags(a)
    edge_names = parse_edges(a.edges)
    if a.window is not None and a.window < 1:
        raise UsageError(f"--window {a.window}: must be >= 1")
    if a.pathways and a.find_pathways:
        raise UsageError("--pathways and --find-pathways: give one (the first evaluates given ranges, the second "
                         "finds them)")
    if a.tolerance < 0 or a.random_seeds < 0:
        raise UsageError("--tolerance and --random-seeds must be >= 0")
    if a.random_ratio is not None and (not 0 < a.random_ratio <= 1 or a.random_control != "per-layer"):
        raise UsageError(f"--random-ratio {a.random_ratio}: a share in (0, 1], for --random-control per-layer")
    if a.find_pathways:
        missing = [STAGE_EDGES[s] for s in STAGES if STAGE_EDGES[s] not in edge_names]
        if missing:
            raise UsageError(f"--find-pathways reads the flow maps of {', '.join(STAGE_EDGES.values())}; "
                             f"add {', '.join(missing)} to --edges")
    out = preflight("flow", a)
    samples = load_data(a).samples
    lm = load_from_args(a)
    from tracing.inputs import build_sample_inputs
    from tracing.edges import EDGE_SETS, edges
    from tracing.knockout import default_window

    _, lay = build_sample_inputs(lm, samples[0])
    for e in edge_names:  # fail early on a bad edge name
        try:
            edges(e, lay)
        except ValueError as err:
            raise UsageError(f"--edges: {err} (named sets: {', '.join(EDGE_SETS)})") from None
    a.given = None
    if a.pathways:
        try:
            a.given = parse_pathways(a.pathways, lm.n_layers)
        except ValueError as err:
            raise UsageError(f"--pathways: {err}") from None
    if a.window is not None and a.window > lm.n_layers:
        raise UsageError(f"--window {a.window}: the model has {lm.n_layers} layers")
    k = default_window(lm.n_layers) if a.window is None else a.window
    lens = None
    if a.lens:
        from analyses import lens as lens_mod

        lens = lens_mod.LensUnits(lm, [build_sample_inputs(lm, s)[1] for s in samples],
                                  lens_mod.parse_words(a.lens_words, a.dataset), warn=False)
    # what the declaration records itself, and what is not a result's setting, is left out
    config = {kk: v for kk, v in run_config(a).items()
              if kk not in PATHWAY_ARGS + ("edges", "window", "samples", "no_layerwise", "lens", "lens_words", "given",
                                           "answer_from", "accuracy_over")}
    torch.manual_seed(a.seed)
    decl = declare(lm, samples, edge_names, k, a.samples, not a.no_layerwise, lens, config, a.answer_from,
                   a.accuracy_over)
    a.samples_list = samples
    return Prepared(lm, decl, a.dataset, a, out)


def main(argv=None) -> dict:
    from analyses import run as engine
    from analyses.cli import figures_dir
    from analyses.flow_figures import pathways_table, save_figures, table

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    a, lm, out, samples = p.args, p.lm, p.out, p.args.samples_list
    engine.run(p.decl, out, lm.name, lm.fingerprint, p.dataset, **engine.engine_options(a, "analyses.flow", argv))
    res = load_results(out)
    request = pathway_request(a, a.given)
    if request is not None:
        engine.later_stage(out, "pathways", request, lambda: pathway_stage(a, lm, samples, res, request),
                           overwrite=a.overwrite)
        res = load_results(out)
    figures = figures_dir(a, out)
    paths = save_figures(res, figures)
    print(table(res))
    if "pathways" in res:
        print(pathways_table(res))
    if a.lens:
        from analyses import lens as lens_mod
        from analyses import lens_figures

        lres = lens_mod.load_results(out, prefix="lens")
        paths += lens_figures.save_figures(lres, figures, prefix="lens")
        print(lens_figures.table(lres))
    print(f"wrote {out}, {', '.join(paths)}", file=sys.stderr)
    return res


if __name__ == "__main__":
    from analyses.run import cli_boundary

    raise SystemExit(cli_boundary(main)())
