"""Loader of a local copy of TVBench (Cores et al. 2024, FunAILab/TVBench on the Hugging Face hub).

Layout (the MVBench format TVBench follows):
    <data_dir>/json/<task>.json        a list of {"video", "question", "candidates", "answer"
                                        (one of candidates), optional "start"/"end" seconds}
    <data_dir>/video/<task>/<video>

Frames are sampled uniformly with `tasks.video.sample_indices` (inside
[start, end] when the entry has them). The reference code samples segment
midpoints instead; uniform sampling keeps all loaders alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.datasets import AnnotationError, LoadResult, check_options
from tasks.types import Sample
from tasks.video import VideoError, load_frames, sampled_fps

TVBENCH_TASKS = ["action_antonym", "action_count", "action_localization", "action_sequence",
                 "egocentric_sequence", "moving_direction", "object_count", "object_shuffle",
                 "scene_transition", "unexpected_action"]


def _entry(task: str, i: int, e: Any, path: Path, root: Path) -> Sample:
    p, item_id = str(path), f"{task}-{i}"
    if not isinstance(e, dict):
        raise AnnotationError(p, item_id, f"entry must be an object, got {type(e).__name__}")
    missing = [k for k in ("video", "question", "candidates", "answer") if k not in e]
    if missing:
        raise AnnotationError(p, item_id, f"missing field(s) {missing}")
    for k in ("video", "question", "answer"):
        if not isinstance(e[k], str):
            raise AnnotationError(p, item_id, f"{k!r} must be a string, got {e[k]!r}")
    options = check_options(e["candidates"], p, item_id, "candidates")
    if e["answer"] not in options:
        raise AnnotationError(p, item_id, f"answer {e['answer']!r} is not one of the candidates {options}")
    bound = None
    if "start" in e or "end" in e:
        try:
            bound = (float(e["start"]), float(e["end"]))
        except (KeyError, TypeError, ValueError) as err:
            raise AnnotationError(p, item_id, f"'start'/'end' must both be numbers of seconds "
                                              f"({e.get('start')!r}, {e.get('end')!r})") from err
        if bound[1] < bound[0]:
            raise AnnotationError(p, item_id, f"'end' {bound[1]} is before 'start' {bound[0]}")
    meta = {"benchmark": "tvbench", "task": task, "index": i, "video": e["video"], "bound": bound,
            "annotation_file": p}
    return Sample(id=item_id, task=task, question=e["question"], options=options, answer=options.index(e["answer"]),
                  video_path=str(root / "video" / task / e["video"]), meta=meta)


def load_tvbench(data_dir: str | Path, tasks: list[str] | None = None, n_frames: int = 8, decode: bool = True,
                 skip_bad: bool = True, size: int | None = None, limit: int | None = None) -> LoadResult:
    """Read TVBench questions (and their frames) from a local copy.

    tasks:   json file stems to read (default: every <data_dir>/json/*.json, sorted).
    decode:  True fills Sample.frames (uint8 [n_frames, H, W, 3], resized to size x size when
             size is given); False leaves frames None with video_path set.
    skip_bad: True records a malformed file / entry or an unreadable video in
             LoadResult.problems; False raises (AnnotationError / VideoError naming file and item).
    limit:   stop after this many samples.
    Sample ids are "<task>-<position in the file>"; the answer is candidates.index(answer).
    """
    root = Path(data_dir)
    jdir = root / "json"
    if not jdir.is_dir():
        raise FileNotFoundError(f"no TVBench annotation folder {jdir} (expected <data_dir>/json/<task>.json)")
    names = sorted(p.stem for p in jdir.glob("*.json")) if tasks is None else list(tasks)
    samples: list[Sample] = []
    problems: list[tuple[str, str, str]] = []
    for task in names:
        path = jdir / f"{task}.json"
        try:
            if not path.is_file():
                raise AnnotationError(str(path), "*", f"annotation file of task {task!r} does not exist")
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except json.JSONDecodeError as e:
                raise AnnotationError(str(path), "*", f"is not valid JSON ({e})") from e
            if not isinstance(data, list):
                raise AnnotationError(str(path), "*", f"must be a JSON list of questions, got {type(data).__name__}")
        except AnnotationError as err:
            if not skip_bad:
                raise
            problems.append(("*", str(path), err.reason))
            continue
        for i, entry in enumerate(data):
            if limit is not None and len(samples) >= limit:
                return LoadResult(samples, problems)
            try:
                s = _entry(task, i, entry, path, root)
                if decode:
                    info: dict = {}
                    s.frames = load_frames(s.video_path, n_frames, size=size, bound=s.meta["bound"], info=info)
                    s.meta["distinct_frames"] = info["distinct"]  # < n_frames: frames repeat
                    s.meta["sampled_fps"] = sampled_fps(s.video_path, len(s.frames), s.meta["bound"])
            except AnnotationError as err:
                if not skip_bad:
                    raise
                problems.append((f"{task}-{i}", str(path), err.reason))
                continue
            except VideoError as err:
                if not skip_bad:
                    raise VideoError(err.path, f"{err.reason} (TVBench item {task}-{i})") from err
                problems.append((f"{task}-{i}", err.path, err.reason))
                continue
            samples.append(s)
    return LoadResult(samples, problems)
