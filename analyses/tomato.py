"""TOMATO's ablations (Shangguan et al. 2024) on any model of the registry, and
what they look like inside the model.

    python -m analyses.tomato --model organism --dataset synthetic
    python -m analyses.tomato --model llava-next --dataset tomato --data-dir ~/TOMATO --frames 16

Every question is answered under a set of frame conditions, each a list of
frame indices into the question's video:

    multi          m frames sampled uniformly (np.linspace(0, n-1, m, dtype=int), as
                   TOMATO); m = --frames, or the video's own count when it has fewer
    single_first   frame 0 (TOMATO's code: its single-frame run takes the first frame)
    single_middle  frame n // 2
    single_random  one frame drawn per question from a seed
    single_human   the frame a human picked as the most informative (the annotation's
                   ``human_frame``; for synthetic clips a rule on the latents, see
                   ``human_frame``); questions without one are left out of rho
    shuffled_<s>   the m frames of ``multi`` in a random order (one per seed; never
                   the identity)
    reversed       the m frames of ``multi`` back to front
    frames_<k>     k frames sampled uniformly: the frame-count curve (k < m; k = m
                   is ``multi``)

Answers come from the option-letter probabilities at the last position
(``tracing.scoring.score``, batched, no generation) or, with ``--generate``,
from generated text read by TOMATO's answer parser (``parse_answer``);
unparsed answers count as wrong and their number is reported. Conditions that
give a question the same frame list (``frames_1`` and ``single_first``) share
one forward pass.

Metrics (``analyses.tomato_metrics``): kappa, tau and rho per model and task,
bootstrap 95% intervals over questions, averages over models as means of
per-model values. Inside the model: for every layer, the cosine distance
between the last position's residual stream of the ordered run and of each
shuffled / reversed run, and the linear CKA between them over questions; per
question, how often the answer flips under shuffling.

Outputs: an HDF5 file (``tracing.store.ResultsFile``; per-question
correctness, prediction, option probabilities and frame indices of every
condition, so every number can be recomputed), a markdown and a CSV table in
the layout of the paper's table next to it, and figures in ``--figures``
(default ``<out stem>_figures/``: accuracy against frame count; kappa / tau /
rho per task with intervals; order sensitivity against layer).
``notebooks/tomato.ipynb`` rebuilds the table and figures from the file.

A run is resumable: every chunk of ``--chunk`` questions is saved into --out
as it completes (the residual streams of the order analysis wait in
``<out>.residuals`` until it is stored), and the same command run again after a
kill skips the chunks already there and ends with the numbers of an
uninterrupted run. An --out of another configuration is refused; with
--overwrite the run writes ``<out stem>.next.h5`` and replaces --out with it
only once it has finished.
"""
from __future__ import annotations

import csv
import io
import os
import re
import sys
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasks.types import LETTERS, Sample
from tasks.video import VideoError, count_frames, duration, load_frames_at, sample_indices

from . import tomato_metrics as M

SINGLE_PICKS = ("first", "middle", "random", "human")
DEFAULT_COUNTS = (1, 2, 4, 8, 16)
GROUPINGS = ("task", "demonstration_type")


# ============================================================== conditions
@dataclass(frozen=True)
class Condition:
    """One way of choosing a question's frames.

    kind:  'multi' | 'single' | 'shuffled' | 'reversed' | 'count'
    count: the nominal frame count (m for multi / shuffled / reversed, k for count, 1 for single)
    pick:  for 'single': first | middle | random | human
    seed:  for 'shuffled' and single 'random': the seed
    """

    name: str
    kind: str
    count: int
    pick: str = ""
    seed: int = 0


@dataclass
class AblationConfig:
    """What to run. ``frames``: m; ``shuffle_seeds``: how many shuffled runs;
    ``counts``: the frame-count curve (values >= frames collapse onto ``multi``);
    ``singles``: which single-frame picks; ``internals``: capture the residual
    stream for the order analysis; ``generate``: answer by generation and
    TOMATO's parser instead of letter probabilities; ``chunk``: questions whose
    frames are decoded and run together (and saved together by a resumable run)."""

    frames: int = 16
    shuffle_seeds: int = 3
    counts: tuple[int, ...] = DEFAULT_COUNTS
    singles: tuple[str, ...] = SINGLE_PICKS
    seed: int = 0
    batch_size: int = 8
    internals: bool = True
    generate: bool = False
    max_new_tokens: int = 8
    chunk: int = 16

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if self.shuffle_seeds < 0:
            raise ValueError(f"shuffle_seeds must be >= 0, got {self.shuffle_seeds}")
        bad = [p for p in self.singles if p not in SINGLE_PICKS]
        if bad:
            raise ValueError(f"unknown single-frame pick(s) {bad}; valid: {list(SINGLE_PICKS)}")
        if any(int(k) < 1 for k in self.counts):
            raise ValueError(f"frame counts must be >= 1, got {list(self.counts)}")
        self.counts = tuple(int(k) for k in self.counts)
        self.singles = tuple(self.singles)


def plan_conditions(cfg: AblationConfig) -> list[Condition]:
    """The conditions of a run, in the order they are evaluated (``multi``
    first: shuffled and reversed are permutations of its frames)."""
    m = cfg.frames
    out = [Condition("multi", "multi", m)]
    out += [Condition(f"single_{p}", "single", 1, pick=p, seed=cfg.seed) for p in cfg.singles]
    out += [Condition(f"shuffled_{s}", "shuffled", m, seed=cfg.seed + s) for s in range(cfg.shuffle_seeds)]
    out.append(Condition("reversed", "reversed", m))
    out += [Condition(f"frames_{k}", "count", k) for k in sorted(set(cfg.counts)) if k < m]
    return out


def curve_of(conditions: list[Condition]) -> list[tuple[int, str]]:
    """(nominal frame count, condition name) of the frame-count curve, ascending."""
    pts = [(c.count, c.name) for c in conditions if c.kind == "count"]
    pts += [(c.count, c.name) for c in conditions if c.kind == "multi"]
    return sorted(pts)


def _rng(tag: int, seed: int, sample_id: str) -> np.random.Generator:
    # Keyed by the question's id, not its position: the same question gets the
    # same draw whatever --limit or --tasks selected around it.
    return np.random.default_rng([tag, int(seed), zlib.crc32(sample_id.encode())])


def frame_indices(cond: Condition, n_total: int, human: int = -1, sample_id: str = "") -> np.ndarray | None:
    """The frame indices (int [k], into the question's n_total frames) a condition
    shows, or None where it does not apply (no human frame, or one past the end)."""
    if n_total < 1:
        raise ValueError(f"question {sample_id!r}: a video needs at least one frame")
    if cond.kind in ("multi", "count", "shuffled", "reversed"):
        u = sample_indices(n_total, min(cond.count, n_total))
        if cond.kind == "reversed":
            return u[::-1].copy()
        if cond.kind == "shuffled" and len(u) > 1:
            rng = _rng(2, cond.seed, sample_id)
            perm = rng.permutation(len(u))
            while (perm == np.arange(len(u))).all():  # the identity would measure nothing
                perm = rng.permutation(len(u))
            return u[perm]
        return u
    if cond.kind == "single":
        if cond.pick == "first":
            return np.array([0])
        if cond.pick == "middle":
            return np.array([n_total // 2])
        if cond.pick == "random":
            return np.array([int(_rng(1, cond.seed, sample_id).integers(n_total))])
        if cond.pick == "human":
            return np.array([human]) if 0 <= human < n_total else None
    raise ValueError(f"unknown condition {cond}")


def human_frame(sample: Sample) -> int:
    """The human-picked most informative frame of a question, or -1.

    A benchmark annotation's ``human_frame`` (an index into the video's frames)
    when it has one. A synthetic clip has no annotator; the frame is picked
    from its latents by the rule an annotator would follow: for ``order`` and
    ``referring`` (the answer is a colour one frame can show), the first frame
    showing the answer colour; for every other task the middle frame (the middle
    of the motion: for direction, rotation, velocity, count, brightness and size
    change no single frame holds the answer, which is what rho then measures).
    """
    if "human_frame" in sample.meta:
        return int(sample.meta["human_frame"])
    objs = sample.latents.get("objects")
    if objs is None:
        return -1
    if sample.task in ("order", "referring"):
        colour = sample.options[sample.answer]
        for t, frame in enumerate(objs):
            if any(o["color"] == colour for o in frame):
                return t
    return len(objs) // 2


# ============================================================== answer parsing
def parse_answer(response: str, options: list[str], opened: bool = True) -> int | None:
    """TOMATO's regex answer parser -> option index, or None (counted wrong).

    Its rules (src/parse_result.py ``pre_parser``), on the stripped response:
    a bare option letter; the exact ``"X: option text"``; ``Answer is: (X)``
    (their regex, with optional spaces so that ``Answer is: (C)`` matches as
    the paper writes it, and any of the question's letters, not only A-F).
    Their GPT-4o-mini fallback is not available offline. ``opened``: our
    prompts end with ``Best option:(``, so a response ``X)`` / ``X) text``
    closes that parenthesis and names X.
    """
    r = response.strip()
    letters = LETTERS[: len(options)]
    if len(r) == 1 and r.upper() in letters:
        return letters.index(r.upper())
    full = {f"{letters[i]}: {o}".upper(): i for i, o in enumerate(options)}
    if r.upper() in full:
        return full[r.upper()]
    cls = f"[{letters}{letters.lower()}]"
    m = re.match(rf"^Answer is:?\s*\(?\s*({cls})\s*\)?\.?$", r, flags=re.IGNORECASE)
    if m:
        return letters.index(m.group(1).upper())
    if opened:
        m = re.match(rf"^({cls})\s*\)", r)
        if m:
            return letters.index(m.group(1).upper())
    return None


# ============================================================== frames
@dataclass
class _Prepared:
    """One question ready to run: its video length, each condition's frame
    indices (None: not applicable) and the frames those indices need."""

    row: int
    sample: Sample
    n_total: int
    human: int
    indices: dict[str, np.ndarray | None]
    store: dict[int, np.ndarray]
    seconds: float | None = None  # of the whole video, when known

    def frames(self, name: str) -> np.ndarray:
        return np.stack([self.store[int(i)] for i in self.indices[name]])

    def sampled_fps(self, name: str) -> float | None:
        """Frames kept per second of video under a condition (Qwen2.5-VL's time positions)."""
        return len(self.indices[name]) / self.seconds if self.seconds else None


def prepare(sample: Sample, row: int, conditions: list[Condition], recipe=None) -> tuple[_Prepared, list[str]]:
    """A question's frames for every condition -> (_Prepared, notes).

    Frames in memory (synthetic, or a loader that decoded them) are the video;
    otherwise ``sample.video_path`` is decoded once, keeping only the frames some
    condition needs, resized as the model's ``recipe`` resizes them (so that a
    1080p video costs no more memory than the model's input). VideoError names
    the file when it is missing or unreadable."""
    notes = []
    h = human_frame(sample)
    seconds = None
    if sample.frames is not None:
        n_total = int(sample.frames.shape[0])
        if sample.meta.get("sampled_fps"):
            seconds = n_total / sample.meta["sampled_fps"]
    elif sample.video_path:
        n_total = count_frames(sample.video_path)
        seconds = duration(sample.video_path)
        if n_total == 0:
            raise VideoError(sample.video_path, "contains no decodable frames")
    else:
        raise VideoError("<none>", f"question {sample.id!r} has neither frames nor a video path")
    if h >= n_total:
        notes.append(f"{sample.id}: human frame {h} is past the video's {n_total} frames; left out of rho")
    idx = {c.name: frame_indices(c, n_total, h, sample.id) for c in conditions}
    need = sorted({int(i) for v in idx.values() if v is not None for i in v})
    if sample.frames is not None:
        store = {i: sample.frames[i] for i in need}
    else:
        arr = load_frames_at(sample.video_path, need)
        if recipe is not None:
            from tracing.preprocess import resize_frames

            arr = resize_frames(arr, recipe)  # idempotent: build_inputs' own resize is then a no-op
        store = {i: arr[j] for j, i in enumerate(need)}
    return _Prepared(row, sample, n_total, h, idx, store, seconds), notes


# ============================================================== results
@dataclass
class Ablation:
    """What one run measured (what the HDF5 file holds). n questions, C conditions.

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


# ============================================================== running
class NothingRan(ValueError):
    """Every question's video was missing or unreadable; ``problems`` says which and why."""

    def __init__(self, message: str, problems: list[tuple[str, str, str]]):
        super().__init__(message)
        self.problems = problems


def _score(lm, entries: list[tuple[_Prepared, str]], batch_size: int, generate: bool, max_new_tokens: int):
    """(question, condition) pairs -> list of (pred, probs [k] | None, response | None),
    in order. Videos are batched by frame shape (LLaVA stacks them)."""
    from tracing.inputs import build_inputs
    from tracing.scoring import score

    out: list = [None] * len(entries)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for j, (p, name) in enumerate(entries):
        ix = p.indices[name]
        by_shape[(len(ix), *p.store[int(ix[0])].shape)].append(j)
    for js in by_shape.values():
        for b0 in range(0, len(js), batch_size):
            chunk = js[b0 : b0 + batch_size]
            items = []
            for j in chunk:  # built per batch: a 16-frame 336 px video is 20 MB of pixels
                p, name = entries[j]
                s = p.sample
                items.append(build_inputs(lm, p.frames(name), s.question, s.options, s.answer,
                                          sampled_fps=p.sampled_fps(name)))
            if generate:
                for j, (inp, _) in zip(chunk, items):
                    text = _generate(lm, inp, max_new_tokens)
                    k = parse_answer(text, entries[j][0].sample.options)
                    out[j] = (-1 if k is None else k, None, text)
            else:
                sc = score(lm, items, batch_size)
                for r, j in enumerate(chunk):
                    out[j] = (int(sc.pred[r]), sc.probs[r], None)
    return out


def _generate(lm, inputs: dict, max_new_tokens: int) -> str:
    import torch

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        g = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tok.decode(g[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _residuals(lm, p: _Prepared, name: str) -> np.ndarray:
    """The last position's residual stream after every layer: float32 [L, d]."""
    from tracing.capture import capture
    from tracing.inputs import build_inputs

    s = p.sample
    inp, lay = build_inputs(lm, p.frames(name), s.question, s.options, s.answer, sampled_fps=p.sampled_fps(name))
    acts = capture(lm, inp, lay, "resid_post", positions="last")
    return np.stack([acts[f"blocks.{l}.hook_resid_post"].float().cpu().numpy() for l in range(lm.n_layers)])


def _metas(ids, tasks, answers, n_options) -> list:
    """The file's /samples: one SampleMeta per question asked."""
    from tracing.store import SampleMeta

    return [SampleMeta(str(i), str(t), int(a), int(a), {"n_options": int(k)})
            for i, t, a, k in zip(ids, tasks, answers, n_options)]


def sample_metas(samples: list[Sample]) -> list:
    """The /samples rows of a run over these questions (what a results file is identified by)."""
    return _metas([s.id for s in samples], [s.task for s in samples], [s.answer for s in samples],
                  [len(s.options) for s in samples])


@dataclass
class _Record:
    """Per-question results of a run over N questions (the rows of the file's
    /samples, those whose video failed included), filled chunk by chunk: the
    layout the file stores. Shapes as in ``Ablation`` with n = N, plus

    ok:       bool [N] the question ran (False: its video is missing or unreadable)
    done:     bool [N] the question was attempted (ran or failed): what a resumed run skips
    problems: {row: (id, path, reason)}; notes: {row: [text]}
    """

    correct: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    n_total: np.ndarray
    human: np.ndarray
    ok: np.ndarray
    done: np.ndarray
    responses: np.ndarray | None
    unparsed: np.ndarray | None
    problems: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    ARRAYS = ("correct", "pred", "probs", "indices", "n_total", "human", "ok", "done", "responses", "unparsed")
    STORED = {"human": "human_frame"}  # field -> result name, where they differ

    @classmethod
    def empty(cls, C: int, N: int, K: int, F: int, generate: bool) -> "_Record":
        return cls(correct=np.full((C, N), np.nan), pred=np.full((C, N), -1, dtype=np.int64),
                   probs=np.full((C, N, K), np.nan), indices=np.full((C, N, F), -1, dtype=np.int64),
                   n_total=np.zeros(N, dtype=np.int64), human=np.full(N, -1, dtype=np.int64),
                   ok=np.zeros(N, dtype=bool), done=np.zeros(N, dtype=bool),
                   responses=np.full((C, N), "", dtype=object) if generate else None,
                   unparsed=np.zeros((C, N), dtype=bool) if generate else None)

    def reset(self, rows: list[int]) -> None:
        """Forget what these rows hold (a chunk about to run again)."""
        C, N, K = self.probs.shape
        fresh = _Record.empty(C, N, K, self.indices.shape[2], self.responses is not None)
        for name in self.ARRAYS:
            a, b = getattr(self, name), getattr(fresh, name)
            if a is None:
                continue
            if a.ndim == 1:
                a[rows] = b[rows]
            else:
                a[:, rows] = b[:, rows]
        for r in rows:
            self.problems.pop(r, None)
            self.notes.pop(r, None)

    @classmethod
    def load(cls, path: Path, C: int, N: int, K: int, F: int, generate: bool) -> "_Record | None":
        """The progress a file holds, or None when it holds none of this shape."""
        from tracing.store import CacheReader

        r = CacheReader(path)
        if "tomato/done" not in r.results():
            return None  # written before runs were resumable, or another analysis's file
        rec = cls.empty(C, N, K, F, generate)
        for name in cls.ARRAYS:
            if getattr(rec, name) is None:
                continue
            arr, attrs = r.result(f"tomato/{cls.STORED.get(name, name)}")
            if arr.shape != getattr(rec, name).shape:
                return None
            setattr(rec, name, arr.astype(object) if name == "responses" else arr)
        _, attrs = r.result("tomato/done")
        rec.problems = {int(row): (i, p, why) for row, i, p, why in attrs["problems"]}
        for row, text in attrs["notes"]:
            rec.notes.setdefault(int(row), []).append(text)
        return rec

    def save(self, rf, conds: list[Condition]) -> None:
        """Write every array into a ResultsFile, ``done`` last: a kill in between
        leaves rows not marked done, which a resumed run computes again."""
        cattrs = {"conditions": [asdict(c) for c in conds]}
        w = lambda name, arr, attrs=None: rf.write_result(f"tomato/{name}", arr, attrs, overwrite=True)  # noqa: E731
        w("correct", self.correct, {**cattrs, "notes": self.note_list()})
        w("pred", self.pred, cattrs)
        w("probs", self.probs, cattrs)
        w("indices", self.indices, cattrs)
        w("n_total", self.n_total)
        w("human_frame", self.human)
        w("ok", self.ok, {"what": "the question ran (False: its video is missing or unreadable)"})
        if self.responses is not None:
            w("responses", np.asarray(self.responses, dtype=str), cattrs)
            w("unparsed", self.unparsed, cattrs)
        w("done", self.done, {"what": "the question was attempted; a resumed run skips these",
                              "problems": [[r, *self.problems[r]] for r in sorted(self.problems)],
                              "notes": [[r, t] for r in sorted(self.notes) for t in self.notes[r]]})

    def note_list(self) -> list[str]:
        return [t for r in sorted(self.notes) for t in self.notes[r]]

    def problem_list(self) -> list[tuple[str, str, str]]:
        return [tuple(self.problems[r]) for r in sorted(self.problems)]


class _Residuals:
    """The last position's residual stream of each question under multi, shuffled_*
    and reversed, kept until the order analysis has every question: in memory, or,
    for a resumable run, in a kill-safe activation cache (``tracing.store.CacheWriter``)
    at ``path``, so that a resumed run does not recompute them. The cache is scratch:
    one of another run is replaced, and ``remove`` deletes it once the analysis is stored."""

    def __init__(self, path: Path | None, ident: tuple):
        self.path, self.ident = path, ident
        self._mem: dict[str, np.ndarray] = {}
        self._w = None
        self._done: set[int] = set()
        if path is not None and path.exists():
            self._open()

    def _open(self):
        from tracing.store import CacheMismatchError, CacheWriter

        try:
            self._w = CacheWriter.open(self.path, *self.ident)
        except CacheMismatchError:
            self.path.unlink()
            self._w = CacheWriter.open(self.path, *self.ident)

    def complete(self, row: int) -> bool:
        if self.path is None:
            return row in self._done
        return self._w is not None and self._w.is_complete(row)

    def put(self, row: int, acts: dict[str, np.ndarray], n: int) -> None:
        """Store row's residuals {condition: float32 [L, d]} (n: questions in the run)."""
        if self.path is None:
            for name, r in acts.items():
                if name not in self._mem:
                    self._mem[name] = np.full((n, *r.shape), np.nan, dtype=np.float32)
                self._mem[name][row] = r
            self._done.add(row)
            return
        if self._w is None:
            self._open()
        self._w.write_sample(row, acts, {})

    def get(self, rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """{condition: float32 [len(rows), L, d]} for the given conditions, in their order."""
        if self.path is None:
            return {k: self._mem[k][rows] for k in names}
        from tracing.store import CacheReader

        if self._w is not None:  # HDF5 does not open one file twice in a process
            self._w.close()
            self._w = None
        r = CacheReader(self.path)
        return {k: r.acts(k, rows) for k in names}

    def remove(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def residuals_path(checkpoint: str | Path) -> Path:
    """Where a resumable run keeps its residual streams until the order analysis is stored."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".residuals")


def run_ablation(lm, samples: list[Sample], cfg: AblationConfig, dataset: str = "synthetic",
                 config: dict | None = None, progress: bool = True,
                 checkpoint: str | Path | None = None) -> tuple[Ablation, list[tuple[str, str, str]]]:
    """Answer every question under every condition.

    Questions run in chunks of ``cfg.chunk`` (their frames decoded together).
    checkpoint: a results file (``tracing.store.ResultsFile``) that every chunk
    is saved into as it completes, in the layout ``load_results`` reads; the
    residual streams of the order analysis wait in ``residuals_path(checkpoint)``
    (deleted once the analysis is stored). A call with the same model, dataset,
    configuration and questions resumes it: chunks already there are not run
    again, and the result equals an uninterrupted run's. The file is created
    with the first chunk in which a question runs (if none does, nothing is
    written); one of another run raises CacheMismatchError and is not touched.

    Returns (Ablation over the questions that ran, problems): problems are
    (question id, video path, reason) for each question whose video is missing
    or unreadable; those questions are left out.
    """
    from tqdm import tqdm

    from tracing.store import CacheReader, ResultsFile

    if not samples:
        raise ValueError("run_ablation: no questions to run")
    conds = plan_conditions(cfg)
    C, N = len(conds), len(samples)
    K = max(len(s.options) for s in samples)
    F = max(cfg.frames, 1)
    config = config if config is not None else asdict(cfg)
    metas = sample_metas(samples)
    ident = (lm.name, lm.fingerprint, dataset, config, metas)
    rf, rec = None, None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            rf = ResultsFile.open(checkpoint, *ident)  # CacheMismatchError: another run's
            rec = _Record.load(checkpoint, C, N, K, F, cfg.generate)
    rec = rec or _Record.empty(C, N, K, F, cfg.generate)
    stored = rec.done.all() and rf is not None and "tomato/internals/cos" in CacheReader(checkpoint).results()
    perturbed = [c.name for c in conds if c.kind in ("shuffled", "reversed")]
    resid = None
    if cfg.internals and not stored:
        resid = _Residuals(None if checkpoint is None else residuals_path(checkpoint), ident)
    recipe = getattr(lm, "recipe", None)

    bar = tqdm(total=N, desc=f"tomato ablations ({lm.name})", unit="question", disable=not progress)
    for c0 in range(0, N, cfg.chunk):
        rows = list(range(c0, min(c0 + cfg.chunk, N)))
        if all(rec.done[r] and (resid is None or not rec.ok[r] or resid.complete(r)) for r in rows):
            bar.update(len(rows))
            continue
        rec.reset(rows)  # a chunk runs whole: its batches, hence its numbers, are an uninterrupted run's
        prepared = []
        for row in rows:
            s = samples[row]
            rec.done[row] = True
            try:
                p, nts = prepare(s, row, conds, recipe)
            except VideoError as e:
                rec.problems[row] = (s.id, e.path, e.reason)
                continue
            if nts:
                rec.notes[row] = nts
            prepared.append(p)
            rec.ok[row] = True
            rec.n_total[row], rec.human[row] = p.n_total, p.human
            for ci, c in enumerate(conds):
                ix = p.indices[c.name]
                if ix is not None:
                    rec.indices[ci, row, : len(ix)] = ix
        done: dict[tuple, tuple] = {}  # (row, frame list) -> result: identical inputs run once
        for ci, c in enumerate(conds):
            bar.set_postfix(condition=c.name)
            todo, keys = [], []
            for p in prepared:
                ix = p.indices[c.name]
                if ix is None:
                    continue
                key = (p.row, tuple(int(i) for i in ix))
                if key not in done:
                    todo.append((p, c.name))
                    keys.append(key)
            for key, res in zip(keys, _score(lm, todo, cfg.batch_size, cfg.generate, cfg.max_new_tokens)):
                done[key] = res
            for p in prepared:
                ix = p.indices[c.name]
                if ix is None:
                    continue
                k, pr, text = done[(p.row, tuple(int(i) for i in ix))]
                rec.pred[ci, p.row] = k
                rec.correct[ci, p.row] = float(k == p.sample.answer)
                if pr is not None:
                    rec.probs[ci, p.row, : len(pr)] = pr
                if cfg.generate:
                    rec.responses[ci, p.row] = text
                    rec.unparsed[ci, p.row] = k < 0
        if resid is not None:
            bar.set_postfix(condition="residuals")
            for p in prepared:
                resid.put(p.row, {name: _residuals(lm, p, name) for name in ["multi", *perturbed]}, N)
        if checkpoint is not None and rec.ok.any():
            rf = rf or ResultsFile.open(checkpoint, *ident)
            _write_static(rf, samples, conds)
            rec.save(rf, conds)
        bar.update(len(rows))
    bar.close()

    problems = rec.problem_list()
    keep = np.flatnonzero(rec.ok)
    if keep.size == 0:
        raise NothingRan(f"none of the {N} questions could be run (no video decoded)", problems)
    groups = {"task": np.array([samples[i].task for i in keep], dtype=object)}
    demo = [samples[i].meta.get("demonstration_type") for i in keep]
    if any(d is not None for d in demo):
        groups["demonstration_type"] = np.array([d or "" for d in demo], dtype=object)
    ab = Ablation(
        model=lm.name, fingerprint=lm.fingerprint, dataset=dataset, config=config, conditions=conds,
        ids=np.array([samples[i].id for i in keep], dtype=object),
        answers=np.array([samples[i].answer for i in keep]),
        n_options=np.array([len(samples[i].options) for i in keep]),
        groups=groups, correct=rec.correct[:, keep], pred=rec.pred[:, keep], probs=rec.probs[:, keep],
        indices=rec.indices[:, keep], n_total=rec.n_total[keep], human_frame=rec.human[keep],
        responses=None if rec.responses is None else rec.responses[:, keep],
        unparsed=None if rec.unparsed is None else rec.unparsed[:, keep], notes=rec.note_list(),
    )
    if stored:
        _read_internals(CacheReader(checkpoint), ab, keep)
    elif cfg.internals:
        order_internals(ab, resid.get(keep, ["multi", *perturbed]))
        if checkpoint is not None:
            _write_internals(rf, ab, keep, N)
        resid.remove()
    return ab, problems


def _write_static(rf, samples: list[Sample], conds: list[Condition]) -> None:
    """What the questions alone fix (written with the first chunk)."""
    from tracing.store import CacheReader

    if "tomato/n_options" in CacheReader(rf.path).results():
        return
    rf.write_result("tomato/n_options", np.array([len(s.options) for s in samples]), overwrite=True)
    groups = {"task": [s.task for s in samples]}
    demo = [s.meta.get("demonstration_type") for s in samples]
    if any(d is not None for d in demo):
        groups["demonstration_type"] = [d or "" for d in demo]
    for g, v in groups.items():
        rf.write_result(f"tomato/groups/{g}", np.asarray(v, dtype=str), overwrite=True)


def _scatter(x: np.ndarray, rows: np.ndarray, N: int, axis: int) -> np.ndarray:
    """x with its ``axis`` (one entry per question that ran) spread over all N questions, NaN elsewhere."""
    shape = list(x.shape)
    shape[axis] = N
    out = np.full(shape, np.nan)
    idx = [slice(None)] * x.ndim
    idx[axis] = rows
    out[tuple(idx)] = x
    return out


def _write_internals(rf, ab: Ablation, rows: np.ndarray, N: int) -> None:
    if not ab.cos:
        return
    names = list(ab.cos)
    tasks = list(dict.fromkeys(ab.tasks))
    a = {"conditions": names, "layers": ab.layers}
    w = lambda name, arr, attrs: rf.write_result(f"tomato/internals/{name}", arr, attrs, overwrite=True)  # noqa: E731
    w("cos", _scatter(np.stack([ab.cos[n] for n in names]), rows, N, 1), a)
    w("cka", np.stack([ab.cka[n] for n in names]), a)
    w("cka_task", np.stack([ab.cka_task[n] for n in names]), {**a, "tasks": tasks})


def _read_internals(r, ab: Ablation, rows: np.ndarray) -> None:
    names = r.results()
    if "tomato/internals/cos" not in names:
        return
    cos, a = r.result("tomato/internals/cos")
    cka, _ = r.result("tomato/internals/cka")
    cka_task, _ = r.result("tomato/internals/cka_task")
    ab.layers = list(a["layers"])
    for j, n in enumerate(a["conditions"]):
        ab.cos[n], ab.cka[n], ab.cka_task[n] = cos[j][rows], cka[j], cka_task[j]


def order_internals(ab: Ablation, resid: dict[str, np.ndarray], min_task: int = 8) -> None:
    """Fill ab.cos / ab.cka / ab.cka_task from residuals {condition: float [n, L, d]}
    (``multi`` is the ordered reference)."""
    ref = resid["multi"]
    L = ref.shape[1]
    ab.layers = list(range(L))
    tasks = list(dict.fromkeys(ab.tasks))
    for name, x in resid.items():
        if name == "multi":
            continue
        ab.cos[name] = M.cosine_distance(ref, x)
        ab.cka[name] = np.array([M.linear_cka(ref[:, l], x[:, l]) for l in range(L)])
        per = np.full((len(tasks), L), np.nan)
        for t, task in enumerate(tasks):
            m = ab.tasks == task
            if m.sum() >= min_task:  # CKA of a handful of points is 1 by construction
                per[t] = [M.linear_cka(ref[m, l], x[m, l]) for l in range(L)]
        ab.cka_task[name] = per


# ============================================================== the HDF5 file
# One row per question asked (/samples), those whose video failed included
# (tomato/ok False); every per-question array has that row axis, NaN / -1 where
# a question did not run. tomato/done marks the rows a run has finished, so a
# killed run resumes; tomato/report is written last.
def save_results(ab: Ablation, path: str | Path, report_md: str | None = None, n_boot: int = 1000,
                 seed: int = 0) -> Path:
    """Write an Ablation into a ResultsFile (created, or overwritten in one of the
    same run); it refuses a file of another model or configuration. Everything
    under /results/tomato/; ``report_md`` (the table as written, with the
    bootstrap settings that made it) lets a reader check that its own rebuild
    matches. (The CLI writes the same layout chunk by chunk: ``run_ablation``'s
    checkpoint, then ``finish_results``.)"""
    from tracing.store import ResultsFile

    n = len(ab.ids)
    rf = ResultsFile.open(path, ab.model, ab.fingerprint, ab.dataset, ab.config,
                          _metas(ab.ids, ab.tasks, ab.answers, ab.n_options))
    rec = _Record(correct=ab.correct, pred=ab.pred, probs=ab.probs, indices=ab.indices, n_total=ab.n_total,
                  human=ab.human_frame, ok=np.ones(n, bool), done=np.ones(n, bool), responses=ab.responses,
                  unparsed=ab.unparsed, notes={0: list(ab.notes)} if ab.notes else {})
    rf.write_result("tomato/n_options", np.asarray(ab.n_options), overwrite=True)
    for g, v in ab.groups.items():
        rf.write_result(f"tomato/groups/{g}", np.asarray(v, dtype=str), overwrite=True)
    rec.save(rf, ab.conditions)
    _write_internals(rf, ab, np.arange(n), n)
    return finish_results(ab, path, report_md, n_boot, seed)


def finish_results(ab: Ablation, path: str | Path, report_md: str | None = None, n_boot: int = 1000,
                   seed: int = 0) -> Path:
    """Add what is derived from a whole run to its file: per-question flip rates and
    the report (written last: a file with a report is a finished run)."""
    from tracing.store import CacheReader, ResultsFile

    r = CacheReader(path)
    ok = r.result("tomato/ok")[0] if "tomato/ok" in r.results() else np.ones(r.n_samples, bool)
    rows = np.flatnonzero(ok)
    if r.samples["id"][rows].tolist() != [str(i) for i in ab.ids]:
        raise ValueError(f"{path}: its questions are not this Ablation's")
    rf = ResultsFile(path)
    rf.write_result("tomato/flip_rate", _scatter(ab.flip_rate(), rows, r.n_samples, 0),
                    {"what": "fraction of shuffle seeds under which the answer differs from multi's"},
                    overwrite=True)
    if report_md is not None:
        rf.write_result("tomato/report", np.array(report_md), {"n_boot": int(n_boot), "seed": int(seed)},
                        overwrite=True)
    return Path(path)


def run_progress(path: str | Path) -> tuple[int, int] | None:
    """(questions done, questions asked) of the run a results file holds: what a
    resumed run skips. None when it holds no TOMATO run."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    names = r.results()
    if "tomato/done" in names:
        return int(r.result("tomato/done")[0].sum()), r.n_samples
    if "tomato/correct" in names:  # killed while its first chunk was written, or older than resuming: run again
        return 0, r.n_samples
    return None


def stored_report(path: str | Path) -> tuple[str, dict]:
    """(markdown table as the CLI wrote it, {'n_boot', 'seed'}) from a results file."""
    from tracing.store import CacheReader

    text, attrs = CacheReader(path).result("tomato/report")
    return str(text), attrs


def load_results(path: str | Path, partial: bool = False) -> Ablation:
    """An Ablation read back from a file written by ``save_results`` or the CLI:
    the questions that ran. A file whose run is not finished raises ValueError
    (re-run the same command to finish it) unless ``partial``: then the
    questions done so far (without the order analysis, which needs them all)."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    names = r.results()
    if "tomato/correct" not in names:
        raise KeyError(f"{path}: no TOMATO results (it holds {names}); write one with python -m analyses.tomato")
    s = r.samples
    N = len(s["id"])
    get = lambda n: r.result(f"tomato/{n}")[0] if f"tomato/{n}" in names else None  # noqa: E731
    done = get("done") if "tomato/done" in names else np.ones(N, bool)
    if not done.all() and not partial:
        raise ValueError(f"{path}: the run is not finished ({int(done.sum())} of {N} questions done); re-run the "
                         "same command to resume it, or pass partial=True")
    ok = get("ok") if "tomato/ok" in names else np.ones(N, bool)
    keep = np.flatnonzero(ok & done)
    correct, attrs = r.result("tomato/correct")
    conds = [Condition(**c) for c in attrs["conditions"]]
    groups = {"task": s["task"].astype(object)[keep]}
    for n in names:
        if n.startswith("tomato/groups/") and n != "tomato/groups/task":
            groups[n.split("/")[-1]] = r.result(n)[0].astype(object)[keep]
    col = lambda a: None if a is None else a[:, keep]  # noqa: E731
    ab = Ablation(
        model=str(r.attrs["model"]), fingerprint=str(r.attrs["model_fingerprint"]), dataset=str(r.attrs["dataset"]),
        config=r.config, conditions=conds, ids=s["id"].astype(object)[keep], answers=s["answer"][keep],
        n_options=get("n_options")[keep], groups=groups, correct=correct[:, keep], pred=col(get("pred")),
        probs=col(get("probs")), indices=col(get("indices")), n_total=get("n_total")[keep],
        human_frame=get("human_frame")[keep],
        responses=None if get("responses") is None else get("responses").astype(object)[:, keep],
        unparsed=col(get("unparsed")), notes=list(attrs.get("notes", [])),
    )
    if done.all():
        _read_internals(r, ab, keep)
    return ab


# ============================================================== the table
COLUMNS = ["model", "by", "group", "n", "acc_first", "acc_middle", "acc_random", "acc_human", "n_human", "acc_multi",
           "acc_shuffled", "acc_reversed", "kappa", "kappa_lo", "kappa_hi", "tau", "tau_lo", "tau_hi", "rho", "rho_lo",
           "rho_hi", "tau_reversed", "flip_rate", "unparsed"]


def _group_order(values: np.ndarray) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values))


def _pairs(ab: Ablation, mask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (numerator, denominator) per-question correctness [k]."""
    multi, first = ab.correct_of("multi")[mask], ab.correct_of("single_first")[mask]
    return {"kappa": (multi, first), "tau": (multi, ab.shuffled_correct()[mask]),
            "rho": (ab.correct_of("single_human")[mask], first)}


_GAINS = {"kappa": M.kappa, "tau": M.tau, "rho": M.rho}


def metric_rows(runs: list[Ablation], by: str = "task", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per model and group (+ 'all'), and with several models an
    'average' row per group: accuracies and metrics as means of per-model
    values, intervals from a bootstrap that resamples every model's questions.

    by: 'task' or 'demonstration_type' (benchmarks). Accuracies are percent;
    kappa / tau / rho are NaN where undefined (with an UndefinedMetricWarning).
    """
    rows = []
    per_group: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    order: list[str] = []
    for ab in runs:
        if by not in ab.groups:
            raise KeyError(f"run of {ab.model!r} has no grouping {by!r}; it has {list(ab.groups)}")
        gv = ab.groups[by].astype(str)
        for g in _group_order(gv) + ["all"]:
            if g not in order:
                order.append(g)
            mask = np.ones(len(gv), bool) if g == "all" else gv == g
            where = f"{ab.model}, {by}={g}"
            pairs = _pairs(ab, mask)
            row = {"model": ab.model, "by": by, "group": g, "n": int(mask.sum()),
                   "acc_first": M.accuracy(ab.correct_of("single_first")[mask]),
                   "acc_middle": M.accuracy(ab.correct_of("single_middle")[mask]),
                   "acc_random": M.accuracy(ab.correct_of("single_random")[mask]),
                   "acc_human": M.accuracy(pairs["rho"][0]),
                   "n_human": int((~np.isnan(ab.correct_of("single_human")[mask])).sum()),
                   "acc_multi": M.accuracy(ab.correct_of("multi")[mask]),
                   "acc_shuffled": M.accuracy(pairs["tau"][1]),
                   "acc_reversed": M.accuracy(ab.correct_of("reversed")[mask])}
            for k, (num, den) in pairs.items():
                n, d = M.paired(num, den)
                row[k] = _GAINS[k](M.accuracy(n), M.accuracy(d), where)
                row[f"{k}_lo"], row[f"{k}_hi"] = M.bootstrap_gain([(num, den)], n_boot, seed)
            row["tau_reversed"] = M.gain(ab.correct_of("multi")[mask], ab.correct_of("reversed")[mask],
                                         "tau (reversed)", where)
            row["flip_rate"] = float(np.nanmean(ab.flip_rate()[mask]) * 100) if ab.shuffled_names else float("nan")
            row["unparsed"] = int(ab.unparsed[:, mask].sum()) if ab.unparsed is not None else 0
            rows.append(row)
            per_group[g].append((row, pairs))
    if len(runs) > 1:
        for g in order:
            got = per_group[g]
            if len(got) < len(runs):
                continue  # a group some model did not run has no average over models
            avg = {"model": "average", "by": by, "group": g, "n": int(sum(r["n"] for r, _ in got))}
            for col in COLUMNS[4:]:
                if col.endswith(("_lo", "_hi")) or col in _GAINS or col == "tau_reversed":
                    continue
                vals = [r[col] for r, _ in got]
                avg[col] = float(np.mean(vals)) if col != "unparsed" and col != "n_human" else int(np.sum(vals))
            for k in list(_GAINS) + ["tau_reversed"]:
                avg[k] = M.average_over_models([r[k] for r, _ in got], k, f"{by}={g}")
            for k in _GAINS:
                avg[f"{k}_lo"], avg[f"{k}_hi"] = M.bootstrap_gain([p[k] for _, p in got], n_boot, seed)
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


def groupings(runs: list[Ablation]) -> list[str]:
    return [g for g in GROUPINGS if all(g in ab.groups for ab in runs)]


def report(runs: list[Ablation], n_boot: int = 1000, seed: int = 0) -> tuple[str, str]:
    """(markdown, csv) of every grouping the runs share; what the CLI writes and
    the notebook rebuilds."""
    ab = runs[0]
    m = multi_count(ab)
    md = [f"## TOMATO ablations: {', '.join(r.model for r in runs)} on {ab.dataset}\n",
          f"A_1: the first frame (as TOMATO's code); A_1[H]: the human-picked frame; A_{m}: {m} frames sampled "
          f"uniformly (fewer where a video has fewer); A_shuf: the same frames shuffled, averaged over "
          f"{len(ab.shuffled_names)} seeds; A_rev: reversed. κ = (A_{m} − A_1)/A_1, τ = (A_{m} − A_shuf)/A_shuf, "
          f"ρ = (A_1[H] − A_1)/A_1, in percent, with bootstrap 95% intervals ({n_boot} resamples of the questions); "
          f"ρ over the questions that have a human frame. flips: how often an answer changes under shuffling.\n"]
    csvs = []
    for by in groupings(runs):
        rows = metric_rows(runs, by, n_boot, seed)
        md.append(f"\n### by {by.replace('_', ' ')}\n\n" + to_markdown(rows, m))
        csvs.append(to_csv(rows) if not csvs else to_csv(rows).split("\n", 1)[1])
    un = sum(int(r.unparsed.sum()) for r in runs if r.unparsed is not None)
    if any(r.unparsed is not None for r in runs):
        md.append(f"\nUnparsed generated answers (counted wrong): {un}.\n")
    return "".join(md), "".join(csvs)


def multi_count(ab: Ablation) -> int:
    """m as the questions got it: the median frame count of ``multi`` (the
    nominal --frames is capped by each video's own count)."""
    return int(np.median(ab.effective_frames("multi")))


# ============================================================== figures
def curve_figure(ab: Ablation):
    """Accuracy against frame count, one panel per task: the uniform curve with
    a 95% band, and shuffled / reversed at m and the other single frames at 1."""
    from .plots import COLORS, band, panels

    tasks = _group_order(ab.tasks) + ["all"]
    fig, axes = panels(len(tasks), height=2.5)
    curve = ab.curve()
    for ax, task in zip(axes, tasks):
        mask = np.ones(len(ab.ids), bool) if task == "all" else ab.tasks == task
        xs, cols = [], []
        for k, name in curve:
            x = float(np.median(ab.effective_frames(name)[mask]))
            if xs and x <= xs[-1]:
                continue  # a nominal count past the videos' length repeats the last point
            xs.append(x)
            cols.append(ab.correct_of(name)[mask] * 100)
        band(ax, xs, np.stack(cols, 1), "uniform", COLORS[0])
        m = xs[-1]
        marks = [("shuffled", ab.shuffled_correct(), m, COLORS[1], "o"),
                 ("reversed", ab.correct_of("reversed"), m, COLORS[2], "s"),
                 ("middle", ab.correct_of("single_middle"), 1, COLORS[3], "^"),
                 ("random", ab.correct_of("single_random"), 1, COLORS[4], "v"),
                 ("human", ab.correct_of("single_human"), 1, COLORS[5], "*")]
        for label, c, x, color, marker in marks:
            c = c[mask]
            if np.isnan(c).all():
                continue
            lo, hi = M.bootstrap_mean(c, 500)
            mu = M.accuracy(c)
            ax.errorbar([x], [mu], yerr=[[mu - lo], [hi - mu]], fmt=marker, color=color, ms=4, lw=0.8, label=label)
        chance = float(np.mean(100.0 / ab.n_options[mask]))
        ax.axhline(chance, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) if x == int(x) else f"{x:g}" for x in xs])
        ax.set_ylim(0, 102)
        ax.set_title(task)
        ax.set_xlabel("frames")
    axes[0].set_ylabel("accuracy (%)")
    _legend_right(fig, axes)
    fig.tight_layout()
    return fig


def _legend_right(fig, axes) -> None:
    """One legend for all panels, outside them on the right (no line hidden under it)."""
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)


def metrics_figure(rows: list[dict]):
    """kappa, tau and rho per group with their bootstrap 95% intervals."""
    from .plots import COLORS, panels

    fig, axes = panels(3, width=2.8, height=0.35 * len(rows) + 1.0)
    labels = [r["group"] if r["model"] in (rows[0]["model"],) else f"{r['model']}: {r['group']}" for r in rows]
    y = np.arange(len(rows))[::-1]
    for ax, (k, title), color in zip(axes, [("kappa", "κ multi-frame gain"), ("tau", "τ order sensitivity"),
                                            ("rho", "ρ information disparity")], COLORS):
        v = np.array([r[k] for r in rows], dtype=float)
        lo = np.array([r[f"{k}_lo"] for r in rows], dtype=float)
        hi = np.array([r[f"{k}_hi"] for r in rows], dtype=float)
        ok = ~np.isnan(v)
        err = np.stack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        # A dot and its interval (not a bar): a gain of 0 must be visible too.
        ax.errorbar(v[ok], y[ok], xerr=err[:, ok], fmt="o", color=color, ms=4, lw=1.0, capsize=2)
        for yy in y[~ok]:
            ax.text(0, yy, " undefined", va="center", fontsize=6, color="grey")
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(rows))
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(title)
        ax.set_xlabel("%")
    fig.tight_layout()
    return fig


def _palette(n: int) -> list:
    """n distinguishable colours: the house colours, or tab20 beyond them."""
    from .plots import COLORS

    if n <= len(COLORS):
        return COLORS[:n]
    import matplotlib

    return [matplotlib.colormaps["tab20"](i % 20) for i in range(n)]


def layers_figure(ab: Ablation):
    """Order sensitivity against layer: the last position's cosine distance from
    the ordered run (shuffled, averaged over seeds; reversed), per task with a 95%
    band, and 1 - linear CKA over all questions."""
    from .plots import band, panels

    if not ab.cos:
        raise ValueError(f"run of {ab.model!r} holds no residual-stream measurements (run without --no-internals)")
    shuf = [n for n in ab.cos if n.startswith("shuffled")]
    kinds = ([("shuffled", np.mean([ab.cos[n] for n in shuf], 0), shuf)] if shuf else []) + \
            ([("reversed", ab.cos["reversed"], ["reversed"])] if "reversed" in ab.cos else [])
    fig, axes = panels(len(kinds) + 1, width=2.8)
    x = np.array(ab.layers)
    tasks = _group_order(ab.tasks)
    pal = _palette(len(tasks))
    for ax, (label, cos, _) in zip(axes, kinds):
        for t, task in enumerate(tasks):
            band(ax, x, cos[ab.tasks == task], task, pal[t])
        ax.set_title(f"{label}: 1 − cos to ordered")
        ax.set_xlabel("layer")
    axes[0].set_ylabel("cosine distance (last position)")
    _legend_right(fig, axes[:1])
    ax = axes[-1]
    for j, (label, _, names) in enumerate(kinds):
        ax.plot(x, 1 - np.mean([ab.cka[n] for n in names], 0), color="k", ls=["-", "--"][j % 2],
                label=f"{label}, all questions", marker="o", ms=3)
    if shuf:  # within a task (>= 8 questions): order is then the only thing that differs between the runs
        per = 1 - np.mean([ab.cka_task[n] for n in shuf], 0)
        for t, task in enumerate(tasks):
            if not np.isnan(per[t]).all():
                ax.plot(x, per[t], color=pal[t], lw=0.9)
    ax.set_title("1 − linear CKA to ordered")
    ax.set_xlabel("layer")
    ax.legend(fontsize=6)
    for a in axes:
        a.set_xticks(x)
    fig.tight_layout()
    return fig


def write_figures(ab: Ablation, rows: list[dict], folder: str | Path) -> list[str]:
    """Save the three figures as <folder>/curve, metrics and layers (.png and .pdf)."""
    from .plots import save

    folder = Path(folder)
    paths = save(curve_figure(ab), folder / "curve") + save(metrics_figure(rows), folder / "metrics")
    if ab.cos:
        paths += save(layers_figure(ab), folder / "layers")
    return paths


# ============================================================== CLI
def build_parser():
    from .cli import common_parser

    ap = common_parser("python -m analyses.tomato",
                       "TOMATO's ablations (multi-frame gain kappa, frame order sensitivity tau, frame "
                       "information disparity rho) and the layers at which the model becomes sensitive to frame "
                       "order. --limit all reads every question; synthetic --tasks default to the temporal tasks and "
                       "the static control.", frames=16, limit=16)
    ap.add_argument("--shuffle-seeds", type=int, default=3, help="number of shuffled runs (one permutation per seed)")
    ap.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                    help="comma-separated frame counts of the accuracy-vs-frames curve (counts >= --frames are "
                         "the --frames run itself)")
    ap.add_argument("--singles", default=",".join(SINGLE_PICKS),
                    help="single-frame picks to run: first (TOMATO's, used by kappa), middle, random (seeded), "
                         "human (the annotation's human_frame; used by rho)")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    ap.add_argument("--chunk", type=int, default=16,
                    help="questions decoded and run together; each chunk is saved into --out as it completes, so a "
                         "killed run, started again with the same arguments, resumes after the last one saved "
                         "(batches form within a chunk, so it is part of the configuration)")
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


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _differences(path: Path, lm, dataset: str, config: dict, metas: list) -> list[str]:
    """What differs between the run ``path`` holds and this one (empty: the same
    run, to resume). A file that is not a chronolens file stops the CLI."""
    from tracing.store import CacheMismatchError, ResultsFile, StoreError

    try:
        ResultsFile.open(path, lm.name, lm.fingerprint, dataset, config, metas)  # an existing file: checked only
    except CacheMismatchError as e:
        return [ln.strip() for ln in str(e).splitlines()[1:] if ln.startswith("  ")]
    except StoreError as e:
        raise SystemExit(f"error: {e}") from None
    return []


def beside(out: Path) -> Path:
    """Where an --overwrite run writes until it completes (then it replaces ``out``)."""
    return out.with_name(f"{out.stem}.next{out.suffix}")


def _target(out: Path, lm, dataset: str, config: dict, metas: list, overwrite: bool) -> Path:
    """The file this run writes into, decided before any compute: ``out`` when it
    is new or holds this very run (resumed); with --overwrite and ``out`` holding
    another run, a file beside it that replaces it at the end (a kill leaves the
    old one); without --overwrite such an ``out`` is refused."""
    if not out.exists():
        return out
    diff = _differences(out, lm, dataset, config, metas)
    if not diff:
        return out
    if not overwrite:
        raise SystemExit(f"error: {out} holds a different run ({'; '.join(diff)}); choose another --out, or pass "
                         "--overwrite to replace it (the old file stays until the new run completes)")
    nxt = beside(out)
    if nxt.exists() and _differences(nxt, lm, dataset, config, metas):
        nxt.unlink()  # an earlier --overwrite run of another configuration, killed: start over
    return nxt


def main(argv=None) -> int:
    from tracing.registry import ModelNotFoundError
    from tracing.store import CacheMismatchError

    from .cli import default_out, figures_dir, load_data, load_from_args, run_config

    a = build_parser().parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from .cli import check_flags

    check_flags(a)
    try:  # a bad flag value, data folder or model name: one line, no traceback
        cfg = AblationConfig(frames=a.frames, shuffle_seeds=a.shuffle_seeds, counts=_ints(a.counts, "--counts"),
                             singles=tuple(x for x in a.singles.split(",") if x), seed=a.seed,
                             batch_size=a.batch_size, internals=not a.no_internals, generate=a.generate,
                             max_new_tokens=a.max_new_tokens, chunk=a.chunk)
        if a.dataset == "synthetic":
            if a.tasks is None:  # the grounding tasks are single-frame questions: nothing to ablate
                from tasks.synthetic import STATIC_TASKS, TEMPORAL_TASKS

                a.tasks = ",".join(TEMPORAL_TASKS + STATIC_TASKS)
            res = load_data(a, n_frames=a.render_frames, size=a.size)
        elif a.dataset == "tomato":
            res = load_data(a, decode=False)  # decoded here: only the frames the conditions need
        else:
            res = load_data(a)  # the loader's sampled frames stand in for the video
        lm = load_from_args(a)
    except (ValueError, FileNotFoundError, ModelNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(default_out("tomato", a))
    config = run_config(a, conditions=[asdict(c) for c in plan_conditions(cfg)])
    for k in ("no_figures", "bootstrap", "threads"):  # presentation only: a re-run may change them
        config.pop(k, None)
    work = _target(out, lm, a.dataset, config, sample_metas(res.samples), a.overwrite)
    if work.exists() and (got := run_progress(work)) is not None:
        print(f"resuming {work}: {got[0]} of {got[1]} questions already done", file=sys.stderr)
    problems: list = []
    try:
        ab, problems = run_ablation(lm, res.samples, cfg, a.dataset, config, progress=not a.no_progress,
                                    checkpoint=work)
    except NothingRan as e:
        problems = e.problems
        raise SystemExit(f"error: {e}") from None
    except CacheMismatchError as e:  # _target checked; only a file changed since then gets here
        raise SystemExit(f"error: {e}") from None
    finally:  # a run where no video decodes still says which and why
        for sid, path, why in problems:
            print(f"skipped {sid} ({path}): {why}", file=sys.stderr)
    for n in ab.notes:
        print(f"note: {n}", file=sys.stderr)
    md, table = report([ab], a.bootstrap, a.seed)
    finish_results(ab, work, report_md=md, n_boot=a.bootstrap, seed=a.seed)
    if work != out:
        os.replace(work, out)  # --overwrite: the old file goes only now, in one step
    stem = out.with_suffix("")
    Path(f"{stem}.md").write_text(md)
    Path(f"{stem}.csv").write_text(table)
    print(md)
    written = [str(out), f"{stem}.md", f"{stem}.csv"]
    if not a.no_figures:
        written += write_figures(ab, metric_rows([ab], "task", a.bootstrap, a.seed), figures_dir(a, out))
    if ab.unparsed is not None:
        print(f"unparsed generated answers (counted wrong): {int(ab.unparsed.sum())}")
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
