"""TOMATO's ablations (Shangguan et al. 2024) on any model of the registry, and
what they look like inside the model.

    python -m analyses.tomato --model organism --dataset synthetic
    python -m analyses.tomato --model llava-next --dataset tomato --data-dir ~/TOMATO --frames 16

    ab = run(lm, samples, "cache/tomato.h5", AblationConfig(frames=8))  # on the run engine -> Ablation
    ab = load_results("cache/tomato.h5")                                # the same, from the file alone

Every question is answered under a set of frame conditions (``tasks.frames``:
multi, single_first / _middle / _random / _human, shuffled_<s>, reversed,
frames_<k>). Answers come from the option-letter probabilities at the last
position (``tracing.scoring.score``, batched, no generation) or, with
``--generate``, from greedy generation (``tracing.scoring.generate``) read by
TOMATO's answer parser (``tasks.answers.parse_answer``); unparsed answers
count as wrong and their number is reported. Conditions that give a question
the same frame list (``frames_1`` and ``single_first``) share one forward pass.
A video with fewer frames than m repeats frames, as TOMATO's sampling does
(``--short-videos own``: its own frames; either way the run says how many);
a truncated video (fewer frames decode than its container declares) is
skipped as a missing one is, with the check every loader makes. rho needs the
human-picked frame, which TOMATO's public annotations lack: ``--human-frames
FILE.json`` maps question id to frame index. The report (markdown, CSV)
counts the questions left out and says why.

Metrics and tables (``analyses.tomato_metrics``): kappa, tau and rho per model
and task, bootstrap 95% intervals over questions, averages over models as
means of per-model values. Inside the model: for every layer, the cosine
distance between the last position's residual stream of the ordered run and
of each shuffled / reversed run, and the linear CKA between them over
questions; per question, how often the answer flips under shuffling.

The file (the run engine, analyses/run.py; one unit per question with all its
conditions; C conditions, K options at most, F = --frames, P = 1 + shuffled +
reversed, L layers, d the model's width):

    /acts/pred      int [N, C]            the option chosen; -1 not run (or unparsed, --generate)
    /acts/probs     float32 [N, C, K]     option-letter probabilities (NaN past a question's
                                          options, where not run, and under --generate)
    /acts/indices   int [N, C, F]         frame indices shown, -1 padded (all -1: not run)
    /acts/n_total   int [N, 1]            frames in the question's video
    /acts/human     int [N, 1]            the human-picked frame (-1: none)
    /acts/resid     float32 [N, P, L, d]  the last position's residual stream after each layer
                                          under multi, shuffled_*, reversed (not with
                                          --no-internals; 4 N P L d bytes, which on a 7B model
                                          is the bulk of the file)
    /samples/run_meta                     per question: notes, the generated responses; a
                                          question whose video is missing, unreadable or
                                          truncated is recorded as skipped, with the reason
    /results/tomato/load_problems         JSON [item, path, why] of each question (item '*': a
                                          whole annotation file) the loader left out (when any)
    /results/report/markdown              the table as the CLI wrote it, with its bootstrap settings

``load_results`` computes the ``Ablation`` (correctness, flips, the order
analysis) from the per-question arrays alone, so tables and figures are
redrawn without the model: a markdown and a CSV table next to the file, and
figures in ``--figures`` (default ``<out stem>_figures/``: accuracy against
frame count; kappa / tau / rho per task with intervals; order sensitivity
against layer); ``notebooks/tomato.ipynb`` rebuilds them. Resume per
question, refusal of another configuration, ``--overwrite``, the lock and
``--workers`` are the engine's.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.answers import parse_answer
from tasks.frames import (DEFAULT_COUNTS, SINGLE_PICKS, Condition, QuestionFrames, plan_conditions, question_frames,
                          read_human_frames, set_human_frames)
from tasks.types import Sample

from . import tomato_metrics as M
from .tomato_figures import write_figures
from .tomato_metrics import Ablation, metric_rows, report  # noqa: F401  (Ablation: re-exported)

SHORT_VIDEOS = ("repeat", "own")


@dataclass
class AblationConfig:
    """What to run. ``frames``: m; ``shuffle_seeds``: how many shuffled runs;
    ``counts``: the frame-count curve (values >= frames collapse onto ``multi``);
    ``singles``: which single-frame picks; ``internals``: keep the residual
    stream for the order analysis; ``generate``: answer by generation and
    TOMATO's parser instead of letter probabilities; ``batch_size``: prompts
    (a question's conditions) per forward pass; ``short_videos``: a video of
    fewer than m frames 'repeat's frames (TOMATO's sampling) or shows its 'own'."""

    frames: int = 16
    shuffle_seeds: int = 3
    counts: tuple[int, ...] = DEFAULT_COUNTS
    singles: tuple[str, ...] = SINGLE_PICKS
    seed: int = 0
    batch_size: int = 8
    internals: bool = True
    generate: bool = False
    max_new_tokens: int = 8
    short_videos: str = "repeat"

    def __post_init__(self):
        if self.short_videos not in SHORT_VIDEOS:
            raise ValueError(f"short_videos must be one of {list(SHORT_VIDEOS)}, got {self.short_videos!r}")
        for name in ("frames", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shuffle_seeds < 0:
            raise ValueError(f"shuffle_seeds must be >= 0, got {self.shuffle_seeds}")
        bad = [p for p in self.singles if p not in SINGLE_PICKS]
        if bad:
            raise ValueError(f"unknown single-frame pick(s) {bad}; valid: {list(SINGLE_PICKS)}")
        if any(int(k) < 1 for k in self.counts):
            raise ValueError(f"frame counts must be >= 1, got {list(self.counts)}")
        self.counts = tuple(int(k) for k in self.counts)
        self.singles = tuple(self.singles)

    def conditions(self) -> list[Condition]:
        return plan_conditions(self.frames, self.shuffle_seeds, self.counts, self.singles, self.seed)


def resid_names(conditions: list[Condition]) -> list[str]:
    """The conditions whose residual stream the order analysis keeps: multi (the ordered reference) first."""
    return ["multi"] + [c.name for c in conditions if c.kind in ("shuffled", "reversed")]


# ============================================================== one question
def _answers(lm, q: QuestionFrames, names: list[str], batch_size: int, generate: bool,
             max_new_tokens: int) -> dict[str, tuple[int, np.ndarray | None, str | None]]:
    """A question under the conditions ``names`` -> {name: (option chosen or -1,
    probabilities [k] or None, generated text or None)}. Conditions with the
    same frame count are batched (LLaVA stacks the videos of a batch)."""
    from tracing.inputs import build_inputs
    from tracing.scoring import generate as greedy
    from tracing.scoring import score

    s = q.sample
    by_count: dict[int, list[str]] = {}
    for n in names:
        by_count.setdefault(len(q.indices[n]), []).append(n)
    out = {}
    for group in by_count.values():
        for b0 in range(0, len(group), batch_size):
            chunk = group[b0 : b0 + batch_size]
            items = [build_inputs(lm, q.frames(n), s.question, s.options, s.answer, sampled_fps=q.sampled_fps(n))
                     for n in chunk]
            if generate:
                for n, (inp, _) in zip(chunk, items):
                    text = greedy(lm, inp, max_new_tokens)
                    k = parse_answer(text, s.options)
                    out[n] = (-1 if k is None else k, None, text)
            else:
                sc = score(lm, items, batch_size)
                for r, n in enumerate(chunk):
                    out[n] = (int(sc.pred[r]), sc.probs[r], None)
    return out


def _residuals(lm, q: QuestionFrames, name: str) -> np.ndarray:
    """The last position's residual stream after every layer: float32 [L, d]."""
    from tracing.capture import capture
    from tracing.inputs import build_inputs

    s = q.sample
    inp, lay = build_inputs(lm, q.frames(name), s.question, s.options, s.answer, sampled_fps=q.sampled_fps(name))
    acts = capture(lm, inp, lay, "resid_post", positions="last")
    return np.stack([acts[f"blocks.{l}.hook_resid_post"].float().cpu().numpy().reshape(-1)
                     for l in range(lm.n_layers)])


def _unit_meta(s: Sample) -> dict:
    meta = {"question": s.question, "options": list(s.options)}
    if s.meta.get("demonstration_type") is not None:
        meta["demonstration_type"] = s.meta["demonstration_type"]
    return meta


def declare(lm, samples: list[Sample], cfg: AblationConfig, config: dict | None = None,
            load_problems: list | None = None):
    """Every question under every condition as a run-engine declaration: one
    unit per question, returning the arrays of the module docstring's file.
    config: what else identifies the run (the data's settings). load_problems:
    the loader's (item, path, why) of questions it left out, kept in the file
    (/results/tomato/load_problems) for the report."""
    from analyses.run import Declaration, SkipUnit
    from tasks.video import VideoError
    from tracing.store import SampleMeta

    if not samples:
        raise ValueError("tomato: no questions to run")
    conds = cfg.conditions()
    C, K, F = len(conds), max(len(s.options) for s in samples), cfg.frames
    shapes = {"pred": ((C,), "int64"), "probs": ((C, K), "float32"), "indices": ((C, F), "int64"),
              "n_total": ((1,), "int64"), "human": ((1,), "int64")}
    kept = resid_names(conds)
    if cfg.internals:
        width = lm.module(lm.family.unembed).weight.shape[1]
        shapes["resid"] = ((len(kept), lm.n_layers, width), "float32")
    recipe = getattr(lm, "recipe", None)

    def resize(arr):  # as the model's processor resizes: build_inputs' own resize is then a no-op
        from tracing.preprocess import resize_frames

        return resize_frames(arr, recipe)

    def compute(i):
        s = samples[i]
        try:
            q, notes = question_frames(s, conds, None if recipe is None else resize, cfg.short_videos == "repeat")
        except VideoError as e:
            raise SkipUnit(str(e)) from None
        key = {c.name: tuple(int(x) for x in q.indices[c.name]) for c in conds if q.indices[c.name] is not None}
        first = {}  # frame list -> the condition that runs it: identical inputs run once
        for name, k in key.items():
            first.setdefault(k, name)
        got = _answers(lm, q, list(first.values()), cfg.batch_size, cfg.generate, cfg.max_new_tokens)
        pred, probs = np.full(C, -1, np.int64), np.full((C, K), np.nan, np.float32)
        idx, responses = np.full((C, F), -1, np.int64), [""] * C
        for ci, c in enumerate(conds):
            if c.name not in key:
                continue
            idx[ci, : len(key[c.name])] = key[c.name]
            pred[ci], p, text = got[first[key[c.name]]]
            if p is not None:
                probs[ci, : len(p)] = p
            responses[ci] = text or ""
        arrays = {"pred": pred, "probs": probs, "indices": idx, "n_total": np.array([q.n_total]),
                  "human": np.array([q.human])}
        if cfg.internals:
            arrays["resid"] = np.stack([_residuals(lm, q, n) for n in kept])
        meta = {"notes": notes} if notes else {}
        if cfg.generate:
            meta["responses"] = responses
        return arrays, {}, meta

    units = [SampleMeta(s.id, s.task, int(s.answer), -1, _unit_meta(s)) for s in samples]
    cfg_dict = {**asdict(cfg), "conditions": [asdict(c) for c in conds], **(config or {})}
    # a unit's meta holds its generated responses: room for them at ~16 bytes a token
    json_bytes = 16384 + (C * cfg.max_new_tokens * 16 if cfg.generate else 0)
    static = {_LOAD_PROBLEMS: (np.array([json.dumps(list(p)) for p in load_problems]), {})} \
        if load_problems else None
    return Declaration("tomato", cfg_dict, units, compute, shapes=shapes, max_json_bytes=json_bytes,
                       static=static, describe=f"tomato ablations ({lm.name})")


_LOAD_PROBLEMS = "tomato/load_problems"


def _skips(problems: list, skipped: list[tuple[str, str, dict]]) -> list[dict]:
    """Every question left out as ``tomato_metrics.skip_record``s: the loader's
    problems (item, path, why) then the units skipped while running (id, task, unit meta)."""
    out = []
    for item, path, why in problems or []:
        # a TOMATO item is <reasoning type>-<id>, its annotation file <reasoning type>.json
        task = Path(path).stem if str(path).endswith(".json") else None
        out.append(M.skip_record(item, why, path, task))
    for sid, task, meta in skipped:
        out.append(M.skip_record(sid, meta["why"], task=task, demonstration_type=meta.get("demonstration_type")))
    return out


# ============================================================== from the per-question arrays
def reduce(arrays: dict[str, np.ndarray], rows: list[dict], conditions: list[Condition], model: str = "",
           fingerprint: str = "", dataset: str = "", config: dict | None = None,
           skipped: list | None = None) -> Ablation:
    """The Ablation of the n questions that ran from their stacked per-question
    arrays ({name: [n, ...]} as ``declare``'s units return them) and rows (per
    question: id, task, label, options, optional demonstration_type, notes,
    responses). The order analysis when ``arrays`` holds 'resid'."""
    config = config or {}
    pred = arrays["pred"].T.astype(np.int64)
    indices = np.moveaxis(arrays["indices"], 0, 1).astype(np.int64)
    ran = indices[..., 0] >= 0
    answers = np.array([int(r["label"]) for r in rows])
    generate = bool(config.get("generate"))
    groups = {"task": np.array([r["task"] for r in rows], dtype=object)}
    demo = [r.get("demonstration_type") for r in rows]
    if any(d is not None for d in demo):
        groups["demonstration_type"] = np.array([d or "" for d in demo], dtype=object)
    ab = Ablation(
        model=model, fingerprint=fingerprint, dataset=dataset, config=config, conditions=list(conditions),
        ids=np.array([r["id"] for r in rows], dtype=object), answers=answers,
        n_options=np.array([len(r["options"]) for r in rows]), groups=groups,
        correct=np.where(ran, (pred == answers).astype(float), np.nan), pred=pred,
        probs=np.moveaxis(arrays["probs"], 0, 1).astype(float), indices=indices,
        n_total=arrays["n_total"][:, 0].astype(np.int64), human_frame=arrays["human"][:, 0].astype(np.int64),
        responses=np.array([r["responses"] for r in rows], dtype=object).T if generate else None,
        unparsed=ran & (pred < 0) if generate else None,
        notes=[n for r in rows for n in r.get("notes", [])], skipped=list(skipped or []))
    if "resid" in arrays and len(rows):
        resid = arrays["resid"]  # [n, P, L, d]
        ab.layers = list(range(resid.shape[2]))
        for j, name in enumerate(resid_names(ab.conditions)[1:], start=1):
            ab.cos[name], ab.cka[name], ab.cka_task[name] = M.order_sensitivity(resid[:, 0], resid[:, j], ab.tasks)
    return ab


_UNIT_ARRAYS = ("pred", "probs", "indices", "n_total", "human")  # and "resid" with the order analysis


def load_results(path: str | Path, partial: bool = False) -> Ablation:
    """The Ablation of the run in the file at path (the questions that ran). A
    run that is not finished raises ValueError (the same command resumes it)
    unless ``partial``: then the questions done so far, without the order
    analysis (which needs every question)."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    cfg = r.config
    if cfg.get("analysis") != "tomato" or "pred" not in r.hooks:
        raise KeyError(f"{path}: no TOMATO results (a {cfg.get('analysis', r.attrs.get('kind'))!r} file); "
                       f"write one with python -m analyses.tomato")
    s = r.samples
    N, done = len(s["id"]), s["complete"]
    if not done.all() and not partial:
        raise ValueError(f"{path}: the run is not finished ({int(done.sum())} of {N} questions done); re-run the "
                         "same command to resume it, or pass partial=True")
    metas = [r.meta(i) for i in range(N)]
    skipped = [(s["id"][i], metas[i]["skipped"]) for i in range(N) if done[i] and "skipped" in metas[i]]
    keep = [i for i in range(N) if done[i] and "skipped" not in metas[i]]
    if not keep and done.all():
        raise ValueError(f"{path}: none of the {N} questions could be run"
                         + (f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    names = _UNIT_ARRAYS + (("resid",) if "resid" in r.hooks and done.all() else ())
    arrays = {n: r.acts(n, keep) for n in names}
    rows = [{"id": s["id"][i], "task": s["task"][i], "label": s["label"][i], **metas[i]} for i in keep]
    problems = [json.loads(p) for p in r.result(_LOAD_PROBLEMS)[0]] if _LOAD_PROBLEMS in r.results() else []
    unit_skips = [(s["id"][i], s["task"][i], {**metas[i], "why": metas[i]["skipped"]}) for i in range(N)
                  if done[i] and "skipped" in metas[i]]
    ab = reduce(arrays, rows, [Condition(**c) for c in cfg["conditions"]], str(r.attrs["model"]),
                str(r.attrs["model_fingerprint"]), str(r.attrs["dataset"]), cfg, skipped)
    ab.skips = _skips(problems, unit_skips)
    return ab


def run(lm, samples: list[Sample], out: str | Path, cfg: AblationConfig | None = None, dataset: str = "synthetic",
        config: dict | None = None, overwrite: bool = False, progress: bool = True) -> Ablation:
    """Every question under every condition into the HDF5 file ``out`` on the
    run engine (resumable per question; another configuration refused unless
    ``overwrite``) -> load_results(out)."""
    from analyses import run as engine

    decl = declare(lm, samples, cfg or AblationConfig(), config)
    done = engine.run(decl, out, lm.name, lm.fingerprint, dataset, overwrite=overwrite, progress=progress)
    return load_results(done.path)


def run_ablation(lm, samples: list[Sample], cfg: AblationConfig | None = None, dataset: str = "synthetic",
                 progress: bool = True) -> Ablation:
    """The same as ``run`` in memory, without a file: every question's arrays -> ``reduce``."""
    from tqdm import tqdm

    from analyses.run import SkipUnit

    cfg = cfg or AblationConfig()
    decl = declare(lm, samples, cfg)
    per, rows, skipped, unit_skips = [], [], [], []
    for i in tqdm(range(len(samples)), desc=decl.describe, unit="question", disable=not progress):
        u = decl.units[i]
        try:
            arrays, _, meta = decl.compute(i)
        except SkipUnit as e:
            skipped.append((u.id, str(e)))
            unit_skips.append((u.id, u.task, {**u.meta, "why": str(e)}))
            continue
        per.append(arrays)
        rows.append({"id": u.id, "task": u.task, "label": u.gold, **u.meta, **meta})
    if not per:
        raise ValueError(f"none of the {len(samples)} questions could be run (first: {skipped[0][0]}: {skipped[0][1]})")
    arrays = {n: np.stack([x[n] for x in per]) for n in per[0]}
    ab = reduce(arrays, rows, cfg.conditions(), lm.name, lm.fingerprint, dataset, decl.identity_config(), skipped)
    ab.skips = _skips([], unit_skips)
    return ab


def store_report(path: str | Path, markdown: str, n_boot: int, seed: int) -> None:
    """The table as the CLI wrote it, with its bootstrap settings, into the run's
    file (the engine's later stage: the file is replaced atomically; a report of
    other settings is replaced, as they only change how the run is shown)."""
    from analyses.run import later_stage

    settings = {"n_boot": int(n_boot), "seed": int(seed)}
    later_stage(path, "report", settings, lambda: {"markdown": (np.array(markdown), settings)}, overwrite=True,
                log=lambda m: None)


def stored_report(path: str | Path) -> tuple[str, dict]:
    """(markdown table as the CLI wrote it, {'n_boot', 'seed'}) from a run's file;
    KeyError when none was stored (a run from Python)."""
    from tracing.store import CacheReader

    text, attrs = CacheReader(path).result("report/markdown")
    return str(text), attrs


# ============================================================== CLI
def build_parser():
    from .cli import common_parser

    ap = common_parser("python -m analyses.tomato",
                       "TOMATO's ablations (multi-frame gain kappa, frame order sensitivity tau, frame "
                       "information disparity rho) and the layers at which the model becomes sensitive to frame "
                       "order. --limit all reads every question; synthetic --tasks default to the temporal tasks and "
                       "the static control.", frames=16, limit=16)
    frames = next(x for x in ap._actions if x.dest == "frames")
    frames.default = None  # resolved in prepare; '%(default).0s' prints nothing and stops argparse's "(default: None)"
    frames.help = ("m: frames sampled uniformly from each video (default: 16, TOMATO's m, on a benchmark; "
                   "--render-frames on synthetic)%(default).0s")
    ap.add_argument("--shuffle-seeds", type=int, default=3, help="number of shuffled runs (one permutation per seed)")
    ap.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                    help="comma-separated frame counts of the accuracy-vs-frames curve (counts >= --frames are "
                         "the --frames run itself)")
    ap.add_argument("--singles", default=",".join(SINGLE_PICKS),
                    help="single-frame picks to run: first (TOMATO's, used by kappa), middle, random (seeded), "
                         "human (the human-picked frame, from --human-frames or the annotation; used by rho)")
    ap.add_argument("--human-frames", default=None, metavar="FILE.json",
                    help="the human-picked most informative frame per question, for rho (TOMATO's public "
                         "annotations carry none): a JSON object mapping question id (<reasoning type>-<id>, as in "
                         "the tables, e.g. count-7) to a frame index into the video's decoded frames, from 0")
    ap.add_argument("--short-videos", default="repeat", choices=SHORT_VIDEOS,
                    help="a video with fewer frames than --frames: repeat frames, as TOMATO's sampling "
                         "np.linspace(0, n-1, m, dtype=int) does, or show its own frames")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts (a question's conditions) per forward pass")
    ap.add_argument("--generate", action="store_true",
                    help="answer by greedy generation parsed with TOMATO's regex parser (unparsed = wrong, counted) "
                         "instead of option-letter probabilities")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated per answer under --generate")
    ap.add_argument("--no-internals", action="store_true",
                    help="skip the residual-stream order analysis (one extra forward per ordered/shuffled/reversed run)")
    ap.add_argument("--render-frames", type=int, default=8,
                    help="synthetic only: frames rendered per clip (the organism's training count); the "
                         "conditions sample from these")
    ap.add_argument("--size", type=int, default=None,
                    help="synthetic only: frame size in pixels (default 32, the organism's)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    ap.add_argument("--no-figures", action="store_true", help="write the HDF5 file and the tables only")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's own; 1 avoids oversubscribing a shared machine)")
    return ap


# Flags that change how a run is shown, not its numbers, and those the declaration records itself.
_NOT_CONFIG = ("no_figures", "bootstrap", "threads", "frames", "shuffle_seeds", "counts", "singles", "seed",
               "batch_size", "no_internals", "generate", "max_new_tokens", "short_videos", "human_frames")


def _ablation_config(a) -> AblationConfig:
    """The flags -> AblationConfig; a bad value is a UsageError naming the flag."""
    from analyses.run import UsageError

    try:
        counts = tuple(int(x) for x in a.counts.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--counts {a.counts!r}: expected comma-separated integers") from None
    for flag, v in (("--bootstrap", a.bootstrap), ("--threads", a.threads), ("--render-frames", a.render_frames)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} {v}: must be >= 1")
    try:
        return AblationConfig(frames=a.frames, shuffle_seeds=a.shuffle_seeds, counts=counts,
                              singles=tuple(x for x in a.singles.split(",") if x), seed=a.seed,
                              batch_size=a.batch_size, internals=not a.no_internals, generate=a.generate,
                              max_new_tokens=a.max_new_tokens, short_videos=a.short_videos)
    except ValueError as e:
        raise UsageError(str(e)) from None


def prepare(argv):
    """The CLI arguments -> run.Prepared (model, declaration, dataset), in the
    driver and in every Ray worker."""
    from analyses.cli import check_flags, load_data, load_from_args, preflight, run_config
    from analyses.run import Prepared

    a = build_parser().parse_args(argv)
    if a.frames is None:  # m: TOMATO's 16 on a benchmark; on synthetic the clips' own count (no repeats)
        a.frames = max(a.render_frames, 1) if a.dataset == "synthetic" else 16
    check_flags(a)
    cfg = _ablation_config(a)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    out = preflight("tomato", a)
    human = _read_human_frames(a.human_frames)
    if a.dataset == "synthetic":
        if a.tasks is None:  # the grounding tasks are single-frame questions: nothing to ablate
            from tasks.synthetic import STATIC_TASKS, TEMPORAL_TASKS

            a.tasks = ",".join(TEMPORAL_TASKS + STATIC_TASKS)
        res = load_data(a, n_frames=a.render_frames, size=a.size)
    elif a.dataset == "tomato":
        res = load_data(a, decode=False)  # decoded per question: only the frames the conditions need
    else:
        res = load_data(a)  # the loader's sampled frames stand in for the video
    samples = res.samples
    config = {k: v for k, v in run_config(a).items() if k not in _NOT_CONFIG}
    if human is not None:  # recorded only when given: files written without it still resume
        config["human_frames"] = human[1]
        n, unknown = set_human_frames(samples, human[0])
        print(f"--human-frames {a.human_frames}: {n} of {len(samples)} questions given a human frame"
              + (f"; ids naming no question loaded here: {len(unknown)} (first: {unknown[0]!r}; ids are "
                 f"<reasoning type>-<id>)" if unknown else ""), file=sys.stderr)
    lm = load_from_args(a)
    return Prepared(lm, declare(lm, samples, cfg, config, res.problems), a.dataset, a, out)


def _read_human_frames(path):
    """--human-frames -> ({question id: frame}, what identifies the file in the run's configuration) or None."""
    import hashlib

    from analyses.run import UsageError

    if path is None:
        return None
    try:
        frames = read_human_frames(path)
    except ValueError as e:
        raise UsageError(f"--human-frames: {e}") from None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return frames, {"file": str(Path(path).absolute()), "sha256": digest, "entries": len(frames)}


def main(argv=None) -> Ablation:
    from analyses import run as engine
    from analyses.cli import figures_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    a, out = p.args, p.out
    done = engine.run(p.decl, out, p.lm.name, p.lm.fingerprint, p.dataset,
                      **engine.engine_options(a, "analyses.tomato", argv))
    ab = load_results(out)
    now = {sid for sid, _ in done.skipped}
    for sid, why in ab.skipped:
        if sid not in now:
            print(f"skipped {sid}: {why} (recorded by an earlier run)", file=sys.stderr)
    for n in ab.notes:
        print(f"note: {n}", file=sys.stderr)
    short = int(M.short_videos(ab).sum())
    if short:
        m = M.nominal_frames(ab)
        how = (f"their {m}-frame conditions repeat frames, as TOMATO's sampling np.linspace(0, n-1, m, dtype=int) "
               f"does (--short-videos own: their own frames)" if a.short_videos == "repeat" else
               "each is shown its own frames (--short-videos own), not TOMATO's repeated ones")
        print(f"note: {short} of {len(ab.ids)} questions have a video shorter than --frames {m}: {how}",
              file=sys.stderr)
    with M.undefined_notes(lambda m: print(m, file=sys.stderr)):  # one line per undefined metric
        md, table = report([ab], a.bootstrap, a.seed)
        rows = None if a.no_figures else metric_rows([ab], "task", a.bootstrap, a.seed)
    store_report(out, md, a.bootstrap, a.seed)
    stem = out.with_suffix("")
    Path(f"{stem}.md").write_text(md)
    Path(f"{stem}.csv").write_text(table)
    print(md)
    written = [str(out), f"{stem}.md", f"{stem}.csv"]
    if not a.no_figures:
        written += write_figures(ab, rows, figures_dir(a, out))
    if ab.unparsed is not None:
        print(f"unparsed generated answers (counted wrong): {int(ab.unparsed.sum())}")
    print("wrote " + ", ".join(written), file=sys.stderr)
    return ab


if __name__ == "__main__":
    from analyses.run import cli_boundary

    raise SystemExit(cli_boundary(main)())
