"""Frame conditions: which of a question's video frames a model is shown.

TOMATO's ablations (Shangguan et al. 2024) answer every question under a set
of conditions, each a list of frame indices into the question's video:

    multi          m frames sampled uniformly (np.linspace(0, n-1, m, dtype=int), as
                   TOMATO); a video with fewer than m frames repeats frames, as TOMATO's
                   sampling does (``repeat=False``: the video's own n frames instead)
    single_first   frame 0 (TOMATO's code: its single-frame run takes the first frame)
    single_middle  frame n // 2
    single_random  one frame drawn per question from a seed
    single_human   the frame a human picked as the most informative (``human_frame``);
                   questions without one do not run it
    shuffled_<s>   the m frames of ``multi`` in a random order (one per seed; never
                   the identity)
    reversed       the m frames of ``multi`` back to front
    frames_<k>     k frames sampled uniformly: the frame-count curve (k < m; repeats
                   as multi does on a video of fewer than k frames)

Random draws are keyed by the question's id, not its position, so a question
gets the same frames whatever else was selected around it. Knows nothing of
models: a model's resize is passed in as a function. A video is read whole
once to count its frames, with the decode check every reader makes
(``tasks.video.check_decoded``): a truncated file is a VideoError, never a
shorter video.

Human-picked frames (rho) come from a benchmark's annotation (``human_frame``)
or from a JSON file mapping question id to frame index (``read_human_frames``,
``set_human_frames``): TOMATO's public annotations carry none.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
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


def frame_indices(cond: Condition, n_total: int, human: int = -1, sample_id: str = "",
                  repeat: bool = True) -> np.ndarray | None:
    """The frame indices (int [k], into the question's n_total frames) a condition
    shows, or None where it does not apply (no human frame, or one past the end).
    repeat: a video of fewer frames than a condition's count repeats frames
    (TOMATO's np.linspace(0, n-1, m, dtype=int)); False gives it its own n_total."""
    if n_total < 1:
        raise ValueError(f"question {sample_id!r}: a video needs at least one frame")
    if cond.kind in ("multi", "count", "shuffled", "reversed"):
        u = sample_indices(n_total, cond.count if repeat else min(cond.count, n_total))
        if cond.kind == "reversed":
            return u[::-1].copy()
        if cond.kind == "shuffled" and len(set(u.tolist())) > 1:
            rng = _rng(2, cond.seed, sample_id)
            perm = rng.permutation(len(u))
            while (u[perm] == u).all():  # the same frame list would measure nothing
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
                    resize: Callable[[np.ndarray], np.ndarray] | None = None,
                    repeat: bool = True) -> tuple[QuestionFrames, list[str]]:
    """A question's frames for every condition -> (QuestionFrames, notes).

    Frames in memory (synthetic, or a loader that decoded them) are the video;
    otherwise ``sample.video_path`` is decoded once, keeping only the frames some
    condition needs, passed through ``resize`` (uint8 [k, H, W, 3] -> [k, h, w, 3],
    e.g. the model's own resize, so that a 1080p video costs no more memory than
    the model's input). repeat: as ``frame_indices``. VideoError names the file
    when it is missing, unreadable, or truncated (fewer frames decode than the
    container declares: ``tasks.video.check_decoded``, as every loader)."""
    notes = []
    h = human_frame(sample)
    seconds = None
    if sample.frames is not None:
        n_total = int(sample.frames.shape[0])
        if sample.meta.get("sampled_fps"):
            seconds = n_total / sample.meta["sampled_fps"]
    elif sample.video_path:
        n_total = count_frames(sample.video_path, complete=True)
        seconds = duration(sample.video_path)
    else:
        raise VideoError("<none>", f"question {sample.id!r} has neither frames nor a video path")
    if h >= n_total:
        notes.append(f"{sample.id}: human frame {h} is past the video's {n_total} frames; left out of rho")
    idx = {c.name: frame_indices(c, n_total, h, sample.id, repeat) for c in conditions}
    need = sorted({int(i) for v in idx.values() if v is not None for i in v})
    if sample.frames is not None:
        store = {i: sample.frames[i] for i in need}
    else:
        arr = load_frames_at(sample.video_path, need)
        if resize is not None:
            arr = resize(arr)
        store = {i: arr[j] for j, i in enumerate(need)}
    return QuestionFrames(sample, n_total, h, idx, store, seconds), notes


def read_human_frames(path: str | os.PathLike) -> dict[str, int]:
    """A JSON object mapping question id (as chronolens names it: ``<reasoning
    type>-<TOMATO id>``, e.g. "count-7") to the human-picked frame, an index
    into the video's decoded frames from 0 -> {id: index}. ValueError naming the
    file and the entry when it is anything else."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"human frames file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"human frames file {p} cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"human frames file {p} must be a JSON object {{question id: frame index}}, "
                         f"got {type(data).__name__}")
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"human frames file {p}: {k!r} must map to a frame index >= 0, got {v!r}")
    return dict(data)


def set_human_frames(samples: list[Sample], frames: dict[str, int]) -> tuple[int, list[str]]:
    """Give each question whose id ``frames`` names that human frame
    (``meta['human_frame']``, over any the annotation had) -> (questions given
    one, ids of ``frames`` that name no question here: with --limit, or a typo)."""
    ids = {s.id for s in samples}
    n = 0
    for s in samples:
        if s.id in frames:
            s.meta["human_frame"] = int(frames[s.id])
            n += 1
    return n, [k for k in frames if k not in ids]
