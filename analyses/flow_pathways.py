"""The effective-pathways stage of ``python -m analyses.flow`` (``--pathways``,
``--find-pathways``; the pathways themselves are analyses/pathways.py): its
flags, its request (compared with the stored one on resume), the random-edge
control, and the arrays stored under /results/pathways.

The random-edge control (``--random-control``) in two forms:

- ``per-layer`` (the paper's, the default): in every layer its own draw of
  ``int(ratio * N (N + 1) / 2)`` causal edges (N = prompt length), without
  replacement, among the (query, key) pairs with first video token <= key <=
  query < N, as ``--target random --random_block_ratio`` of the authors'
  ``effective_pathway_analysis.py`` (a fresh ``randperm`` of the same valid
  entries per layer). The ratio is given (``--random-ratio``), or by default
  the share of causal edges the pathways cut over all samples (sum of cut
  edges / sum of L N (N + 1) / 2), as the paper's 0.58 for the 42% of edges
  the 7B model's pathways keep.
- ``uniform`` (chronolens's earlier control, ``analyses.pathways.random_knockout``):
  per sample as many causal edges as its pathways cut, drawn uniformly over
  (layer, query, key) in the same region, so the count per layer varies.

Both are scored as ``analyses.pathways.evaluate`` scores the pathways (the
argmax over the option letters against the label).
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

FORMS = ("per-layer", "uniform")


def per_layer_count(ratio: float, n_tokens: int) -> int:
    """Edges cut in every layer: int(ratio * N (N + 1) / 2)."""
    return int(ratio * (n_tokens * (n_tokens + 1) // 2))


def per_layer_random_knockout(layout, ratio: float, n_layers: int, seed, name: str | None = None):
    """The paper's random control on one input: in each layer its own
    ``per_layer_count(ratio, N)`` causal edges drawn without replacement among
    first video token <= key <= query < N. seed: an int or a sequence of ints
    (numpy ``default_rng``; layer l takes the l-th draw of that generator).
    -> ``LayeredKnockout`` of one ``DenseEdges`` per layer."""
    import torch

    from tracing.edges import DenseEdges
    from tracing.knockout import LayeredKnockout

    T, v0 = layout.n_tokens, layout.video.start
    tq, tk = np.tril_indices(T - v0)
    n = per_layer_count(ratio, T)
    if not 0 <= ratio <= 1 or n > len(tq):
        raise ValueError(f"random control: ratio {ratio} asks {n} edges per layer, {len(tq)} available after the "
                         f"first video token (of {T * (T + 1) // 2} causal edges per layer)")
    rng = np.random.default_rng(seed)
    name = name or f"random per layer {ratio:.4g} (seed {seed})"
    per = {}
    for l in range(n_layers):
        sel = rng.choice(len(tq), size=n, replace=False)
        mat = torch.zeros(T, T, dtype=torch.bool)
        mat[torch.from_numpy(v0 + tq[sel]), torch.from_numpy(v0 + tk[sel])] = True
        per[l] = DenseEdges(f"{name} L{l}", mat)
    return LayeredKnockout.per_layer(name, per)


def pathway_ratio(blocked: np.ndarray, n_tokens: Sequence[int], n_layers: int) -> float:
    """The share of causal edges the pathways cut over all samples: sum of
    ``blocked`` / sum of L N (N + 1) / 2."""
    total = sum(n_layers * n * (n + 1) // 2 for n in n_tokens)
    return float(np.sum(blocked) / total)


def random_control(ss, ev: dict, form: str = "per-layer", ratio: float | None = None, seeds: Sequence[int] = (0, 1, 2),
                   seed_base: int = 0) -> dict:
    """The random control of ``form`` for the pathways evaluated in ``ev``
    (``analyses.pathways.evaluate(ss, p, seeds=())``'s output, on the same
    ``SampleSet``): sample i under seed j uses the random generator seeded
    with (seed_base, j, i). -> ``ev`` with random_correct [R, N] bool,
    random_blocked [R, N], accuracy['random'] [R], seeds, random_control
    (form) and random_ratio (the ratio used; None for 'uniform')."""
    from analyses.pathways import blocked_count, random_knockout

    if form not in FORMS:
        raise ValueError(f"random control {form!r}: expected one of {', '.join(FORMS)}")
    L, N, R = ss.lm.n_layers, len(ss.samples), len(seeds)
    if form == "per-layer" and ratio is None:
        ratio = pathway_ratio(ev["blocked"], [lay.n_tokens for lay in ss.layouts], L)
    counts: dict = {}

    def make(i, lay):
        if form == "per-layer":
            conds = [per_layer_random_knockout(lay, ratio, L, (seed_base, int(s), i)) for s in seeds]
        else:
            conds = [random_knockout(lay, int(ev["blocked"][i]), L, (seed_base, int(s), i)) for s in seeds]
        counts[i] = [blocked_count(c, lay.n_tokens, L) for c in conds]
        return conds

    probs = ss.run(make, desc=f"random control ({form})") if R else [np.zeros((0, 0))] * N
    correct = np.zeros((R, N), bool)
    blocked = np.zeros((R, N), np.int64)
    for i, (p, y) in enumerate(zip(probs, ss.labels)):
        for j in range(R):
            correct[j, i] = int(p[j].argmax()) == y
            blocked[j, i] = counts[i][j]
    ev = dict(ev, random_correct=correct, random_blocked=blocked, seeds=[int(s) for s in seeds],
              random_control=form, random_ratio=None if form == "uniform" else float(ratio))
    ev["accuracy"] = dict(ev["accuracy"], random=correct.mean(1))
    return ev


def add_pathway_arguments(ap) -> None:
    """The stage's flags, as one argument group of ``ap``."""
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
                    help="seeds of the random-edge control (causal edges cut at random among positions >= the first "
                         "video token, see --random-control); 0: no control")
    pw.add_argument("--random-control", default="per-layer", choices=FORMS,
                    help="the random-edge control's form: per-layer (the paper's): in every layer its own "
                         "int(ratio * N(N+1)/2) random causal edges (N = prompt length), ratio = --random-ratio; "
                         "uniform: per sample as many edges as its pathways cut, drawn uniformly over (layer, "
                         "query, key), so the count per layer varies (analyses.flow_pathways)")
    pw.add_argument("--random-ratio", type=float, default=None,
                    help="per-layer control: the share of each layer's causal edges to cut (the paper's LLaVA-NeXT-7B "
                         "run: 0.58); default: the share the pathways cut, summed over all samples")


# Arguments of the pathways step: recorded with its results, not in the file's
# configuration, so that a file of flow maps can be extended with pathways.
PATHWAY_ARGS = ("pathways", "find_pathways", "tolerance", "pathway_threshold", "random_seeds", "random_control",
                "random_ratio")


def pathway_request(a, given=None) -> dict | None:
    """What the pathways step of this run computes (None: nothing); compared
    with the request stored in the file on resume."""
    if not (a.pathways or a.find_pathways):
        return None
    req = {"find": bool(a.find_pathways), "random_seeds": int(a.random_seeds), "seed": int(a.seed),
           "random_control": a.random_control}
    if a.random_control == "per-layer" and a.random_ratio is not None:
        req["random_ratio"] = float(a.random_ratio)
    if a.find_pathways:
        req.update(tolerance=float(a.tolerance), threshold=float(a.pathway_threshold))
    else:
        req["given"] = str(given)
    return req


def pathway_results(ev: dict, request: dict, n_layers: int, found: dict | None = None) -> dict:
    """``analyses.pathways.evaluate``'s output (and the search) -> {name: (array,
    attrs)} for /results/pathways/ (the engine's ``later_stage`` writes them)."""
    from analyses.pathways import TRACE_COLUMNS, parse_pathways, trace_array

    p = parse_pathways(ev["pathways"])
    attrs = {"request": request, "find": request["find"], "pathways": ev["pathways"], "ranges": p.to_dict(),
             "indexing": "1-indexed, inclusive", "seeds": ev["seeds"], "n_layers": n_layers,
             "tolerance": request.get("tolerance"), "threshold": request.get("threshold"),
             "random_control": ev.get("random_control", "uniform"), "random_ratio": ev.get("random_ratio")}
    if found is not None:
        attrs["within_tolerance"] = bool(found["within_tolerance"])
    out = {}
    for name in ("probs", "correct", "clean_correct", "blocked", "edge_share", "random_correct", "random_blocked"):
        arr = ev[name]
        out[name] = (arr.astype(np.int8) if arr.dtype == bool else arr, attrs)
    if found is not None:
        out["search"] = (trace_array(found["trace"]),
                         {**attrs, "steps": [t["step"] for t in found["trace"]], "columns": TRACE_COLUMNS})
    acc = ev["accuracy"]
    r = np.asarray(acc["random"], dtype=float)
    summary = np.array([acc["full"], acc["pathways"], r.mean() if r.size else np.nan,
                        r.std() if r.size else np.nan, float(ev["edge_share"].mean())])
    out["summary"] = (summary, {**attrs, "columns": ["accuracy full", "accuracy pathways", "accuracy random (mean)",
                                                     "accuracy random (sd)", "edge share kept"]})
    return out


def pathway_stage(a, lm, samples, res: dict, request: dict) -> dict:
    """The stage as the CLI runs it (``a``: its parsed arguments; ``res``: the
    flow results) -> ``pathway_results``: the given pathways or those
    ``find_pathways`` proposes from the flow maps, on all samples, and the
    random control of ``a.random_control``."""
    from analyses.pathways import STAGE_EDGES, SampleSet, evaluate, find_pathways
    from analyses.run import UsageError

    ss = SampleSet(lm, samples, progress=not a.no_progress)
    found = None
    if a.find_pathways:
        kept = np.asarray(res["kept"], bool)
        curves = {s: (np.nanmean(np.asarray(res["flow"][e])[kept], 0) if kept.any()
                      else np.zeros(lm.n_layers)) for s, e in STAGE_EDGES.items() if e in res["flow"]}
        found = find_pathways(ss, curves, a.tolerance, a.pathway_threshold, log=lambda m: print(m, file=sys.stderr))
        chosen = found["pathways"]
    else:
        chosen = a.given
    ev = evaluate(ss, chosen, seeds=(), seed_base=a.seed)
    try:
        ev = random_control(ss, ev, a.random_control, a.random_ratio, range(a.random_seeds), a.seed)
    except ValueError as err:
        raise UsageError(f"--random-ratio: {err}") from None
    return pathway_results(ev, request, lm.n_layers, found)
