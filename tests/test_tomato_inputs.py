"""What analyses.tomato is given: TOMATO's annotations checked by the loader
(tasks/tomato.py), videos shorter than m (frames repeat, as TOMATO's
sampling), truncated videos (skipped with the check every reader makes),
human-picked frames from a file (--human-frames, for rho), and a report that
says what was left out and why (markdown and CSV).

Independent references: frame indices written out by hand (the values of
np.linspace(0, n-1, m, dtype=int)), frames decoded whole by PyAV and indexed
here, scores recomputed with tracing.scoring.score, frame counts of a cut file
counted with PyAV directly.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from analyses import tomato as T
from analyses import tomato_metrics as M
from analyses.run import cli_boundary
from tasks import frames as F
from tasks.datasets import AnnotationError
from tasks.tomato import load_tomato
from tasks.types import Sample
from tasks.video import VideoError, write_video
from test_tomato import TINY, entry, ids_of, levels, tiny
from tracing.inputs import build_inputs
from tracing.scoring import score
from tracing.store import CacheReader

# np.linspace(0, 11, 16) = 0, .73, 1.47, 2.2, 2.93, 3.67, 4.4, 5.13, 5.87, 6.6, 7.33, 8.07, 8.8, 9.53, 10.27, 11
TWELVE_TO_SIXTEEN = [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11]


def pyav_count(path: Path) -> int:
    """Frames PyAV decodes before the file ends or breaks (no chronolens code)."""
    n = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(c.streams.video[0]):
                n += 1
    except (av.FFmpegError, EOFError):
        pass
    return n


def truncated_video(path: Path, declared: int = 32, decodes: int = 13) -> int:
    """An mp4 whose index (written first: faststart) declares ``declared`` frames,
    cut short so that about ``decodes`` of them decode -> the frames that do."""
    full = path.with_name("full_" + path.name)
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        st = c.add_stream("mpeg4", rate=8)
        st.width = st.height = 16
        st.pix_fmt = "yuv420p"
        for t in range(declared):
            for pk in st.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 10 + 7 * t, np.uint8),
                                                           format="rgb24")):
                c.mux(pk)
        for pk in st.encode():
            c.mux(pk)
    data = full.read_bytes()
    full.unlink()
    lo, hi = len(data) // 2, len(data)  # the shortest cut that still decodes `decodes` frames
    while lo < hi:
        mid = (lo + hi) // 2
        path.write_bytes(data[:mid])
        lo, hi = (mid + 1, hi) if pyav_count(path) < decodes else (lo, mid)
    path.write_bytes(data[:lo])
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == declared
    return pyav_count(path)


# ================================================================ the loader's checks
def write_ann(root: Path, name: str, entries: dict) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    p = root / "data" / f"{name}.json"
    p.write_text(json.dumps(entries))
    return p


def test_a_demonstration_type_outside_the_three_or_a_key_with_a_path_is_refused(tmp_path):
    write_ann(tmp_path, "direction", {"0": entry("k0", demo="../../etc"), "1": entry("k1", demo="animal"),
                                      "2": entry("../../../etc/passwd"), "3": entry("k3", demo="object")})
    res = load_tomato(tmp_path, ["direction"], decode=False)
    assert [s.id for s in res.samples] == ["direction-3"]
    why = {item: (path, reason) for item, path, reason in res.problems}
    assert set(why) == {"direction-0", "direction-1", "direction-2"}
    assert why["direction-0"][0].endswith("direction.json")
    assert "'demonstration_type' '../../etc' is not one of ['human', 'object', 'simulated']" in why["direction-0"][1]
    assert "'animal' is not one of" in why["direction-1"][1]
    assert "'key' '../../../etc/passwd' must be a file name" in why["direction-2"][1]
    assert Path(res.samples[0].video_path) == tmp_path / "videos" / "object" / "k3.mp4"
    with pytest.raises(AnnotationError, match=r"direction.json \[item '0'\]: 'demonstration_type' '../../etc'"):
        load_tomato(tmp_path, ["direction"], decode=False, skip_bad=False)


def test_duplicate_options_are_refused(tmp_path):
    write_ann(tmp_path, "count", {"5": entry("k5", options=["three", "four", "Three "]),
                                  "6": entry("k6", options=["one", "two", "three"])})
    res = load_tomato(tmp_path, ["count", "count"], decode=False)  # a type named twice is read once
    assert [s.id for s in res.samples] == ["count-6"]
    assert len(res.problems) == 1 and res.problems[0][0] == "count-5"
    assert "'options' 0 and 2 are the same option ('Three ')" in res.problems[0][2]
    with pytest.raises(AnnotationError, match=r"count.json \[item '5'\]: 'options' 0 and 2 are the same"):
        load_tomato(tmp_path, ["count"], decode=False, skip_bad=False)


def test_a_missing_annotation_file_is_reported_when_no_type_is_named(tmp_path):
    write_ann(tmp_path, "rotation", {"0": entry("k0")})
    res = load_tomato(tmp_path, decode=False)
    assert [s.id for s in res.samples] == ["rotation-0"]
    assert [(item, Path(path).name, why) for item, path, why in res.problems] == [
        ("*", f"{t}.json", "annotation file does not exist")
        for t in ("count", "direction", "shape&trend", "velocity&frequency", "visual_cues")]
    assert all(Path(path).parent == tmp_path / "data" for _, path, _ in res.problems)
    with pytest.raises(AnnotationError, match=r"data/count.json: annotation file does not exist"):
        load_tomato(tmp_path, decode=False, skip_bad=False)
    assert load_tomato(tmp_path, ["rotation"], decode=False).problems == []


# ================================================================ short and truncated videos, human frames
def test_a_video_shorter_than_m_repeats_frames_as_tomato(tmp_path):
    path = write_video(tmp_path / "twelve.mp4", levels(12))
    s = Sample(id="direction-0", task="direction", question="q", options=["a", "b"], answer=0, video_path=str(path))
    conds = T.AblationConfig(frames=16, shuffle_seeds=1, counts=(1, 4)).conditions()
    q, _ = F.question_frames(s, conds)
    assert q.n_total == 12
    assert q.indices["multi"].tolist() == TWELVE_TO_SIXTEEN
    assert ids_of(q.frames("multi")) == TWELVE_TO_SIXTEEN  # the decoded frames are those frames
    assert q.indices["reversed"].tolist() == TWELVE_TO_SIXTEEN[::-1]
    shuffled = q.indices["shuffled_0"].tolist()
    assert sorted(shuffled) == TWELVE_TO_SIXTEEN and shuffled != TWELVE_TO_SIXTEEN
    own, _ = F.question_frames(s, conds, repeat=False)  # --short-videos own
    assert own.indices["multi"].tolist() == list(range(12))
    # One frame, 16 asked: the same frame 16 times; a shuffle of it is the same list (and does not loop).
    one = F.frame_indices(F.Condition("s", "shuffled", 16, seed=0), 1, -1, "x")
    assert one.tolist() == [0] * 16


def test_a_truncated_video_is_a_video_error_in_the_tomato_path(tmp_path):
    cut = tmp_path / "cut.mp4"
    n = truncated_video(cut)
    assert 0 < n < 32
    s = Sample(id="direction-1", task="direction", question="q", options=["a", "b"], answer=0, video_path=str(cut))
    with pytest.raises(VideoError, match=rf"cut.mp4: is truncated or corrupt: the container declares 32 frames but "
                                         rf"only {n} decode"):
        F.question_frames(s, T.AblationConfig(frames=16).conditions())


def test_human_frames_file(tmp_path):
    p = tmp_path / "human.json"
    p.write_text(json.dumps({"count-7": 12, "direction-0": 0, "rotation-9": 3}))
    frames = F.read_human_frames(p)
    samples = [Sample(id=i, task="t", question="q", options=["a", "b"], answer=0, meta={"human_frame": 4})
               for i in ("count-7", "direction-0", "direction-1")]
    assert F.set_human_frames(samples, frames) == (2, ["rotation-9"])
    assert [F.human_frame(s) for s in samples] == [12, 0, 4]  # the file over the annotation; others kept
    for text, says in [("[1, 2]", "must be a JSON object"), ('{"count-7": -1}', "'count-7' must map to a frame index"),
                       ('{"count-7": 1.5}', "got 1.5"), ('{"count-7": true}', "got True"), ("{oops", "as JSON")]:
        p.write_text(text)
        with pytest.raises(ValueError, match=says) as e:
            F.read_human_frames(p)
        assert str(p) in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        F.read_human_frames(tmp_path / "none.json")


# ================================================================ through analyses.tomato
@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A TOMATO folder with a 12-frame video (m = 16), a truncated one, a good
    one, an entry with duplicate options and five absent annotation files, run
    with human frames from a file."""
    d = tmp_path_factory.mktemp("odd")
    root = d / "TOMATO"
    write_ann(root, "direction", {"0": entry("short"), "1": entry("cut"), "2": entry("full", demo="object", answer=2),
                                  "3": entry("dup", options=["left", "right", "left"])})
    write_video(root / "videos/human/short.mp4", levels(12))
    n_cut = truncated_video(root / "videos/human/cut.mp4")
    write_video(root / "videos/object/full.mp4", levels(20))
    human = d / "human.json"
    human.write_text(json.dumps({"direction-0": 7, "direction-2": 5, "count-99": 1}))
    out = d / "odd.h5"
    err, std = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        T.main(["--model", TINY, "--dataset", "tomato", "--data-dir", str(root), "--frames", "16",
                "--shuffle-seeds", "1", "--counts", "1,4", "--singles", "first,human", "--no-internals",
                "--no-figures", "--bootstrap", "50", "--human-frames", str(human), "--no-progress", "--out", str(out)])
    return {"root": root, "out": out, "err": err.getvalue(), "n_cut": n_cut}


def test_tomato_run_skips_the_truncated_video_and_repeats_the_short_ones(odd_run):
    out, err, root = odd_run["out"], odd_run["err"], odd_run["root"]
    # The truncated video: reported and skipped as flow, capture and the loaders do, never a 13-frame video.
    assert "skipped direction-1" in err and "cut.mp4: is truncated or corrupt: the container declares 32 frames " \
                                             f"but only {odd_run['n_cut']} decode" in err
    ab = T.load_results(out)
    assert ab.ids.tolist() == ["direction-0", "direction-2"] and ab.n_total.tolist() == [12, 20]
    assert CacheReader(out).meta(1)["skipped"].endswith(f"only {odd_run['n_cut']} decode")
    # The short video: TOMATO's sampling, said once with the count.
    assert ab.indices[ab.names.index("multi"), 0].tolist() == TWELVE_TO_SIXTEEN
    assert ab.indices[ab.names.index("reversed"), 0].tolist() == TWELVE_TO_SIXTEEN[::-1]
    assert err.count("have a video shorter than --frames 16") == 1
    assert "note: 1 of 2 questions have a video shorter than --frames 16: their 16-frame conditions repeat frames" \
        in err
    # Independent: every frame decoded by PyAV, indexed by the hand-written list, scored.
    with av.open(str(root / "videos/human/short.mp4")) as c:
        every = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    lm = tiny()
    sc = score(lm, [build_inputs(lm, every[TWELVE_TO_SIXTEEN], "Which way does the object move?",
                                 ["left", "right", "up"], 1)])
    np.testing.assert_allclose(ab.probs[ab.names.index("multi"), 0], sc.probs[0], rtol=1e-4, atol=1e-9)
    # Human frames from the file: both questions, the unknown id said.
    assert ab.human_frame.tolist() == [7, 5]
    assert ab.indices[ab.names.index("single_human"), :, 0].tolist() == [7, 5]
    assert "--human-frames" in err and "2 of 3 questions given a human frame; ids naming no question loaded here: 1 (first: 'count-99'" in err
    hf = CacheReader(out).config["human_frames"]
    assert hf["entries"] == 3 and len(hf["sha256"]) == 64


def test_tomato_report_states_the_skips(odd_run):
    out = odd_run["out"]
    md = out.with_suffix(".md").read_text()
    assert "| A_16 |" in md and "A_13" not in md and "A_14" not in md
    assert "Videos shorter than m = 16 frames: 1 of 2 questions" in md
    assert ("Skipped: 2 questions, left out of the tables (annotation malformed: 1; video truncated: 1; "
            "annotation file missing: 5 files).") in md
    assert "- direction-1 (video truncated): " in md and "- direction-3 (annotation malformed): " in md
    assert "count.json (annotation file missing): annotation file does not exist" in md
    assert "--human-frames FILE.json" not in md  # every question has its human frame
    assert T.stored_report(out)[0] == md
    rows = {(r["by"], r["group"]): r for r in csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text()))}
    d, a = rows[("task", "direction")], rows[("task", "all")]
    assert (d["n"], d["n_short"], d["skipped"]) == ("2", "1", "2")
    assert d["skipped_why"] == "annotation malformed: 1; video truncated: 1"
    assert a["skipped"] == "2" and a["skipped_why"].endswith("annotation file missing: 5 files")
    h = rows[("demonstration_type", "human")]  # the loader's skip has no known demonstration: 'all' only
    assert (h["skipped"], h["skipped_why"]) == ("1", "video truncated: 1")
    assert rows[("demonstration_type", "all")]["skipped"] == "2"
    # From the file alone: the loader's problems are stored with the run.
    problems = [json.loads(p) for p in CacheReader(out).result("tomato/load_problems")[0]]
    assert [p[0] for p in problems] == ["*", "direction-3", "*", "*", "*", "*"]
    assert len(T.load_results(out).skips) == 7


def test_human_frames_how_to_and_a_bad_file(odd_run, tmp_path, capsys):
    # A run whose questions lack human frames says how to supply them.
    ab = T.load_results(odd_run["out"])
    ab.correct[ab.names.index("single_human"), 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        md, _ = M.report([ab], 20)
    assert "ρ: 1 of 2 questions have a human-picked frame" in md
    assert "--human-frames FILE.json, a JSON object mapping question id to frame index from 0" in md
    bad = tmp_path / "h.json"
    bad.write_text('{"direction-0": "seven"}')
    code = cli_boundary(T.main)(["--model", TINY, "--dataset", "tomato", "--data-dir", str(odd_run["root"]),
                                 "--human-frames", str(bad), "--no-progress", "--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--human-frames" in err[0] and "'direction-0' must map to" in err[0]
    assert not (tmp_path / "x.h5").exists()


def test_m_is_tomatos_16_on_a_benchmark_and_the_clips_own_count_on_synthetic(odd_run, tmp_path):
    syn = T.prepare(["--model", TINY, "--tasks", "direction", "--limit", "1", "--out", str(tmp_path / "s.h5")])
    assert syn.decl.config["frames"] == 8 and syn.args.frames == 8  # --render-frames: no repeated frames
    assert syn.decl.config["short_videos"] == "repeat"
    tom = T.prepare(["--model", TINY, "--dataset", "tomato", "--data-dir", str(odd_run["root"]),
                     "--out", str(tmp_path / "t.h5")])
    assert tom.decl.config["frames"] == 16 and "human_frames" not in tom.decl.config
    assert T.prepare(["--model", TINY, "--tasks", "direction", "--limit", "1", "--frames", "4", "--short-videos", "own",
                      "--out", str(tmp_path / "s.h5")]).decl.config["short_videos"] == "own"
    assert not list(tmp_path.iterdir())
