"""TOMATO and TVBench loaders on folders built here, and on the real TOMATO annotations when present."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks.datasets import DATASETS, AnnotationError, load_dataset
from tasks.synthetic import TASKS, render
from tasks.tomato import REASONING_TYPES, load_tomato
from tasks.tvbench import load_tvbench
from tasks.video import VideoError, write_video

REAL_TOMATO = Path("/work/shared/data/tomato")


def levels(n: int, size: int = 16) -> np.ndarray:
    """Frame t is a flat grey of level 10 + 12 t: decoded frames name their own index."""
    return np.stack([np.full((size, size, 3), 10 + 12 * t, dtype=np.uint8) for t in range(n)])


def ids_of(frames: np.ndarray) -> list[int]:
    return [int(round((f.astype(float).mean() - 10) / 12)) for f in frames]


def entry(key, demo="human", answer=1, **extra):
    e = {"question": "Which way?", "options": ["Left.", "Right.", "Up."], "answer": answer, "key": key,
         "video_source_url": "", "motion_type": "direction",
         "variation": {"counterfactual": 0, "composite": 1, "zoom": 0, "first_person": 0},
         "demonstration_type": demo, "note": "n"}
    e.update(extra)
    return e


def build_tomato(root: Path, in_data: bool = True) -> Path:
    ann = root / "data" if in_data else root
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "direction.json").write_text(json.dumps({
        "0": entry("k0"),
        "1": entry("k1", demo="object", answer=2, human_frame=3),
        "2": entry("gone"),  # its video is missing
        "3": entry("bad"),  # its video is corrupt
    }))
    (ann / "count.json").write_text(json.dumps({"7": entry("c7", demo="simulated", answer=0)}))
    write_video(root / "videos/human/k0.mp4", levels(10))
    write_video(root / "videos/object/k1.mp4", levels(20))
    write_video(root / "videos/simulated/c7.mp4", render("count", 1, size=16).frames)
    (root / "videos/human/bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 20)
    return root


@pytest.mark.skipif(not REAL_TOMATO.is_dir(), reason="real TOMATO annotations not present")
def test_real_tomato_annotations_load():
    res = load_tomato(REAL_TOMATO, decode=False)
    assert res.problems == []
    assert len(res.samples) == 1484
    assert Counter(s.task for s in res.samples) == {"count": 292, "direction": 403, "rotation": 286,
                                                      "shape&trend": 223, "velocity&frequency": 210,
                                                      "visual_cues": 70}
    raw = json.loads((REAL_TOMATO / "count.json").read_text())
    first = res.samples[0]
    k = next(iter(raw))
    assert first.task == "count" and first.id == f"count-{k}"
    assert first.question == raw[k]["question"] and first.options == raw[k]["options"]
    assert first.answer == raw[k]["answer"] and first.frames is None
    assert first.video_path == str(REAL_TOMATO / "videos" / raw[k]["demonstration_type"] / f"{raw[k]['key']}.mp4")
    assert first.meta["variation"] == raw[k]["variation"] and first.meta["note"] == raw[k]["note"]
    assert all(0 <= s.answer < len(s.options) and 3 <= len(s.options) <= 7 for s in res.samples)
    assert len({s.id for s in res.samples}) == 1484
    assert len(load_tomato(REAL_TOMATO, ["visual_cues"], decode=False).samples) == 70


@pytest.mark.parametrize("in_data", [True, False])
def test_built_tomato_loads_frames_and_reports_bad_videos(tmp_path, in_data):
    root = build_tomato(tmp_path, in_data)
    res = load_tomato(root, n_frames=4)
    assert [s.id for s in res.samples] == ["count-7", "direction-0", "direction-1"]  # REASONING_TYPES order
    by_id = {s.id: s for s in res.samples}
    d0, d1 = by_id["direction-0"], by_id["direction-1"]
    assert d0.frames.shape == (4, 16, 16, 3) and d0.frames.dtype == np.uint8
    assert ids_of(d0.frames) == [0, 3, 6, 9]  # linspace(0, 9, 4)
    assert ids_of(d1.frames) == [0, 6, 12, 19]  # linspace(0, 19, 4) = 0, 6.33, 12.67, 19
    assert d1.answer == 2 and d1.options[d1.answer] == "Up." and d1.task == "direction"
    assert d1.meta["human_frame"] == 3 and "human_frame" not in d0.meta
    assert d1.meta["demonstration_type"] == "object" and d1.meta["key"] == "k1"
    assert d1.meta["variation"]["composite"] == 1 and d1.meta["motion_type"] == "direction"
    problems = {pid: (path, reason) for pid, path, reason in res.problems if pid != "*"}
    assert set(problems) == {"direction-2", "direction-3"}
    # The four reasoning types this copy lacks are reported, not dropped silently.
    missing = [(Path(path).name, why) for pid, path, why in res.problems if pid == "*"]
    assert missing == [(f"{t}.json", "annotation file does not exist")
                       for t in ("rotation", "shape&trend", "velocity&frequency", "visual_cues")]
    assert problems["direction-2"][0].endswith("videos/human/gone.mp4") and "does not exist" in problems["direction-2"][1]
    assert problems["direction-3"][0].endswith("videos/human/bad.mp4")
    with pytest.raises(VideoError, match="gone.mp4.*direction-2"):
        load_tomato(root, ["direction"], n_frames=4, skip_bad=False)
    lazy = load_tomato(root, decode=False)
    assert len(lazy.samples) == 5 and all(s.frames is None for s in lazy.samples)
    assert [pid for pid, _, _ in lazy.problems] == ["*"] * 4  # only the absent files
    assert load_tomato(root, ["direction", "count"], decode=False).problems == []  # named: only those read
    assert load_tomato(root, n_frames=2, size=8).samples[0].frames.shape == (2, 8, 8, 3)


def test_tomato_malformed_entries_and_files(tmp_path):
    ann = tmp_path / "data"
    ann.mkdir()
    (ann / "rotation.json").write_text(json.dumps({
        "0": entry("k0", decode_me=1),
        "1": {k: v for k, v in entry("k1").items() if k != "options"},
        "2": entry("k2", answer=5),
        "3": entry("k3", answer="1"),
    }))
    (ann / "count.json").write_text("{ not json")
    res = load_tomato(tmp_path, decode=False)
    assert [s.id for s in res.samples] == ["rotation-0"]
    reasons = {pid if pid != "*" else Path(path).name: r for pid, path, r in res.problems}
    assert "options" in reasons["rotation-1"] and "out of range" in reasons["rotation-2"]
    assert "integer" in reasons["rotation-3"] and "JSON" in reasons["count.json"]
    assert reasons["direction.json"] == "annotation file does not exist"
    with pytest.raises(AnnotationError, match=r"rotation.json \[item '1'\].*options"):
        load_tomato(tmp_path, ["rotation"], decode=False, skip_bad=False)
    with pytest.raises(AnnotationError, match="count.json.*JSON"):
        load_tomato(tmp_path, ["count"], decode=False, skip_bad=False)
    with pytest.raises(ValueError, match="spin"):
        load_tomato(tmp_path, ["spin"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="annotation"):
        load_tomato(empty, decode=False)
    assert set(REASONING_TYPES) == {"count", "direction", "rotation", "shape&trend", "velocity&frequency",
                                    "visual_cues"}


def build_tvbench(root: Path) -> Path:
    (root / "json").mkdir(parents=True)
    items = [
        {"video": "a.mp4", "question": "Where does it go?", "candidates": ["up", "down", "left"], "answer": "left"},
        {"video": "b.mp4", "question": "What happens first?", "candidates": ["x", "y"], "answer": "y",
         "start": 0.5, "end": 1.0},
        {"video": "a.mp4", "question": "Bad?", "candidates": ["p", "q"], "answer": "r"},
        {"video": "missing.mp4", "question": "Where?", "candidates": ["p", "q"], "answer": "q"},
    ]
    (root / "json/moving_direction.json").write_text(json.dumps(items))
    (root / "json/object_count.json").write_text(json.dumps([{"video": "c.mp4", "question": "How many?",
                                                              "candidates": ["1", "2", "3", "4"], "answer": "3"}]))
    write_video(root / "video/moving_direction/a.mp4", levels(10))
    write_video(root / "video/moving_direction/b.mp4", levels(16), fps=8)
    write_video(root / "video/object_count/c.mp4", levels(5))
    return root


def test_built_tvbench(tmp_path):
    root = build_tvbench(tmp_path)
    res = load_tvbench(root, n_frames=3)
    assert [s.id for s in res.samples] == ["moving_direction-0", "moving_direction-1", "object_count-0"]
    a, b, c = res.samples
    assert a.answer == 2 and a.options == ["up", "down", "left"] and a.task == "moving_direction"
    assert ids_of(a.frames) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9
    # start 0.5 s, end 1.0 s at 8 fps -> frames 4..8 -> 4 + linspace(0, 4, 3) = 4, 6, 8
    assert b.answer == 1 and ids_of(b.frames) == [4, 6, 8] and b.meta["bound"] == (0.5, 1.0)
    assert ids_of(c.frames) == [0, 2, 4] and c.options[c.answer] == "3"
    problems = {pid: (path, reason) for pid, path, reason in res.problems}
    assert set(problems) == {"moving_direction-2", "moving_direction-3"}
    assert "'r'" in problems["moving_direction-2"][1] and problems["moving_direction-2"][0].endswith("moving_direction.json")
    assert problems["moving_direction-3"][0].endswith("video/moving_direction/missing.mp4")
    with pytest.raises(AnnotationError, match=r"moving_direction.json \[item 'moving_direction-2'\]"):
        load_tvbench(root, ["moving_direction"], decode=False, skip_bad=False)
    lazy = load_tvbench(root, ["object_count"], decode=False)
    assert lazy.samples[0].frames is None and lazy.samples[0].video_path.endswith("video/object_count/c.mp4")
    assert len(load_tvbench(root, decode=False, limit=2).samples) == 2
    with pytest.raises(FileNotFoundError, match="json"):
        load_tvbench(tmp_path / "video")


def test_load_dataset_dispatch(tmp_path):
    syn = load_dataset("synthetic", tasks=["direction", "count"], limit=4, seed=1)
    assert [s.task for s in syn.samples] == ["direction"] * 4 + ["count"] * 4
    assert syn.samples[0].frames.shape == (8, 32, 32, 3)
    assert load_dataset("synthetic", tasks=["ground_size"], limit=2, size=48).samples[0].frames.shape == (8, 48, 48, 3)
    one = load_dataset("synthetic", tasks=["ground_size"], limit=2, n_frames=None)  # the task's own default: 1
    assert one.samples[0].frames.shape == (1, 32, 32, 3)
    assert len(load_dataset("synthetic", limit=1).samples) == len(TASKS)
    tom = load_dataset("tomato", data_dir=str(build_tomato(tmp_path / "tom")), n_frames=4, tasks=["direction"])
    assert [s.id for s in tom.samples] == ["direction-0", "direction-1"] and len(tom.problems) == 2
    tvb = load_dataset("tvbench", data_dir=str(build_tvbench(tmp_path / "tvb")), n_frames=2, limit=1)
    assert len(tvb.samples) == 1 and tvb.samples[0].frames.shape[0] == 2
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("tomato")
    with pytest.raises(ValueError, match="synthetic.*tomato.*tvbench"):
        load_dataset("mvbench")
    assert DATASETS == ("synthetic", "tomato", "tvbench")


def test_short_videos_are_counted_once_per_run(tmp_path, capsys):
    """Videos with fewer frames than --frames repeat frames (linspace, as TOMATO);
    the shared loader of flow, capture, lens and rhythm says so in one line."""
    from argparse import Namespace

    from analyses.cli import load_data

    root = build_tvbench(tmp_path)
    res = load_data(Namespace(dataset="tvbench", data_dir=str(root), frames=8, limit=None, tasks=None, seed=0))
    a, b, c = res.samples  # 10 frames; frames 4..8 of the clip (5); 5 frames
    assert [s.meta["distinct_frames"] for s in res.samples] == [8, 5, 5]
    assert ids_of(c.frames) == list(np.linspace(0, 4, 8, dtype=int))
    err = capsys.readouterr().err
    assert err.count("note:") == 1
    assert "note: 2 of 3 videos have fewer than --frames 8 frames (the fewest 5)" in err
    load_data(Namespace(dataset="tvbench", data_dir=str(root), frames=4, limit=None, tasks=None, seed=0))
    assert "note:" not in capsys.readouterr().err
