"""Frame conditions: which of a question's video frames a model is shown.

TOMATO's ablations (Shangguan et al. 2024) answer every question under a set
of conditions, each a list of frame indices into the question's video:

    multi          m frames sampled uniformly (np.linspace(0, n-1, m, dtype=int), as
                   TOMATO); m = the nominal count, or the video's own when it has fewer
    single_first   frame 0 (TOMATO's code: its single-frame run takes the first frame)
    single_middle  frame n // 2
    single_random  one frame drawn per question from a seed
    single_human   the frame a human picked as the most informative (``human_frame``);
                   questions without one do not run it
    shuffled_<s>   the m frames of ``multi`` in a random order (one per seed; never
                   the identity)
    reversed       the m frames of ``multi`` back to front
    frames_<k>     k frames sampled uniformly: the frame-count curve (k < m)

Random draws are keyed by the question's id, not its position, so a question
gets the same frames whatever else was selected around it. Knows nothing of
models: a model's resize is passed in as a function.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tasks.types import Sample
from tasks.video import VideoError, count_frames, duration, load_frames_at, sample_indices

SINGLE_PICKS = ("first", "middle", "random", "human")
DEFAULT_COUNTS = (1, 2, 4, 8, 16)


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


def plan_conditions(frames: int, shuffle_seeds: int = 3, counts=DEFAULT_COUNTS, singles=SINGLE_PICKS,
                    seed: int = 0) -> list[Condition]:
    """The conditions of a run with m = ``frames``, in the order they are
    evaluated (``multi`` first: shuffled and reversed are permutations of its
    frames). Counts >= m collapse onto ``multi``."""
    m = frames
    out = [Condition("multi", "multi", m)]
    out += [Condition(f"single_{p}", "single", 1, pick=p, seed=seed) for p in singles]
    out += [Condition(f"shuffled_{s}", "shuffled", m, seed=seed + s) for s in range(shuffle_seeds)]
    out.append(Condition("reversed", "reversed", m))
    out += [Condition(f"frames_{k}", "count", k) for k in sorted(set(counts)) if k < m]
    return out


def curve_of(conditions: list[Condition]) -> list[tuple[int, str]]:
    """(nominal frame count, condition name) of the frame-count curve, ascending."""
    pts = [(c.count, c.name) for c in conditions if c.kind == "count"]
    pts += [(c.count, c.name) for c in conditions if c.kind == "multi"]
    return sorted(pts)


def _rng(tag: int, seed: int, sample_id: str) -> np.random.Generator:
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


@dataclass
class QuestionFrames:
    """One question's frames under every condition: its video length, each
    condition's frame indices (None: not applicable) and the frames those
    indices need (nothing more is kept)."""

    sample: Sample
    n_total: int
    human: int
    indices: dict[str, np.ndarray | None]
    store: dict[int, np.ndarray]
    seconds: float | None = None  # of the whole video, when known

    def frames(self, name: str) -> np.ndarray:
        """uint8 [k, H, W, 3]: the frames a condition shows, in its order."""
        return np.stack([self.store[int(i)] for i in self.indices[name]])

    def sampled_fps(self, name: str) -> float | None:
        """Frames kept per second of video under a condition (Qwen2.5-VL's time positions)."""
        return len(self.indices[name]) / self.seconds if self.seconds else None


def question_frames(sample: Sample, conditions: list[Condition],
                    resize: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[QuestionFrames, list[str]]:
    """A question's frames for every condition -> (QuestionFrames, notes).

    Frames in memory (synthetic, or a loader that decoded them) are the video;
    otherwise ``sample.video_path`` is decoded once, keeping only the frames some
    condition needs, passed through ``resize`` (uint8 [k, H, W, 3] -> [k, h, w, 3],
    e.g. the model's own resize, so that a 1080p video costs no more memory than
    the model's input). VideoError names the file when it is missing or unreadable."""
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
        if resize is not None:
            arr = resize(arr)
        store = {i: arr[j] for j, i in enumerate(need)}
    return QuestionFrames(sample, n_total, h, idx, store, seconds), notes
