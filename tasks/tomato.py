"""Loader of a local copy of TOMATO (Shangguan et al. 2024, yale-nlp/TOMATO).

Layout (as published):
    <data_dir>/data/<reasoning type>.json      (or the JSON files directly in data_dir)
    <data_dir>/videos/<demonstration_type>/<key>.mp4

Each JSON file is a dict keyed by question id; an entry has question, options
(a list of strings), answer (int index into options), key, demonstration_type,
and metadata (motion_type, variation, note, video_source_url). Frames are
sampled as TOMATO does: 16 at np.linspace(0, n - 1, 16, dtype=int).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.datasets import AnnotationError, LoadResult, check_options
from tasks.types import Sample
from tasks.video import VideoError, load_frames, sampled_fps

REASONING_TYPES = ["count", "direction", "rotation", "shape&trend", "velocity&frequency", "visual_cues"]
DEMONSTRATION_TYPES = ("human", "object", "simulated")  # also the folders of videos/
# A human-picked most informative frame, if a copy of the data carries one (for the rho metric).
_HUMAN_FRAME_FIELDS = ("human_frame", "frame", "human_frame_index", "frame_index")


def _annotation_dir(data_dir: Path) -> Path:
    for d in (data_dir / "data", data_dir):
        if any((d / f"{t}.json").is_file() for t in REASONING_TYPES):
            return d
    raise FileNotFoundError(f"no TOMATO annotation files ({', '.join(t + '.json' for t in REASONING_TYPES)}) "
                            f"in {data_dir / 'data'} or {data_dir}")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(str(path), "*", f"is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise AnnotationError(str(path), "*", f"must be a JSON object keyed by question id, got {type(data).__name__}")
    return data


def _entry(rtype: str, item_id: str, e: Any, path: Path, root: Path) -> Sample:
    """One annotation entry -> Sample without frames (AnnotationError when malformed)."""
    p = str(path)
    if not isinstance(e, dict):
        raise AnnotationError(p, item_id, f"entry must be an object, got {type(e).__name__}")
    missing = [k for k in ("question", "options", "answer", "key", "demonstration_type") if k not in e]
    if missing:
        raise AnnotationError(p, item_id, f"missing field(s) {missing}")
    if not isinstance(e["question"], str):
        raise AnnotationError(p, item_id, f"'question' must be a string, got {e['question']!r}")
    options = check_options(e["options"], p, item_id)
    seen: dict[str, int] = {}
    for i, o in enumerate(options):
        k = " ".join(o.split()).lower()
        if k in seen:
            raise AnnotationError(p, item_id, f"'options' {seen[k]} and {i} are the same option ({o!r}): "
                                              f"an answer between them could not be told apart")
        seen[k] = i
    answer = e["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise AnnotationError(p, item_id, f"'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(options):
        raise AnnotationError(p, item_id, f"'answer' {answer} is out of range for {len(options)} options")
    for k in ("key", "demonstration_type"):
        if not isinstance(e[k], str) or not e[k]:
            raise AnnotationError(p, item_id, f"{k!r} must be a non-empty string, got {e[k]!r}")
    if e["demonstration_type"] not in DEMONSTRATION_TYPES:
        raise AnnotationError(p, item_id, f"'demonstration_type' {e['demonstration_type']!r} is not one of "
                                          f"{list(DEMONSTRATION_TYPES)} (it names the folder of the video)")
    key = e["key"]
    if key in (".", "..") or "/" in key or "\\" in key or "\0" in key:
        raise AnnotationError(p, item_id, f"'key' {key!r} must be a file name (no path separators, not . or ..): "
                                          f"the video is videos/<demonstration_type>/<key>.mp4 in the data folder")
    meta = {
        "benchmark": "tomato",
        "reasoning_type": rtype,
        "item_id": item_id,
        "key": e["key"],
        "demonstration_type": e["demonstration_type"],
        "motion_type": e.get("motion_type"),
        "variation": e.get("variation", {}),
        "note": e.get("note", ""),
        "video_source_url": e.get("video_source_url", ""),
        "annotation_file": p,
    }
    for k in _HUMAN_FRAME_FIELDS:
        if k in e:
            v = e[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise AnnotationError(p, item_id, f"{k!r} (human-picked frame) must be an index >= 0, got {v!r}")
            meta["human_frame"] = v
            break
    video = root / "videos" / e["demonstration_type"] / f"{e['key']}.mp4"
    return Sample(id=f"{rtype}-{item_id}", task=rtype, question=e["question"], options=options, answer=answer,
                  latents={"variation": meta["variation"]}, video_path=str(video), meta=meta)


def load_tomato(data_dir: str | Path, reasoning_types: list[str] | None = None, n_frames: int = 16,
                decode: bool = True, skip_bad: bool = True, size: int | None = None,
                limit: int | None = None) -> LoadResult:
    """Read TOMATO questions (and their frames) from a local copy.

    reasoning_types: file stems to read (default: all six, in REASONING_TYPES order; a
             missing one is a problem like any other: reported, or raised without skip_bad).
             Named twice: read once.
    decode:  True fills Sample.frames (uint8 [n_frames, H, W, 3], resized to size x size when
             size is given); False leaves frames None with video_path set, for lazy decoding.
    skip_bad: True records a malformed file / entry or an unreadable video in
             LoadResult.problems and goes on; False raises (AnnotationError / VideoError,
             each naming the file and the item). Malformed: a missing or mistyped
             field, an answer out of range, two options the same (ignoring case and
             spacing), a demonstration_type outside DEMONSTRATION_TYPES, or a key that
             is not a plain file name (a video path must stay under videos/).
    limit:   stop after this many samples.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"TOMATO folder {root} does not exist")
    ann = _annotation_dir(root)
    if reasoning_types is None:
        types = list(REASONING_TYPES)
    else:
        unknown = [t for t in reasoning_types if t not in REASONING_TYPES]
        if unknown:
            raise ValueError(f"unknown TOMATO reasoning type(s) {unknown}; valid: {REASONING_TYPES}")
        types = list(dict.fromkeys(reasoning_types))
    samples: list[Sample] = []
    problems: list[tuple[str, str, str]] = []
    for rtype in types:
        path = ann / f"{rtype}.json"
        try:
            if not path.is_file():
                raise AnnotationError(str(path), "*", "annotation file does not exist")
            data = _read_file(path)
        except AnnotationError as err:
            if not skip_bad:
                raise
            problems.append(("*", str(path), err.reason))
            continue
        for item_id, entry in data.items():
            if limit is not None and len(samples) >= limit:
                return LoadResult(samples, problems)
            try:
                s = _entry(rtype, str(item_id), entry, path, root)
                if decode:
                    info: dict = {}
                    s.frames = load_frames(s.video_path, n_frames, size=size, info=info)
                    s.meta["distinct_frames"] = info["distinct"]  # < n_frames: frames repeat
                    s.meta["sampled_fps"] = sampled_fps(s.video_path, len(s.frames))
            except AnnotationError as err:
                if not skip_bad:
                    raise
                problems.append((f"{rtype}-{item_id}", str(path), err.reason))
                continue
            except VideoError as err:
                if not skip_bad:
                    raise VideoError(err.path, f"{err.reason} (TOMATO item {rtype}-{item_id})") from err
                problems.append((f"{rtype}-{item_id}", err.path, err.reason))
                continue
            samples.append(s)
    return LoadResult(samples, problems)
