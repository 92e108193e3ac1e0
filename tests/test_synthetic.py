"""The synthetic renderer: answers are checked against the pixels, not the latents."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.synthetic import (BACKGROUNDS, COLORS, GROUNDING_TASKS, RGB, STATIC_TASKS, T3_TASKS, TASKS,
                             TEMPORAL_TASKS, caption_prompt, make_dataset, render, vocabulary, words)

SEEDS = range(40)


def obj_mask(frame: np.ndarray, background: str = "black") -> np.ndarray:
    """Pixels that differ from the background colour -> bool [H, W]."""
    return np.any(frame != np.asarray(BACKGROUNDS[background], dtype=np.uint8), axis=-1)


def centroid(frame: np.ndarray, background: str = "black") -> np.ndarray:
    """(x, y) of the object's pixels, in pixels."""
    ys, xs = np.nonzero(obj_mask(frame, background))
    return np.array([xs.mean(), ys.mean()])


def color_of(frame: np.ndarray, background: str = "black") -> str | None:
    """Colour name of the object in a frame, by the hue direction of its mean pixel (None if empty)."""
    m = obj_mask(frame, background)
    if not m.any():
        return None
    mean = frame[m].astype(float).mean(0)
    # Compare normalised directions so that a dimmed object keeps its colour.
    dist = {c: np.linalg.norm(mean / np.linalg.norm(mean) - np.asarray(RGB[c]) / np.linalg.norm(RGB[c])) for c in COLORS}
    return min(dist, key=dist.get)


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        if not f and start is not None:
            out.append((start, i))
            start = None
    return out


def test_task_lists_partition_tasks():
    assert sorted(TEMPORAL_TASKS + STATIC_TASKS + GROUNDING_TASKS) == sorted(TASKS)
    assert set(T3_TASKS) <= set(TEMPORAL_TASKS)
    assert all(TASKS[t].temporal for t in TEMPORAL_TASKS)
    assert not any(TASKS[t].temporal for t in STATIC_TASKS + GROUNDING_TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_render_is_deterministic_and_well_formed(task):
    a, b = render(task, 7), render(task, 7)
    c = render(task, 8)
    T = TASKS[task].default_frames
    assert a.frames.dtype == np.uint8 and a.frames.shape == (T, 32, 32, 3)
    assert np.array_equal(a.frames, b.frames) and a.captions == b.captions and a.latents == b.latents
    assert a.question == b.question and a.answer == b.answer
    assert not (np.array_equal(a.frames, c.frames) and a.answer == c.answer)
    assert a.id == f"{task}-7" and a.task == task
    assert a.options == TASKS[task].options
    assert len(a.captions) == T
    assert a.meta == {"background": "black", "size": 32, "n_frames": T}
    json.dumps(a.latents)  # JSON-serialisable


def test_options_order_is_fixed_while_answers_vary():
    for task, spec in TASKS.items():
        samples = [render(task, s) for s in SEEDS]
        assert all(s.options == spec.options for s in samples)
        assert len({s.answer for s in samples}) == len(spec.options), task


def test_direction_matches_centroid_motion():
    for s in SEEDS:
        smp = render("direction", s)
        dx, dy = centroid(smp.frames[-1]) - centroid(smp.frames[0])
        expected = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert smp.options[smp.answer] == expected
        assert max(abs(dx), abs(dy)) > 0.4 * 32  # a clear motion at 32 px


def test_rotation_sense_matches_centroid_angles():
    for s in SEEDS:
        smp = render("rotation", s)
        c = np.array([centroid(f) for f in smp.frames]) - 16.0
        ang = np.arctan2(c[:, 1], c[:, 0])
        d = np.angle(np.exp(1j * np.diff(ang)))  # wrapped to (-pi, pi]
        # With y pointing down, increasing angle is clockwise on screen.
        assert smp.options[smp.answer] == ("clockwise" if d.sum() > 0 else "counterclockwise")
        assert np.all(np.sign(d) == np.sign(d.sum()))


def test_count_equals_visible_runs():
    for s in SEEDS:
        smp = render("count", s)
        visible = [bool(obj_mask(f).any()) for f in smp.frames]
        assert len(runs(visible)) == ["one", "two", "three", "four"].index(smp.options[smp.answer]) + 1


def test_velocity_fast_travels_far_and_slow_near():
    for s in SEEDS:
        smp = render("velocity", s)
        dist = np.abs(centroid(smp.frames[-1]) - centroid(smp.frames[0])).max() / 32
        if smp.options[smp.answer] == "fast":
            assert dist > 0.5
        else:
            assert dist < 0.25


def test_order_and_order3_follow_colour_sequence():
    for s in SEEDS:
        for task in ("order", "order3"):
            smp = render(task, s)
            seq = []
            for f in smp.frames:
                c = color_of(f)
                if c is not None and (not seq or seq[-1] != c):
                    seq.append(c)
            if task == "order":
                assert len(seq) == 2 and smp.options[smp.answer] == seq[0]
            else:
                assert smp.options[smp.answer] == " then ".join(seq)


def test_brightness_and_size_change_follow_pixels():
    for s in SEEDS:
        b = render("brightness", s)
        first, last = (b.frames[i][obj_mask(b.frames[i])].astype(float).sum(-1).mean() for i in (0, -1))
        assert b.options[b.answer] == ("brighter" if last > first else "darker")
        assert max(first, last) > 2 * min(first, last)
        z = render("size_change", s)
        a0, a1 = obj_mask(z.frames[0]).sum(), obj_mask(z.frames[-1]).sum()
        assert z.options[z.answer] == ("larger" if a1 > a0 else "smaller")
        assert max(a0, a1) > 3 * min(a0, a1)


def test_referring_and_when_use_thirds_of_the_clip():
    thirds = {"beginning": [0, 1, 2], "middle": [3, 4, 5], "end": [6, 7]}  # np.array_split of 8 frames, by hand
    for s in SEEDS:
        r = render("referring", s)
        seg = next(k for k in thirds if r.question.endswith({"beginning": "at the beginning?", "middle": "in the middle?",
                                                              "end": "at the end?"}[k]))
        assert {color_of(r.frames[i]) for i in thirds[seg]} == {r.options[r.answer]}
        w = render("when", s)
        asked = w.question.split()[3]  # "When does the <colour> object appear?"
        where = [k for k, idx in thirds.items() if all(color_of(w.frames[i]) == asked for i in idx)]
        assert where == [w.options[w.answer]]


def test_static_and_grounding_tasks():
    for s in SEEDS:
        st = render("static_color", s)
        assert {color_of(f) for f in st.frames} == {st.options[st.answer]}
        gc = render("ground_color", s)
        assert gc.frames.shape[0] == 1 and color_of(gc.frames[0]) == gc.options[gc.answer]
        gp = render("ground_position", s)
        x, y = centroid(gp.frames[0]) / 32
        side = gp.options[gp.answer]
        assert {"left": x < 0.35, "right": x > 0.65, "top": y < 0.35, "bottom": y > 0.65}[side]
        assert 0.3 < (y if side in ("left", "right") else x) < 0.7
        gs = render("ground_size", s)
        area = obj_mask(gs.frames[0]).mean()
        # small: side <= 0.17 * 32 = 5.4 px, so at most 6 x 6 = 36 px (0.035) after rasterising;
        # large: a disc of side >= 0.32 covers about pi/4 * 0.32^2 = 0.080.
        assert (area <= 36 / 1024) if gs.options[gs.answer] == "small" else (area > 0.07)


def test_colours_distinct_on_every_background():
    for bg, rgb in BACKGROUNDS.items():
        for c in COLORS:
            for dim in (0.3, 1.0):  # the darkest brightness the brightness task draws
                v = np.round(np.asarray(RGB[c]) * dim)
                assert np.abs(v - rgb).max() >= 60, (bg, c, dim)
        for i, a in enumerate(COLORS):
            for b in COLORS[i + 1:]:
                assert np.abs(np.asarray(RGB[a]) - RGB[b]).max() >= 100
        smp = render("static_color", 3, background=bg)
        assert smp.meta["background"] == bg
        assert {color_of(f, bg) for f in smp.frames} == {smp.options[smp.answer]}
        # Everything but the one object (at most 0.25^2 of the frame) is the background colour.
        assert (smp.frames == np.asarray(rgb, dtype=np.uint8)).all(-1).mean() > 1 - 0.25 ** 2 - 0.01


def test_sizes_frame_counts_and_minimum():
    big = render("direction", 2, size=336)
    small = render("direction", 2)
    assert big.frames.shape == (8, 336, 336, 3)
    assert big.answer == small.answer and big.captions == small.captions
    # The object covers the same fraction of the frame at both sizes (within rasterisation).
    assert abs(obj_mask(big.frames[0]).mean() - obj_mask(small.frames[0]).mean()) < 0.01
    assert render("ground_position", 1, n_frames=4).frames.shape[0] == 4
    assert np.array_equal(*render("ground_size", 1, n_frames=2).frames)  # static: both frames equal
    assert render("static_color", 1, n_frames=1).frames.shape[0] == 1
    assert render("direction", 1, n_frames=16).frames.shape[0] == 16
    with pytest.raises(ValueError, match="count"):
        render("count", 1, n_frames=6)
    with pytest.raises(ValueError, match="nope"):
        render("nope", 1)
    with pytest.raises(ValueError, match="purple"):
        render("direction", 1, background="purple")


def test_overrides():
    s = render("direction", 5, answer=2, color="red", shape="circle")
    assert s.options[s.answer] == "up" and s.latents["color"] == "red"
    assert all("red circle" in c for c in s.captions)
    assert render("direction", 5, direction="left").answer == 0
    # An override changes only its own latent: the position draws stay the same.
    base = render("direction", 5)
    assert render("direction", 5, color="blue").latents["across"] == base.latents["across"]
    with pytest.raises(ValueError, match="colour_typo"):
        render("direction", 5, colour_typo="red")
    with pytest.raises(ValueError, match="answer"):
        render("direction", 5, answer=9)


def test_make_dataset_balanced_and_deterministic():
    ds = make_dataset(["direction", "rotation", "order3"], 12, seed=3)
    assert len(ds) == 36 and len({s.id for s in ds}) == 36
    for task in ("direction", "rotation", "order3"):
        answers = [s.answer for s in ds if s.task == task]
        k = len(TASKS[task].options)
        assert np.bincount(answers, minlength=k).tolist() == [12 // k] * k
    again = make_dataset(["direction", "rotation", "order3"], 12, seed=3)
    assert all(np.array_equal(a.frames, b.frames) and a.id == b.id for a, b in zip(ds, again))
    other = make_dataset(["direction"], 12, seed=4)
    assert {s.id for s in other}.isdisjoint({s.id for s in ds})
    mixed = make_dataset(None, 1)
    assert [s.task for s in mixed] == list(TASKS)
    assert [s.n_frames for s in mixed] == [TASKS[t].default_frames for t in TASKS]


def test_default_datasets_render_from_seeds_the_organism_never_trained_on():
    # The organism's training samples: render(task, seed_base + j) with
    # seed_base = (seed * 100_003 + step) * batch % 10_000_000 (organism/train.py),
    # for every stage of its train_log.json.
    from pathlib import Path

    from tasks.t3 import t3_dataset

    log = json.loads((Path(__file__).parents[1] / "organism/checkpoint/train_log.json").read_text())
    trained = set()
    for st in log["stages"]:
        for step in range(st["from_step"], st["from_step"] + st["steps"]):
            base = (st["seed"] * 100_003 + step) * st["batch"] % 10_000_000
            trained.update(range(base, base + st["batch"]))
    assert min(trained) == 0 and max(trained) == 172_799  # the blocks drawn from (caption steps render half of one)
    seeds = [int(s.id.rsplit("-", 1)[1]) for s in make_dataset(None, 3)]
    seeds += [int(s.id.rsplit("-", 1)[1]) for s in make_dataset(["direction"], 3, seed=7)]
    seeds += [int(s.id.rsplit("-", 1)[1]) for s in t3_dataset(["order"], 4, n_frames=2, size=16)]
    assert min(seeds) >= 10_000_000 and not trained & set(seeds)
    with pytest.raises(ValueError, match="dataset seed -1"):
        make_dataset(["direction"], 1, seed=-1)


def test_captions_describe_frames():
    for s in range(10):
        for task in ("count", "order3", "direction"):
            smp = render(task, s)
            for f, cap in zip(smp.frames, smp.captions):
                c = color_of(f)
                if c is None:
                    assert cap == "an empty frame."
                else:
                    assert f" {c} " in cap and cap.endswith(".")
    smp = render("ground_color", 0, color="green")
    assert caption_prompt(smp) == f"Frame 1: {smp.captions[0]}"
    two = render("order", 0)
    assert caption_prompt(two).startswith(f"Frame 1: {two.captions[0]} Frame 2: {two.captions[1]} Frame 3:")


def test_words_splits_punctuation():
    assert words("Frame 1: a red square at far left.") == ["Frame", "1", ":", "a", "red", "square", "at", "far",
                                                           "left", "."]
    assert words("Which colour appears first?") == ["Which", "colour", "appears", "first", "?"]


def test_vocabulary_covers_everything_rendered():
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab)
    seen = set()
    for task in TASKS:
        for s in range(60):
            for n_frames, bg in ((None, "black"), (16, "white")):
                smp = render(task, s, n_frames=n_frames, background=bg)
                text = " ".join([smp.question, caption_prompt(smp)] + smp.options)
                seen.update(words(text))
    assert seen <= vocab, sorted(seen - vocab)
    # Size, brightness and position words all occur somewhere.
    for w in ("small", "medium", "large", "dark", "dim", "bright", "far", "top", "bottom", "centre"):
        assert w in seen
