"""The T3 probing data as samples: rendered clips of the T3 tasks with a
train/test distribution shift (another background and/or object shape), every
(question, answer) pair equally frequent, and each sample's control-task input
type (Hewitt & Liang). Knows nothing of models; analyses/t3.py probes them.
"""
from __future__ import annotations

from dataclasses import replace

from tasks.synthetic import COLORS, SHAPES, T3_TASKS, TASKS, render, task_seed
from tasks.types import Sample

# Question slots varied within a task: latent name -> values (tasks/synthetic.py's
# latents; the values of `segment` are the renderer's segment names).
SLOTS = {"referring": ("segment", ["beginning", "middle", "end"]), "when": ("color", list(COLORS))}


def _shape_overrides(task: str, shape: str | None, n_frames: int, size: int) -> dict[str, str]:
    """Every object of the task drawn as `shape` (None: left to chance): the
    renderer's shape latents ('shape', 'obj0_shape', ...) read off one render."""
    if shape is None:
        return {}
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")
    names = render(task, 0, n_frames, size).latents
    return {k: shape for k in names if k == "shape" or k.endswith("_shape")}


def t3_samples(tasks: list[str], n_per_task: int, seed: int = 0, n_frames: int = 8, size: int = 32,
               background: str = "black", split: str = "train", shape: str | None = None) -> list[Sample]:
    """n_per_task rendered samples of each T3 task, for one split.

    Answers cycle through the options and, for tasks whose question has a slot
    (SLOTS), the slot cycles first, so that every (question, answer) pair is
    equally frequent when n_per_task is a multiple of n_slots * n_options.
    shape: draw every object as this shape ('square', 'circle'; None: random).
    Ids are "<split>:<task>-<render seed>"; meta gains "split".
    """
    out = []
    for t in tasks:
        if t not in T3_TASKS:
            raise ValueError(f"unknown T3 task {t!r}; T3 tasks: {T3_TASKS}")
        k = len(TASKS[t].options)
        slot, values = SLOTS.get(t, (None, [None]))
        shapes = _shape_overrides(t, shape, n_frames, size)
        for i in range(n_per_task):
            over = {"answer": (i // len(values)) % k, **shapes}
            if slot is not None:
                over[slot] = values[i % len(values)]
            s = render(t, task_seed(t, seed, i), n_frames, size, background, **over)
            out.append(replace(s, id=f"{split}:{s.id}", meta={**s.meta, "split": split, "shape": shape}))
    return out


def t3_dataset(tasks: list[str], n_per_task: int, seed: int = 0, n_frames: int = 8, size: int = 32,
               train_background: str = "black", test_background: str = "black",
               train_shape: str | None = "square", test_shape: str | None = "circle") -> list[Sample]:
    """Train samples (seed) then test samples (seed + 1): other clips, and the
    distribution shift between probe training and testing: another background
    (the paper: black -> white) and/or another object (the paper's car -> cat;
    here squares -> circles, the default, because a model trained on black
    backgrounds only, as the organism, has never seen another one)."""
    return (t3_samples(tasks, n_per_task, seed, n_frames, size, train_background, "train", train_shape)
            + t3_samples(tasks, n_per_task, seed + 1, n_frames, size, test_background, "test", test_shape))


def input_type(s: Sample) -> str:
    """The control-task type of a sample (Hewitt & Liang's word type): what is
    asked and what the clip shows, but not when. The question, then each
    object's colour with the half of the frame it sits in, as a sorted set --
    e.g. 'Which colour appears first?|green:right,red:left'.

    Left out: frame order and timing (the temporal property every T3 task asks
    about), shape (what the train/test shift changes, so that types recur
    across the split), size and brightness (the attribute tasks' answers), and
    exact positions (so that types recur at all). Types per task: order 6
    colour pairs x 4 side pairs = 24; order3 8; brightness, size_change 8;
    referring, when 32 per question. No T3 answer is a function of the type,
    and a random label per type can only be predicted by memorising which
    colours sit where.
    """
    objs = {(o["color"], "left" if o["x"] < 0.5 else "right") for f in s.latents["objects"] for o in f}
    return s.question + "|" + ",".join(f"{c}:{side}" for c, side in sorted(objs))
