"""TOMATO's three ablation metrics (Shangguan et al. 2024, arXiv 2410.23266), with
bootstrap intervals, a run's results (``Ablation``) and its tables (its figures:
analyses/tomato_figures.py).

All three are relative gains in percent, as in the paper's tables:

    kappa  multi-frame gain            (A_m - A_1) / A_1 * 100
    tau    frame order sensitivity     (A_m - A_shuffled) / A_shuffled * 100
    rho    frame information disparity (A_1[H] - A_1) / A_1 * 100

A_m: accuracy with m frames sampled uniformly; A_1: one frame (the first, as
TOMATO's code takes); A_shuffled: the same m frames in a random order;
A_1[H]: the single frame a human picked as the most informative. A zero
denominator makes a metric undefined: it is NaN, with an
``UndefinedMetricWarning`` naming the metric and where, never an infinity.
An average over models is the mean of the per-model metric values, not the
metric of averaged accuracies, as in the paper (its averages over GPT-4o and
Qwen2-VL-72B are means of the two models' metric values).

What is drawn from a run: the tables (``metric_rows``, ``to_markdown``,
``to_csv``, ``report``), reading it through the accessors of ``Ablation``
(``correct_of``, ``shuffled_correct``, ``flip_rate``, ``groups``, ...), and
what a report says of the questions left out (``skip_record``: a missing,
unreadable or truncated video, a malformed annotation) and of videos shorter
than m. Numpy only; nothing here knows about models or results files.
"""
from __future__ import annotations

import csv
import io
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tasks.frames import Condition, curve_of


class UndefinedMetricWarning(RuntimeWarning):
    """A metric whose denominator accuracy is zero (or has no questions)."""


@contextmanager
def undefined_notes(log):
    """Collect the UndefinedMetricWarnings of the block and hand each distinct
    message to ``log`` once, as one line (``note: kappa is undefined (task
    count): its denominator accuracy is 0``), instead of Python's two-line
    warning with the source line; other warnings pass through unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        yield
    seen: list[str] = []
    for w in caught:
        if issubclass(w.category, UndefinedMetricWarning):
            if str(w.message) not in seen:
                seen.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for m in seen:
        log(f"note: {m}")


def _where(where: str) -> str:
    return f" ({where})" if where else ""


def relative_gain(a: float, b: float, name: str = "relative gain", where: str = "") -> float:
    """(a - b) / b * 100, or NaN with a warning when b is 0 or either side is undefined."""
    a, b = float(a), float(b)
    if np.isnan(a) or np.isnan(b):
        warnings.warn(f"{name} is undefined{_where(where)}: an accuracy has no questions", UndefinedMetricWarning,
                      stacklevel=2)
        return float("nan")
    if b == 0:
        warnings.warn(f"{name} is undefined{_where(where)}: its denominator accuracy is 0",
                      UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return (a - b) / b * 100.0


def kappa(a_m: float, a_1: float, where: str = "") -> float:
    """Multi-frame gain (A_m - A_1) / A_1 * 100."""
    return relative_gain(a_m, a_1, "kappa (multi-frame gain)", where)


def tau(a_m: float, a_shuffled: float, where: str = "") -> float:
    """Frame order sensitivity (A_m - A_shuffled) / A_shuffled * 100."""
    return relative_gain(a_m, a_shuffled, "tau (frame order sensitivity)", where)


def rho(a_human: float, a_1: float, where: str = "") -> float:
    """Frame information disparity (A_1[H] - A_1) / A_1 * 100."""
    return relative_gain(a_human, a_1, "rho (frame information disparity)", where)


def accuracy(correct: np.ndarray) -> float:
    """Percent correct over the defined entries of ``correct`` (float [n]: 1, 0, or NaN
    for a question the condition did not run); NaN when none is defined."""
    c = np.asarray(correct, dtype=float)
    c = c[~np.isnan(c)]
    return float(c.mean() * 100) if c.size else float("nan")


def paired(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The questions both conditions ran: (num [k], den [k]) of float correctness.

    Both accuracies of a metric must come from the same questions (e.g. rho only
    where a human frame exists), or the gain mixes question sets."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {num.shape} vs {den.shape}")
    keep = ~np.isnan(num) & ~np.isnan(den)
    return num[keep], den[keep]


def gain(num: np.ndarray, den: np.ndarray, name: str = "relative gain", where: str = "") -> float:
    """relative_gain of the accuracies of two per-question correctness arrays [n],
    over the questions both ran."""
    n, d = paired(num, den)
    return relative_gain(accuracy(n), accuracy(d), name, where)


def average_over_models(values: Sequence[float], name: str = "metric", where: str = "") -> float:
    """Mean of per-model metric values. Undefined (NaN) if any model's value is:
    dropping a model silently would change what the average is of."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return float("nan")
    if np.isnan(v).any():
        warnings.warn(f"average of {name} over models is undefined{_where(where)}: "
                      f"{int(np.isnan(v).sum())} of {v.size} models have it undefined", UndefinedMetricWarning,
                      stacklevel=2)
        return float("nan")
    return float(v.mean())


def bootstrap_gain(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a relative gain, averaged over models.

    pairs: one (num [n_i], den [n_i]) per model, per-question correctness of the
           numerator and denominator conditions (NaN entries dropped pairwise).
           Questions are resampled with replacement within each model, keeping
           each question's two outcomes together; the statistic is the mean over
           models of (A_num - A_den) / A_den * 100 (a single model: its own gain).
    Resamples whose denominator accuracy is 0 are left out (the metric is
    undefined there); if more than half are, the interval is (NaN, NaN).
    Returns (lo, hi).
    """
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    valid = np.ones(n_boot, dtype=bool)
    for num, den in pairs:
        n, d = paired(num, den)
        if n.size == 0:
            return float("nan"), float("nan")
        idx = rng.integers(0, n.size, size=(n_boot, n.size))
        a_n, a_d = n[idx].mean(1), d[idx].mean(1)
        ok = a_d > 0
        valid &= ok
        stats += np.where(ok, (a_n - a_d) / np.where(ok, a_d, 1.0) * 100.0, 0.0)
    if valid.sum() * 2 < n_boot:
        return float("nan"), float("nan")
    s = stats[valid] / len(pairs)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of 100 * mean(x) over the defined entries of x [n]."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1) * 100
    alpha = (1 - level) / 2
    lo, hi = np.quantile(m, [alpha, 1 - alpha])
    return float(lo), float(hi)


# -- a run's results ----------------------------------------------------------

@dataclass
class Ablation:
    """What one run measured, over the n questions that ran. C conditions.

    correct:    float [C, n]  1 right, 0 wrong, NaN not run (no human frame)
    pred:       int [C, n]    chosen option, -1 not run or unparsed
    probs:      float [C, n, K] option-letter probabilities (NaN past a question's
                options, and everywhere under --generate)
    indices:    int [C, n, F] frame indices shown, -1 padded
    n_total:    int [n] frames in each question's video; human_frame: int [n] (-1 none)
    groups:     {'task': str [n], 'demonstration_type': str [n] (benchmarks)}
    responses / unparsed: str / bool [C, n] under --generate, else None
    cos:        {condition: float [n, L]} 1 - cos(ordered, perturbed) of the last
                position's residual stream after each layer (shuffled_*, reversed)
    cka:        {condition: float [L]} linear CKA of ordered vs perturbed over questions
    cka_task:   {condition: float [n_tasks, L]} the same within each task (NaN under 8 questions)
    skipped:    [(question id, why)] questions that could not run (a missing or corrupt video)
    skips:      every question (and annotation file) left out, at loading or at running, as
                ``skip_record`` dicts: what the report counts
    """

    model: str
    fingerprint: str
    dataset: str
    config: dict
    conditions: list[Condition]
    ids: np.ndarray
    answers: np.ndarray
    n_options: np.ndarray
    groups: dict[str, np.ndarray]
    correct: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    n_total: np.ndarray
    human_frame: np.ndarray
    responses: np.ndarray | None = None
    unparsed: np.ndarray | None = None
    layers: list[int] = field(default_factory=list)
    cos: dict[str, np.ndarray] = field(default_factory=dict)
    cka: dict[str, np.ndarray] = field(default_factory=dict)
    cka_task: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skips: list[dict] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def tasks(self) -> np.ndarray:
        return self.groups["task"]

    def has(self, name: str) -> bool:
        return name in self.names

    def correct_of(self, name: str) -> np.ndarray:
        """float [n] per-question correctness of a condition (all NaN if the run lacks it)."""
        if name not in self.names:
            return np.full(len(self.ids), np.nan)
        return self.correct[self.names.index(name)]

    def pred_of(self, name: str) -> np.ndarray:
        return self.pred[self.names.index(name)]

    @property
    def shuffled_names(self) -> list[str]:
        return [c.name for c in self.conditions if c.kind == "shuffled"]

    def shuffled_correct(self) -> np.ndarray:
        """float [n]: each question's correctness averaged over the shuffle seeds."""
        names = self.shuffled_names
        if not names:
            return np.full(len(self.ids), np.nan)
        return np.mean([self.correct_of(s) for s in names], axis=0)

    def flip_rate(self) -> np.ndarray:
        """float [n]: the fraction of shuffle seeds under which a question's answer
        differs from its answer with the frames in order (NaN without shuffles)."""
        names = self.shuffled_names
        if not names or not self.has("multi"):
            return np.full(len(self.ids), np.nan)
        ordered = self.pred_of("multi")
        return np.mean([self.pred_of(s) != ordered for s in names], axis=0).astype(float)

    def curve(self) -> list[tuple[int, str]]:
        return curve_of(self.conditions)

    def effective_frames(self, name: str) -> np.ndarray:
        """int [n]: frames each question actually got under a condition."""
        return (self.indices[self.names.index(name)] >= 0).sum(-1)


def skip_record(item: str, why: str, path: str = "", task: str | None = None,
                demonstration_type: str | None = None) -> dict:
    """One question (item '*': a whole annotation file) left out, with the kind
    of reason a report counts: video missing / truncated / unreadable,
    annotation malformed, annotation file missing / unreadable."""
    w = why.lower()
    if item == "*":
        kind = "annotation file missing" if "does not exist" in w else "annotation file unreadable"
    elif "does not exist" in w or "is not a file" in w:
        kind = "video missing"
    elif "truncated" in w:
        kind = "video truncated"
    elif str(path).endswith(".json"):
        kind = "annotation malformed"
    else:
        kind = "video unreadable"
    return {"id": item, "why": why, "path": str(path), "kind": kind, "task": task,
            "demonstration_type": demonstration_type}


def _kinds(records: list[dict]) -> str:
    """'video missing: 1; annotation file missing: 4 files' (questions, then files)."""
    q = Counter(r["kind"] for r in records if r["id"] != "*")
    f = Counter(r["kind"] for r in records if r["id"] == "*")
    return "; ".join([f"{k}: {n}" for k, n in q.items()] +
                     [f"{k}: {n} file{'s' if n > 1 else ''}" for k, n in f.items()])


def nominal_frames(ab) -> int:
    """m: the run's --frames, else (a run built by hand) the median frame count of ``multi``."""
    m = ab.config.get("frames") if ab.config else None
    return int(m) if m else int(np.median(ab.effective_frames("multi")))


def short_videos(ab) -> np.ndarray:
    """bool [n]: questions whose video has fewer frames than m."""
    return ab.n_total < nominal_frames(ab)


# -- inside the model ---------------------------------------------------------

def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a, b) along the last axis: a, b [..., d] -> [...]. A zero vector
    gives NaN (its direction is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (a * b).sum(-1) / (na * nb)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n
    inputs: x [n, d1], y [n, d2] -> a number in [0, 1] (1: the same up to rotation
    and isotropic scale). NaN when n < 2 or one side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        return float("nan")
    x = x - x.mean(0)
    y = y - y.mean(0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):  # Gram form: n x n is the smaller product
        kx, ky = x @ x.T, y @ y.T
        num, dx, dy = (kx * ky).sum(), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        num = np.linalg.norm(x.T @ y) ** 2
        dx, dy = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if dx == 0 or dy == 0:
        return float("nan")
    return float(num / (dx * dy))


def order_sensitivity(ref: np.ndarray, x: np.ndarray, tasks: np.ndarray, min_task: int = 8):
    """How far a perturbed run's residual stream is from the ordered run's.

    ref, x: float [n, L, d] the last position's residual stream after each
    layer, ordered and perturbed (shuffled / reversed), for n questions;
    tasks: [n] each question's task. -> (cos [n, L] 1 - cos(ref, x), cka [L]
    linear CKA over all questions, cka_task [n_tasks, L] within each task in
    order of first appearance, NaN for a task under ``min_task`` questions:
    the CKA of a handful of points is 1 by construction)."""
    L = ref.shape[1]
    cos = cosine_distance(ref, x)
    cka = np.array([linear_cka(ref[:, l], x[:, l]) for l in range(L)])
    names = list(dict.fromkeys(tasks))
    per = np.full((len(names), L), np.nan)
    for t, task in enumerate(names):
        m = tasks == task
        if m.sum() >= min_task:
            per[t] = [linear_cka(ref[m, l], x[m, l]) for l in range(L)]
    return cos, cka, per


# -- the tables ---------------------------------------------------------------

GROUPINGS = ("task", "demonstration_type")
COLUMNS = ["model", "by", "group", "n", "acc_first", "acc_middle", "acc_random", "acc_human", "n_human", "acc_multi",
           "acc_shuffled", "acc_reversed", "kappa", "kappa_lo", "kappa_hi", "tau", "tau_lo", "tau_hi", "rho", "rho_lo",
           "rho_hi", "tau_reversed", "flip_rate", "unparsed", "n_short", "skipped", "skipped_why"]
_SUMMED = ("unparsed", "n_human", "n_short", "skipped")  # columns an average over models sums
_GAINS = {"kappa": kappa, "tau": tau, "rho": rho}


def group_order(values: np.ndarray) -> list[str]:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(str(v) for v in values))


def _pairs(ab, mask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (numerator, denominator) per-question correctness [k]."""
    multi, first = ab.correct_of("multi")[mask], ab.correct_of("single_first")[mask]
    return {"kappa": (multi, first), "tau": (multi, ab.shuffled_correct()[mask]),
            "rho": (ab.correct_of("single_human")[mask], first)}


def metric_rows(runs: list, by: str = "task", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per model and group (+ 'all'), and with several models an
    'average' row per group: accuracies and metrics as means of per-model
    values, intervals from a bootstrap that resamples every model's questions.

    runs: ``analyses.tomato.Ablation``s. by: 'task' or 'demonstration_type'
    (benchmarks). Accuracies are percent; kappa / tau / rho are NaN where
    undefined (with an UndefinedMetricWarning). n_short: questions whose video
    has fewer frames than m; skipped / skipped_why: questions of the group left
    out (``Ablation.skips``; 'all' counts every one, also those of no known
    group) and their kinds, annotation files that could not be read included.
    """
    rows = []
    per_group: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    order: list[str] = []
    for ab in runs:
        if by not in ab.groups:
            raise KeyError(f"run of {ab.model!r} has no grouping {by!r}; it has {list(ab.groups)}")
        gv = ab.groups[by].astype(str)
        for g in group_order(gv) + ["all"]:
            if g not in order:
                order.append(g)
            mask = np.ones(len(gv), bool) if g == "all" else gv == g
            where = f"{ab.model}, {by}={g}"
            pairs = _pairs(ab, mask)
            row = {"model": ab.model, "by": by, "group": g, "n": int(mask.sum()),
                   "acc_first": accuracy(ab.correct_of("single_first")[mask]),
                   "acc_middle": accuracy(ab.correct_of("single_middle")[mask]),
                   "acc_random": accuracy(ab.correct_of("single_random")[mask]),
                   "acc_human": accuracy(pairs["rho"][0]),
                   "n_human": int((~np.isnan(ab.correct_of("single_human")[mask])).sum()),
                   "acc_multi": accuracy(ab.correct_of("multi")[mask]),
                   "acc_shuffled": accuracy(pairs["tau"][1]),
                   "acc_reversed": accuracy(ab.correct_of("reversed")[mask])}
            for k, (num, den) in pairs.items():
                n, d = paired(num, den)
                row[k] = _GAINS[k](accuracy(n), accuracy(d), where)
                row[f"{k}_lo"], row[f"{k}_hi"] = bootstrap_gain([(num, den)], n_boot, seed)
            row["tau_reversed"] = gain(ab.correct_of("multi")[mask], ab.correct_of("reversed")[mask],
                                       "tau (reversed)", where)
            row["flip_rate"] = float(np.nanmean(ab.flip_rate()[mask]) * 100) if ab.shuffled_names else float("nan")
            row["unparsed"] = int(ab.unparsed[:, mask].sum()) if ab.unparsed is not None else 0
            row["n_short"] = int(short_videos(ab)[mask].sum())
            left = [r for r in ab.skips if g == "all" or r.get(by) == g]
            row["skipped"] = sum(r["id"] != "*" for r in left)
            row["skipped_why"] = _kinds(left)
            rows.append(row)
            per_group[g].append((row, pairs))
    if len(runs) > 1:
        for g in order:
            got = per_group[g]
            if len(got) < len(runs):
                continue  # a group some model did not run has no average over models
            avg = {"model": "average", "by": by, "group": g, "n": int(sum(r["n"] for r, _ in got))}
            for col in COLUMNS[4:]:
                if col.endswith(("_lo", "_hi")) or col in _GAINS or col in ("tau_reversed", "skipped_why"):
                    continue
                vals = [r[col] for r, _ in got]
                avg[col] = int(np.sum(vals)) if col in _SUMMED else float(np.mean(vals))
            avg["skipped_why"] = " | ".join(f"{r['model']}: {r['skipped_why']}" for r, _ in got if r["skipped_why"])
            for k in list(_GAINS) + ["tau_reversed"]:
                avg[k] = average_over_models([r[k] for r, _ in got], k, f"{by}={g}")
            for k in _GAINS:
                avg[f"{k}_lo"], avg[f"{k}_hi"] = bootstrap_gain([p[k] for _, p in got], n_boot, seed)
            rows.append(avg)
    return rows


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "undefined"
    s = f"{v:.1f}"
    if ci is not None and not any(np.isnan(c) for c in ci):
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return s


def to_markdown(rows: list[dict], m: int | str = "m") -> str:
    """The paper's table layout: accuracies, then kappa / tau / rho with 95% intervals."""
    label = {"task": "Task", "demonstration_type": "Demonstration"}.get(rows[0]["by"], rows[0]["by"]) if rows else "Group"
    head = ["Model", label, "n", "A_1", "A_1[H]", f"A_{m}", "A_shuf", "A_rev", "κ multi-frame gain",
            "τ order sensitivity", "ρ information disparity", "flips %"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [r["model"], r["group"], str(r["n"]), _fmt(r["acc_first"]), _fmt(r["acc_human"]), _fmt(r["acc_multi"]),
                 _fmt(r["acc_shuffled"]), _fmt(r["acc_reversed"]),
                 _fmt(r["kappa"], (r["kappa_lo"], r["kappa_hi"])), _fmt(r["tau"], (r["tau_lo"], r["tau_hi"])),
                 _fmt(r["rho"], (r["rho_lo"], r["rho_hi"])), _fmt(r["flip_rate"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV (every COLUMNS field; NaN written as empty)."""
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: ("" if isinstance(r[k], float) and np.isnan(r[k]) else
                         (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])) for k in COLUMNS})
    return buf.getvalue()


def groupings(runs: list) -> list[str]:
    """The groupings every run has ('task', and 'demonstration_type' on TOMATO)."""
    return [g for g in GROUPINGS if all(g in ab.groups for ab in runs)]


def _run_notes(ab, prefix: str = "", listed: int = 20) -> str:
    """What a report says of one run besides its tables (markdown): videos
    shorter than m, where human frames come from, and every question left out,
    with why (the first ``listed`` of them)."""
    m, n = nominal_frames(ab), len(ab.ids)
    short = int(short_videos(ab).sum())
    if (ab.config.get("short_videos", "own") if ab.config else "repeat") == "repeat":
        paras = [f"{prefix}Videos shorter than m = {m} frames: {short} of {n} questions; their {m}-frame "
                 f"conditions repeat frames, as TOMATO's sampling does (np.linspace(0, n-1, m, dtype=int))."]
    else:
        paras = [f"{prefix}Videos shorter than m = {m} frames: {short} of {n} questions; each is shown its own "
                 f"n frames (--short-videos own), where TOMATO's sampling would repeat frames."]
    if ab.has("single_human"):
        nh = int((~np.isnan(ab.correct_of("single_human"))).sum())
        if nh < n:
            paras.append(f"{prefix}ρ: {nh} of {n} questions have a human-picked frame (A_1[H]); TOMATO's public "
                         f"annotations carry none. Supply them with --human-frames FILE.json, a JSON object mapping "
                         f"question id to frame index from 0, e.g. {{\"count-7\": 12, \"direction-0\": 40}}.")
    q = [r for r in ab.skips if r["id"] != "*"]
    files = [r for r in ab.skips if r["id"] == "*"]
    lines = [f"{prefix}Skipped: {len(q)} question{'' if len(q) == 1 else 's'}, left out of the tables"
             + (f" ({_kinds(ab.skips)})." if ab.skips else ".")]
    for r in (files + q)[:listed]:
        lines.append(f"- {r['path'] if r['id'] == '*' else r['id']} ({r['kind']}): {r['why']}")
    if len(files + q) > listed:
        lines.append(f"- ... and {len(files + q) - listed} more")
    return "\n\n".join(paras + ["\n".join(lines)])


def report(runs: list, n_boot: int = 1000, seed: int = 0) -> tuple[str, str]:
    """(markdown, csv) of every grouping the runs share, with what was left out
    and why (and the CSV's n_short / skipped / skipped_why columns); what the
    CLI writes and the notebook rebuilds."""
    ab = runs[0]
    m = nominal_frames(ab)
    md = [f"## TOMATO ablations: {', '.join(r.model for r in runs)} on {ab.dataset}\n",
          f"A_1: the first frame (as TOMATO's code); A_1[H]: the human-picked frame; A_{m}: {m} frames sampled "
          f"uniformly (np.linspace(0, n-1, m, dtype=int), as TOMATO); A_shuf: the same frames shuffled, averaged over "
          f"{len(ab.shuffled_names)} seeds; A_rev: reversed. κ = (A_{m} − A_1)/A_1, τ = (A_{m} − A_shuf)/A_shuf, "
          f"ρ = (A_1[H] − A_1)/A_1, in percent, with bootstrap 95% intervals ({n_boot} resamples of the questions); "
          f"ρ over the questions that have a human frame. flips: how often an answer changes under shuffling.\n"]
    for r in runs:
        md.append("\n" + _run_notes(r, f"{r.model}: " if len(runs) > 1 else "") + "\n")
    csvs = []
    for by in groupings(runs):
        rows = metric_rows(runs, by, n_boot, seed)
        md.append(f"\n### by {by.replace('_', ' ')}\n\n" + to_markdown(rows, m))
        csvs.append(to_csv(rows) if not csvs else to_csv(rows).split("\n", 1)[1])
    un = sum(int(r.unparsed.sum()) for r in runs if r.unparsed is not None)
    if any(r.unparsed is not None for r in runs):
        md.append(f"\nUnparsed generated answers (counted wrong): {un}.\n")
    return "".join(md), "".join(csvs)
