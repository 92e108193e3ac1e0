"""Effective pathways (Map the Flow, Kim, Kim, Han; ICLR 2026, section
"effective pathways"): keep each stage of the information flow only in its own
layer range, cut everything else the stages do not need, and see whether the
model still answers.

Stages and their ranges (1-indexed, inclusive, as in the paper):

    CF  cross-frame attention (frame i reads frames j < i)
    VQ  video -> question (the question includes the options)
    QL  question -> last
    VL  video -> last: optional, beyond the paper (which cuts it everywhere),
        for models that read the video straight into the last position

In layer l (1-indexed) the pathway condition cuts:
    - cross-frame edges if l is outside CF;
    - video -> question if l is outside VQ;
    - question -> last if l is outside QL;
    - video -> last in every layer (outside VL when VL is given), and
      last -> last in every layer;
    - all video <-> video attention (video queries reading video keys, within a
      frame and the diagonal included) once VQ has ended (l > VQ end);
    - all question <-> question attention once QL has ended (l > QL end).
The system prompt and the trailing prompt (between the options and the last
position) are never cut, as queries or as keys.

Share of edges kept: unmasked lower-triangle entries summed over layers over
L * N (N + 1) / 2 (N = prompt length). Random control: the same number of
causal edges, drawn uniformly at random (without replacement) among the
(layer, query, key) triples with first video token <= key <= query < N.

``find_pathways`` proposes the ranges from the flow maps themselves (see its
docstring).

A library module: pathways are run by ``python -m analyses.flow
--find-pathways`` (or ``--pathways CF=a-b,VQ=c-d,QL=e-f``), stored in the flow
file; ``python -m analyses.pathways`` says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

STAGES = ("CF", "VQ", "QL")  # the paper's three, always given
EXTRA = ("VL",)  # optional: video -> last kept in a range
STAGE_EDGES = {"CF": "cross_frame", "VQ": "video_question", "QL": "question_last", "VL": "video_last"}


# ---------------------------------------------------------------- the ranges
@dataclass(frozen=True)
class Pathways:
    """Layer ranges in which each stage is kept: ``ranges[i] = (first, last)``,
    1-indexed and inclusive, in the order CF, VQ, QL and optionally VL."""

    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self):
        if len(self.ranges) not in (len(STAGES), len(STAGES) + len(EXTRA)):
            raise ValueError(f"pathways: need ranges for {', '.join(STAGES)} (and optionally "
                             f"{', '.join(EXTRA)}), got {self.ranges}")
        for s, (a, b) in zip(self.stages, self.ranges):
            if not 1 <= a <= b:
                raise ValueError(f"pathways: {s}={a}-{b} is not a range of layers (1-indexed, first <= last)")

    @property
    def stages(self) -> tuple[str, ...]:
        return (STAGES + EXTRA)[: len(self.ranges)]

    def __getitem__(self, stage: str) -> tuple[int, int]:
        return self.ranges[self.stages.index(stage)]

    def __contains__(self, stage: str) -> bool:
        return stage in self.stages

    def __str__(self) -> str:
        return ",".join(f"{s}={a}-{b}" for s, (a, b) in zip(self.stages, self.ranges))

    def kept(self, stage: str) -> range:
        """0-indexed layers in which the stage is kept."""
        a, b = self[stage]
        return range(a - 1, b)

    def check(self, n_layers: int) -> "Pathways":
        for s, (a, b) in zip(self.stages, self.ranges):
            if b > n_layers:
                raise ValueError(f"pathways: {s}={a}-{b} goes past the model's {n_layers} layers "
                                 f"(ranges are 1-indexed, 1..{n_layers})")
        return self

    def replace(self, stage: str, rng: tuple[int, int]) -> "Pathways":
        r = list(self.ranges)
        r[self.stages.index(stage)] = tuple(rng)
        return Pathways(tuple(r))

    def to_dict(self) -> dict:
        return {s: list(r) for s, r in zip(self.stages, self.ranges)}


def parse_pathways(spec: str, n_layers: int | None = None) -> Pathways:
    """'CF=6-15,VQ=6-20,QL=16-25' (1-indexed, inclusive; 'CF=3' is one layer;
    an optional 'VL=a-b' keeps video -> last there) -> Pathways. Every stage
    at most once; CF, VQ and QL required."""
    got: dict[str, tuple[int, int]] = {}
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\w+)\s*=\s*(\d+)(?:\s*-\s*(\d+))?", part)
        if not m or m.group(1).upper() not in STAGES + EXTRA:
            raise ValueError(f"pathways {spec!r}: bad part {part!r}; expected e.g. 'CF=6-15,VQ=6-20,QL=16-25' "
                             "(stages CF, VQ, QL, optional VL; layers 1-indexed, inclusive)")
        s = m.group(1).upper()
        if s in got:
            raise ValueError(f"pathways {spec!r}: {s} given twice")
        a = int(m.group(2))
        got[s] = (a, int(m.group(3)) if m.group(3) else a)
    missing = [s for s in STAGES if s not in got]
    if missing:
        raise ValueError(f"pathways {spec!r}: missing {', '.join(missing)} (give all of {', '.join(STAGES)})")
    p = Pathways(tuple(got[s] for s in STAGES + EXTRA if s in got))
    return p if n_layers is None else p.check(n_layers)


# ---------------------------------------------------------------- conditions
def pathway_knockout(p: Pathways, layout, n_layers: int):
    """The pathway condition on one input -> ``tracing.knockout.LayeredKnockout``
    (see the module docstring for what is cut in which layer)."""
    from tracing.edges import edges
    from tracing.knockout import LayeredKnockout

    p.check(n_layers)
    L = n_layers
    outside = lambda s: [l for l in range(L) if l not in p.kept(s)]  # noqa: E731
    parts = [(edges(STAGE_EDGES[s], layout), outside(s)) for s in p.stages]
    if "VL" not in p:
        parts.append((edges("video_last", layout), range(L)))
    parts.append((edges("last_last", layout), range(L)))
    parts.append((edges("video->video", layout), range(p["VQ"][1], L)))  # 0-indexed: after the 1-indexed end
    parts.append((edges("question->question", layout), range(p["QL"][1], L)))
    return LayeredKnockout.of(f"pathways {p}", [(es, ls) for es, ls in parts if len(ls)])


def blocked_count(cond, n_tokens: int, n_layers: int) -> int:
    """Causal (lower-triangle, diagonal included) entries a condition cuts,
    summed over layers."""
    import torch

    from tracing.edges import union_blocked

    tril = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()
    per: dict = {}
    total = 0
    for l in range(n_layers):
        sets = cond.at(l)
        if sets not in per:
            per[sets] = int((union_blocked(sets, 0, n_tokens, n_tokens) & tril).sum()) if sets else 0
        total += per[sets]
    return total


def n_causal(n_tokens: int, n_layers: int) -> int:
    """L * N (N + 1) / 2: every causal edge of every layer."""
    return n_layers * n_tokens * (n_tokens + 1) // 2


def edge_share(cond, n_tokens: int, n_layers: int) -> float:
    """Share of causal edges a condition keeps: 1 - blocked / (L N (N+1) / 2)."""
    return 1.0 - blocked_count(cond, n_tokens, n_layers) / n_causal(n_tokens, n_layers)


def random_knockout(layout, n_blocked: int, n_layers: int, seed, name: str | None = None):
    """The random-edge control: ``n_blocked`` causal edges drawn uniformly
    without replacement among the (layer, query, key) triples with
    first video token <= key <= query < N. seed: an int or a sequence of ints
    (numpy ``default_rng``); the same seed gives the same edges.
    -> ``LayeredKnockout`` of one ``DenseEdges`` per layer that loses edges."""
    import torch

    from tracing.edges import DenseEdges
    from tracing.knockout import LayeredKnockout

    T, v0 = layout.n_tokens, layout.video.start
    m = T - v0
    tq, tk = np.tril_indices(m)
    M = len(tq)
    if not 0 <= n_blocked <= n_layers * M:
        raise ValueError(f"random control: {n_blocked} edges asked, {n_layers * M} available after the first "
                         f"video token ({n_layers} layers x {M})")
    idx = np.sort(np.random.default_rng(seed).choice(n_layers * M, size=int(n_blocked), replace=False))
    layer, r = np.divmod(idx, M)
    name = name or f"random {n_blocked} (seed {seed})"
    per = {}
    for l in np.unique(layer):
        mat = torch.zeros(T, T, dtype=torch.bool)
        sel = r[layer == l]
        mat[torch.from_numpy(v0 + tq[sel]), torch.from_numpy(v0 + tk[sel])] = True
        per[int(l)] = DenseEdges(f"{name} L{int(l)}", mat)
    return LayeredKnockout.per_layer(name, per)


# ---------------------------------------------------------------- evaluation
class SampleSet:
    """A list of samples, their layouts and clean answers, and a way to run
    many conditions on each. KnockoutRunners (with their inputs) are kept
    between calls while all of them fit in ``keep_bytes``; otherwise each call
    rebuilds them (one clean pass per sample) and nothing per sample is kept
    but its layout."""

    def __init__(self, lm, samples, progress: bool = False, keep_bytes: int = 2**31):
        self.lm, self.samples, self.progress = lm, list(samples), progress
        self.labels = np.array([int(s.answer) for s in self.samples])
        self._runners: list = [None] * len(self.samples)
        self._keep, self._budget = True, keep_bytes
        self._shares: dict = {}
        self.layouts, self.clean = [], []
        for i in range(len(self.samples)):
            r = self.runner(i)
            self.layouts.append(r.layout)
            self.clean.append(r.clean().float().cpu().numpy())
        self.clean_correct = np.array([int(np.argmax(p)) == y for p, y in zip(self.clean, self.labels)])

    def runner(self, i: int):
        from tracing.inputs import build_sample_inputs
        from tracing.knockout import KnockoutRunner

        if self._runners[i] is not None:
            return self._runners[i]
        r = KnockoutRunner(self.lm, *build_sample_inputs(self.lm, self.samples[i]))
        if self._keep:
            size = sum(t.numel() * t.element_size() for t in [*r.hidden, *r.keys, *r.values])
            if size * len(self.samples) <= self._budget:
                self._runners[i] = r
            else:
                self._keep = False
        return r

    def run(self, make: Callable[[int, object], list], desc: str = "pathways") -> list[np.ndarray]:
        """make(i, layout) -> conditions for sample i.
        -> per sample, option probabilities [n_conditions, n_options]."""
        import torch
        from tqdm import tqdm

        out = []
        for i in tqdm(range(len(self.samples)), desc=desc, unit="sample", disable=not self.progress):
            conds = make(i, self.layouts[i])
            with torch.no_grad():
                out.append(self.runner(i).run(conds).float().cpu().numpy() if conds else np.zeros((0, 0)))
        return out

    def score(self, pathways: Sequence[Pathways]) -> tuple[np.ndarray, np.ndarray]:
        """Under each pathway condition, over all samples: accuracy [n] and the
        mean probability of the ground-truth letter [n]."""
        L = self.lm.n_layers
        probs = self.run(lambda i, lay: [pathway_knockout(p, lay, L) for p in pathways], desc="pathway search")
        correct = np.array([p.argmax(-1) == y for p, y in zip(probs, self.labels)])  # [N, n]
        truth = np.array([p[:, y] for p, y in zip(probs, self.labels)])  # [N, n]
        return correct.mean(0), truth.mean(0)

    def accuracy(self, pathways: Sequence[Pathways]) -> np.ndarray:
        """Accuracy (all samples) under each pathway condition -> [n]."""
        return self.score(pathways)[0]

    def share(self, p: Pathways) -> float:
        """Mean over samples of the share of edges kept (computed once per distinct layout)."""
        L = self.lm.n_layers
        vals = []
        for lay in self.layouts:
            k = (lay.to_json(), str(p))
            if k not in self._shares:
                self._shares[k] = edge_share(pathway_knockout(p, lay, L), lay.n_tokens, L)
            vals.append(self._shares[k])
        return float(np.mean(vals))


def evaluate(ss: SampleSet, p: Pathways, seeds: Sequence[int] = (0, 1, 2), seed_base: int = 0) -> dict:
    """The pathway condition and its random controls on every sample.

    seeds: random-control seeds; sample i under seed j uses the random
    generator seeded with (seed_base, j, i), so one seed gives one mask per
    sample, the same on every run.
    -> dict (N samples, K max options, R seeds):
       probs [N, K] (NaN padded), correct [N] bool, blocked [N], edge_share [N],
       random_correct [R, N] bool, random_blocked [R, N], clean_correct [N] bool,
       accuracy {'full', 'pathways', 'random' [R]}, pathways (str), seeds."""
    L = ss.lm.n_layers
    N = len(ss.samples)
    K = max(len(c) for c in ss.clean)
    counts = {}  # sample -> (edges the pathways cut, edges each random control cuts); no masks kept

    def make(i, lay):
        pw = pathway_knockout(p, lay, L)
        nb = blocked_count(pw, lay.n_tokens, L)
        rnd = [random_knockout(lay, nb, L, (seed_base, int(s), i)) for s in seeds]
        counts[i] = (nb, [blocked_count(c, lay.n_tokens, L) for c in rnd])
        return [pw, *rnd]

    probs = ss.run(make, desc="pathways + random")
    out = {"probs": np.full((N, K), np.nan), "correct": np.zeros(N, bool), "blocked": np.zeros(N, np.int64),
           "edge_share": np.zeros(N), "random_correct": np.zeros((len(seeds), N), bool),
           "random_blocked": np.zeros((len(seeds), N), np.int64), "clean_correct": ss.clean_correct.copy(),
           "pathways": str(p), "seeds": [int(s) for s in seeds]}
    for i, (pr, y, lay) in enumerate(zip(probs, ss.labels, ss.layouts)):
        nb, rb = counts[i]
        out["probs"][i, : pr.shape[1]] = pr[0]
        out["correct"][i] = int(pr[0].argmax()) == y
        out["blocked"][i] = nb
        out["edge_share"][i] = 1.0 - nb / n_causal(lay.n_tokens, L)
        for j in range(len(seeds)):
            out["random_correct"][j, i] = int(pr[1 + j].argmax()) == y
            out["random_blocked"][j, i] = rb[j]
    out["accuracy"] = {"full": float(ss.clean_correct.mean()), "pathways": float(out["correct"].mean()),
                       "random": out["random_correct"].mean(1)}
    return out


# ---------------------------------------------------------------- the search
def seed_ranges(curves: dict[str, np.ndarray], threshold: float, stages=STAGES) -> Pathways:
    """From the flow maps: per stage, the hull [first, last] (1-indexed) of the
    window centres whose mean % change of the ground truth's probability is
    <= -threshold; if none, the single most harmful centre."""
    ranges = []
    for s in stages:
        m = np.nan_to_num(np.asarray(curves[s], dtype=float), nan=0.0)
        hit = np.flatnonzero(m <= -threshold)
        if hit.size == 0:
            hit = np.array([int(np.argmin(m))])
        ranges.append((int(hit.min()) + 1, int(hit.max()) + 1))
    return Pathways(tuple(ranges))


def _moves(p: Pathways, L: int, grow: bool) -> list[Pathways]:
    """Every range one layer longer (grow) or shorter (shrink, never empty), in
    a fixed order: stages in order (CF, VQ, QL, VL), the lower end first."""
    out = []
    for s in p.stages:
        a, b = p[s]
        if grow:
            cand = [(a - 1, b), (a, b + 1)]
            cand = [(x, y) for x, y in cand if 1 <= x and y <= L]
        else:
            cand = [(a + 1, b), (a, b - 1)] if a < b else []
        out += [p.replace(s, c) for c in cand]
    return out


def find_pathways(ss: SampleSet, curves: dict[str, np.ndarray], tolerance: float = 2.0, threshold: float = 5.0,
                  log: Callable[[str], None] | None = None) -> dict:
    """Propose the three ranges from the flow maps, then grow and shrink them
    greedily to the sparsest pathway whose accuracy stays within ``tolerance``
    points of the full model's. Deterministic: no randomness, fixed tie-breaks.

    curves: {'CF', 'VQ', 'QL' and optionally 'VL': [L]} mean % change of the
        ground truth's probability when that stage's edges are cut in the
        window centred on each layer (the flow maps of cross_frame,
        video_question, question_last, video_last).
    tolerance: points of accuracy (0-100) the pathways may lose; the target is
        acc_full - tolerance / 100, accuracies over all samples of ``ss``.
    threshold: % drop that makes a window centre part of a stage's seed range.

    1. Seed: ``seed_ranges(curves, threshold)``: per stage, the hull of the
       centres whose knockout drops the answer's probability by >= threshold %.
    2. Grow: while below the target, try every range one layer longer (each
       stage, each end) and take the one of highest accuracy (ties: higher
       mean probability of the ground truth, which moves on accuracy's
       plateaus; then fewer edges kept; then the fixed order of ``_moves``).
       Growing only ever uncuts edges, so a candidate keeping no more edges
       than now changes nothing (e.g. CF past the end of VQ, after which all
       video <-> video attention is cut anyway) and is skipped while any other
       is left. Before growing, the widest pathway (every range 1..L: only
       video -> last and last -> last cut) is tried: if even it is below the
       target, no three ranges can reach it. Then, beyond the paper and only
       if ``curves`` has 'VL', a fourth range VL in which video -> last is
       kept joins (seeded the same way; its widest leaves only last -> last
       cut) and the search goes on with four; if that cannot reach the
       target either, it returns the widest pathway with within_tolerance
       False.
    3. Shrink: try every range one layer shorter; among those still at or
       above the target take the one keeping the fewest edges (ties: higher
       accuracy, then the fixed order); repeat until no shrink stays within
       tolerance. (Shrinks that change nothing trim layers in which a range
       has no effect.)
    Each step is one batch of conditions per sample on the samples' runners.
    The ranges are fitted to these samples, so the accuracy reported for them
    is in-sample (optimistic); check them on other samples with --pathways.

    -> {'pathways': Pathways, 'accuracy', 'edge_share', 'full', 'within_tolerance',
        'trace': [{'step', 'pathways', 'accuracy', 'edge_share'}]}.
    """
    L = ss.lm.n_layers
    full = float(ss.clean_correct.mean())
    target = full - tolerance / 100.0 - 1e-9
    say = log or (lambda msg: None)
    stages = STAGES
    trace: list[dict] = []

    def step(kind, q, a):
        trace.append({"step": kind, "pathways": str(q), "accuracy": a, "edge_share": ss.share(q)})
        say(f"  {kind:<6} {q}: {100 * a:.1f}%, {100 * trace[-1]['edge_share']:.1f}% of edges")

    say(f"pathway search: full {100 * full:.1f}%, target >= {100 * (target + 1e-9):.1f}%")
    p = seed_ranges(curves, threshold, stages)
    acc = float(ss.accuracy([p])[0])
    step("seed", p, acc)
    while acc < target:
        widest = Pathways(((1, L),) * len(stages))
        wacc = float(ss.accuracy([widest])[0])
        step("widest", widest, wacc)
        if wacc >= target:
            break  # growing from the seed can reach the target
        if stages == STAGES and "VL" in curves:
            say("  the paper's three ranges cannot reach the target: adding VL (video -> last kept in a range)")
            stages = STAGES + EXTRA
            p = seed_ranges(curves, threshold, stages)
            acc = float(ss.accuracy([p])[0])
            step("seed", p, acc)
            continue
        say("  the target is out of reach")
        return {"pathways": widest, "accuracy": wacc, "edge_share": ss.share(widest), "full": full,
                "within_tolerance": False, "trace": trace}
    while acc < target:
        cands = _moves(p, L, grow=True)
        now = ss.share(p)
        cands = [c for c in cands if ss.share(c) > now + 1e-12] or cands
        if not cands:
            break
        accs, truth = ss.score(cands)
        best = min(range(len(cands)), key=lambda j: (-accs[j], -truth[j], ss.share(cands[j]), j))
        p, acc = cands[best], float(accs[best])
        step("grow", p, acc)
    within = acc >= target
    while within:
        cands = _moves(p, L, grow=False)
        if not cands:
            break
        accs = ss.accuracy(cands)
        ok = [j for j in range(len(cands)) if accs[j] >= target]
        if not ok:
            break
        best = min(ok, key=lambda j: (ss.share(cands[j]), -accs[j], j))
        p, acc = cands[best], float(accs[best])
        step("shrink", p, acc)
    return {"pathways": p, "accuracy": acc, "edge_share": ss.share(p), "full": full, "within_tolerance": within,
            "trace": trace}


TRACE_COLUMNS = [f"{s} {end}" for s in STAGES + EXTRA for end in ("first", "last")] + ["accuracy", "edge share"]


def trace_array(trace: list[dict]) -> np.ndarray:
    """The search trace as numbers [n_steps, 10]: CF, VQ, QL, VL first/last
    (1-indexed; NaN for VL when absent), accuracy, share of edges kept."""
    rows = []
    for t in trace:
        p = parse_pathways(t["pathways"])
        r = [x for st in STAGES + EXTRA for x in (p[st] if st in p else (np.nan, np.nan))]
        rows.append(r + [t["accuracy"], t["edge_share"]])
    return np.array(rows, dtype=float).reshape(-1, len(TRACE_COLUMNS))


if __name__ == "__main__":
    from analyses.cli import not_a_command

    raise SystemExit(not_a_command(
        "analyses.pathways",
        "the effective-pathway condition, its share of edges kept, the random-edge control and the search "
        "(find_pathways). Pathways are a stage of Map the Flow, stored in its file beside the flow maps they "
        "start from.",
        [("python -m analyses.flow --find-pathways",
          "search the sparsest layer ranges CF, VQ, QL (and VL if needed) whose accuracy stays within "
          "--tolerance of the full model, with the random-edge control"),
         ("python -m analyses.flow --pathways CF=a-b,VQ=c-d,QL=e-f[,VL=g-h]",
          "evaluate given ranges (1-indexed, inclusive)"),
         ("python -m analyses.flow --help",
          "every flag: --model, --dataset, --tolerance, --pathway-threshold, --random-seeds, ...")]))
