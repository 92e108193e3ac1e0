"""Synthetic temporal video tasks: coloured shapes on a plain background.

Every clip is drawn from a handful of latent parameters (colour, shape,
position per frame, size, brightness) with numpy only, deterministically from
`(task, seed)`. The same latents give the per-frame captions, so each video
has an exact text twin (`caption_prompt`) for the T3 text-vs-video comparison.

Tasks (names in `TASKS`; options are in a fixed order, only the answer varies):

  temporal   direction, rotation, count, velocity, order, order3,
             brightness, size_change, referring, when
  static     static_color (any single frame answers it)
  grounding  ground_position, ground_color, ground_size (one frame by default)

T3's "attribute change" aspect is split into two 2-way tasks, `brightness`
(brighter / darker) and `size_change` (larger / smaller), so that chance is
50% as in the paper; `T3_ASPECTS` maps the paper's four aspects to task names.

Geometry is in unit coordinates (x right, y down, both in [0, 1]) and is
scaled to the pixel size at draw time, so a clip looks the same at 32 px and
at 336 px. Every frame holds at most one object in the tasks defined here
(captions still support several, joined with "and").
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tasks.types import Sample

# --------------------------------------------------------------------------
# Vocabulary of the scene. Colours are chosen to differ in at least two RGB
# channels from each other and from every background, so they stay apart on
# black, white and grey.
COLORS = ["red", "green", "blue", "yellow"]
RGB = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
SHAPES = ["square", "circle"]
# Caption grid: 5 columns x 5 rows, finer than 3x3 so that slow motion and
# orbits still change cell often enough to be read from the captions.
COLUMNS = ["far left", "left", "centre", "right", "far right"]
ROWS = ["top", "upper", "middle", "lower", "bottom"]
# (upper bound, word): object side length (fraction of the frame) -> size word.
SIZE_WORDS = [(0.18, "small"), (0.28, "medium"), (np.inf, "large")]
# (upper bound, word): brightness factor (1 = full colour) -> brightness word.
BRIGHTNESS_WORDS = [(0.5, "dark"), (0.8, "dim"), (np.inf, "bright")]
EMPTY_CAPTION = "an empty frame."
MAX_CAPTION_FRAMES = 16  # caption_prompt numbers frames 1..16; the vocabulary holds those numbers

DEFAULT_SIZE = (0.20, 0.25)  # side length range of an ordinary object: 6.4-8 px at 32 px
SMALL_SIZE = (0.15, 0.17)
LARGE_SIZE = (0.32, 0.36)
DIM_RANGE = (0.30, 0.40)
BRIGHT_RANGE = (0.95, 1.00)


@dataclass(frozen=True)
class TaskSpec:
    """What a task asks and how it may be answered.

    question: a template; `{slot}` fields take the values listed in `slots`.
    options:  option texts in the fixed display order.
    min_frames: the fewest frames the task can be rendered with.
    default_frames: the frame count `render` uses when none is given.
    """

    name: str
    temporal: bool
    options: list[str]
    question: str
    min_frames: int
    default_frames: int = 8
    slots: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _Obj:
    """One object in one frame (unit coordinates; `size` is the side length)."""

    color: str
    shape: str
    x: float
    y: float
    size: float
    bright: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"color": self.color, "shape": self.shape, "x": round(self.x, 6), "y": round(self.y, 6),
                "size": round(self.size, 6), "bright": round(self.bright, 6)}


_SEGMENTS = ["beginning", "middle", "end"]
_SEGMENT_PHRASE = {"beginning": "at the beginning", "middle": "in the middle", "end": "at the end"}
_PERMS3 = [("red", "green", "blue"), ("red", "blue", "green"), ("green", "red", "blue"),
           ("green", "blue", "red"), ("blue", "red", "green"), ("blue", "green", "red")]

TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    TaskSpec("direction", True, ["left", "right", "up", "down"], "Which way does the object move?", 2),
    TaskSpec("rotation", True, ["clockwise", "counterclockwise"],
             "Does the object move clockwise or counterclockwise?", 2),
    TaskSpec("count", True, ["one", "two", "three", "four"], "How many times does the object flash?", 7),
    TaskSpec("velocity", True, ["fast", "slow"], "Does the object move fast or slow?", 2),
    TaskSpec("order", True, list(COLORS), "Which colour appears first?", 2),
    TaskSpec("order3", True, [" then ".join(p) for p in _PERMS3], "In what order do the colours appear?", 3),
    TaskSpec("brightness", True, ["brighter", "darker"], "Does the object get brighter or darker?", 2),
    TaskSpec("size_change", True, ["larger", "smaller"], "Does the object get larger or smaller?", 2),
    TaskSpec("referring", True, list(COLORS), "Which colour appears {segment}?", 3,
             slots={"segment": [_SEGMENT_PHRASE[s] for s in _SEGMENTS]}),
    TaskSpec("when", True, list(_SEGMENTS), "When does the {color} object appear?", 3,
             slots={"color": list(COLORS)}),
    TaskSpec("static_color", False, list(COLORS), "What colour is the object?", 1),
    TaskSpec("ground_position", False, ["left", "right", "top", "bottom"], "Where is the object?", 1, 1),
    TaskSpec("ground_color", False, list(COLORS), "What colour is the object?", 1, 1),
    TaskSpec("ground_size", False, ["small", "large"], "Is the object small or large?", 1, 1),
]}

TEMPORAL_TASKS = ["direction", "rotation", "count", "velocity", "order", "order3",
                  "brightness", "size_change", "referring", "when"]
STATIC_TASKS = ["static_color"]
GROUNDING_TASKS = ["ground_position", "ground_color", "ground_size"]
T3_TASKS = ["order", "order3", "brightness", "size_change", "referring", "when"]
T3_ASPECTS = {"order": ["order", "order3"], "attribute": ["brightness", "size_change"],
              "referring": ["referring"], "grounding": ["when"]}


# --------------------------------------------------------------------------
# Latent sampling. Every draw is made whether or not it is overridden, so an
# override changes only its own latent and never shifts the random stream.
class _Latents:
    def __init__(self, rng: np.random.Generator, overrides: dict[str, Any]):
        self.rng = rng
        self.overrides = dict(overrides)
        self.values: dict[str, Any] = {}

    def pick(self, key: str, draw: Callable[[], Any]) -> Any:
        value = draw()
        if key in self.overrides:
            value = self.overrides[key]
        self.values[key] = value
        return value

    def uniform(self, key: str, lo: float, hi: float) -> float:
        return float(self.pick(key, lambda: float(self.rng.uniform(lo, hi))))

    def choice(self, key: str, items: list) -> Any:
        return self.pick(key, lambda: items[int(self.rng.integers(len(items)))])

    def answer(self, key: str, options: list[str]) -> str:
        """The semantic latent behind the answer; `answer=<index>` overrides it too."""
        idx = self.pick("answer", lambda: int(self.rng.integers(len(options))))
        if not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(options):
            raise ValueError(f"override answer={idx!r} is not an option index 0..{len(options) - 1}")
        return self.pick(key, lambda: options[int(idx)])


def _runs(rng: np.random.Generator, n_frames: int, k: int, min_gap: int) -> list[tuple[int, int]]:
    """k runs [start, end) of >= 1 frame, separated by >= min_gap frames, spread at random."""
    slots = 2 * k + 1  # lead, run, gap, run, ..., run, trail
    base = np.zeros(slots, dtype=int)
    base[1::2] = 1
    base[2:-1:2] = min_gap
    extra = n_frames - int(base.sum())
    if extra < 0:
        raise ValueError(f"{k} runs with gaps of {min_gap} need {base.sum()} frames, got {n_frames}")
    base += np.bincount(rng.integers(slots, size=extra), minlength=slots)
    bounds = np.cumsum(base)
    return [(int(bounds[2 * i]), int(bounds[2 * i + 1])) for i in range(k)]


def _free_xy(lat: _Latents, key: str, size: float) -> tuple[float, float]:
    lo, hi = size / 2 + 0.02, 1 - size / 2 - 0.02
    return lat.uniform(key + "_x", lo, hi), lat.uniform(key + "_y", lo, hi)


def _obj_latents(lat: _Latents, key: str = "", color: str | None = None) -> tuple[str, str, float]:
    p = key + "_" if key else ""
    c = color if color is not None else lat.choice(p + "color", COLORS)
    return c, lat.choice(p + "shape", SHAPES), lat.uniform(p + "size", *DEFAULT_SIZE)


def _distinct_colors(lat: _Latents, key: str, first: str, n: int, pool: list[str] = COLORS) -> list[str]:
    """`first` plus n-1 other colours from `pool` in random order."""
    rest = [c for c in pool if c != first]
    perm = lat.rng.permutation(len(rest))
    chosen = lat.pick(key, lambda: [first] + [rest[i] for i in perm[: n - 1]])
    if len(set(chosen)) != n or chosen[0] != first:
        raise ValueError(f"override {key}={chosen!r} must be {n} distinct colours starting with {first!r}")
    return list(chosen)


# Each generator returns (frames as lists of objects, question slot values, answer option text).
_Scene = tuple[list[list[_Obj]], dict[str, str], str]


def _gen_direction(lat: _Latents, T: int) -> _Scene:
    d = lat.answer("direction", TASKS["direction"].options)
    color, shape, size = _obj_latents(lat)
    travel = lat.uniform("travel", 0.45, 0.62)
    return _linear_motion(lat, T, d, travel, color, shape, size), {}, d


def _linear_motion(lat: _Latents, T: int, d: str, travel: float, color: str, shape: str,
                   size: float) -> list[list[_Obj]]:
    """One object moving `travel` (fraction of the frame) in direction d, evenly over T frames."""
    lo, hi = size / 2 + 0.02, 1 - size / 2 - 0.02
    start = lat.uniform("start", lo, hi - travel)  # along the axis, measured in the motion's sense
    across = lat.uniform("across", 0.25, 0.75)
    frames = []
    for t in range(T):
        s = start + travel * (t / (T - 1) if T > 1 else 0.0)
        a = s if d in ("right", "down") else 1 - s
        x, y = (a, across) if d in ("left", "right") else (across, a)
        frames.append([_Obj(color, shape, x, y, size)])
    return frames


def _gen_rotation(lat: _Latents, T: int) -> _Scene:
    sense = lat.answer("sense", TASKS["rotation"].options)
    color, shape, size = _obj_latents(lat)
    radius = lat.uniform("radius", 0.27, 0.32)
    theta0 = lat.uniform("theta0", 0.0, 2 * np.pi)
    step = lat.uniform("step", np.radians(35), np.radians(55))  # < 180 deg per frame: the sense is unambiguous
    sign = 1.0 if sense == "clockwise" else -1.0  # y points down, so increasing angle turns clockwise on screen
    frames = []
    for t in range(T):
        th = theta0 + sign * step * t
        frames.append([_Obj(color, shape, 0.5 + radius * np.cos(th), 0.5 + radius * np.sin(th), size)])
    return frames, {}, sense


def _gen_count(lat: _Latents, T: int) -> _Scene:
    word = lat.answer("count", TASKS["count"].options)
    k = TASKS["count"].options.index(word) + 1
    color, shape, size = _obj_latents(lat)
    x, y = _free_xy(lat, "pos", size)
    runs = lat.pick("runs", lambda: _runs(lat.rng, T, k, min_gap=1))
    visible = np.zeros(T, dtype=bool)
    for a, b in runs:
        visible[a:b] = True
    return [[_Obj(color, shape, x, y, size)] if v else [] for v in visible], {}, word


def _gen_velocity(lat: _Latents, T: int) -> _Scene:
    speed = lat.answer("speed", TASKS["velocity"].options)
    d = lat.choice("direction", ["left", "right", "up", "down"])
    color, shape, size = _obj_latents(lat)
    fast, slow = lat.uniform("travel_fast", 0.55, 0.70), lat.uniform("travel_slow", 0.12, 0.20)
    travel = lat.pick("travel", lambda: fast if speed == "fast" else slow)
    return _linear_motion(lat, T, d, travel, color, shape, size), {}, speed


def _sequence(lat: _Latents, T: int, colors: list[str], runs: list[tuple[int, int]]) -> list[list[_Obj]]:
    frames: list[list[_Obj]] = [[] for _ in range(T)]
    for i, (c, (a, b)) in enumerate(zip(colors, runs)):
        _, shape, size = _obj_latents(lat, f"obj{i}", color=c)
        x, y = _free_xy(lat, f"obj{i}", size)
        for t in range(a, b):
            frames[t].append(_Obj(c, shape, x, y, size))
    return frames


def _gen_order(lat: _Latents, T: int) -> _Scene:
    first = lat.answer("first", COLORS)
    colors = _distinct_colors(lat, "colors", first, 2)
    runs = lat.pick("runs", lambda: _runs(lat.rng, T, 2, min_gap=0))
    return _sequence(lat, T, colors, runs), {}, first


def _gen_order3(lat: _Latents, T: int) -> _Scene:
    text = lat.answer("sequence", TASKS["order3"].options)
    colors = text.split(" then ")
    runs = lat.pick("runs", lambda: _runs(lat.rng, T, 3, min_gap=0))
    return _sequence(lat, T, colors, runs), {}, text


def _thirds(T: int) -> list[tuple[int, int]]:
    """Beginning / middle / end as contiguous frame ranges (np.array_split sizes)."""
    cuts = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(T), 3)])
    return [(int(cuts[i]), int(cuts[i + 1])) for i in range(3)]


def _gen_referring(lat: _Latents, T: int) -> _Scene:
    color = lat.answer("color", COLORS)
    segment = lat.choice("segment", _SEGMENTS)
    others = _distinct_colors(lat, "colors", color, 3)  # asked colour first, then the other two
    order = others[1:]
    order.insert(_SEGMENTS.index(segment), color)
    lat.values["sequence"] = order  # derived, not an override
    return _sequence(lat, T, order, _thirds(T)), {"segment": _SEGMENT_PHRASE[segment]}, color


def _gen_when(lat: _Latents, T: int) -> _Scene:
    segment = lat.answer("segment", _SEGMENTS)
    color = lat.choice("color", COLORS)
    others = _distinct_colors(lat, "colors", color, 3)
    order = others[1:]
    order.insert(_SEGMENTS.index(segment), color)
    lat.values["sequence"] = order  # derived, not an override
    return _sequence(lat, T, order, _thirds(T)), {"color": color}, segment


def _gen_attribute(lat: _Latents, T: int, task: str) -> _Scene:
    word = lat.answer("change", TASKS[task].options)
    color, shape, size = _obj_latents(lat)
    x, y = _free_xy(lat, "pos", LARGE_SIZE[1])  # room for the largest size
    if task == "brightness":
        lo, hi = lat.uniform("bright_low", *DIM_RANGE), lat.uniform("bright_high", *BRIGHT_RANGE)
    else:
        lo, hi = lat.uniform("size_low", *SMALL_SIZE), lat.uniform("size_high", *LARGE_SIZE)
    a, b = (lo, hi) if word in ("brighter", "larger") else (hi, lo)
    frames = []
    for t in range(T):
        v = a + (b - a) * (t / (T - 1) if T > 1 else 0.0)
        if task == "brightness":
            frames.append([_Obj(color, shape, x, y, size, bright=v)])
        else:
            frames.append([_Obj(color, shape, x, y, v)])
    return frames, {}, word


def _gen_static_color(lat: _Latents, T: int) -> _Scene:
    color = lat.answer("color", COLORS)
    _, shape, size = _obj_latents(lat, color=color)
    lo, hi = size / 2 + 0.02, 1 - size / 2 - 0.02
    x, y = _free_xy(lat, "pos", size)
    steps = lat.rng.normal(0.0, 0.05, size=(T, 2))  # a random walk: the object jitters about
    frames = []
    for t in range(T):
        if t:
            x, y = float(np.clip(x + steps[t, 0], lo, hi)), float(np.clip(y + steps[t, 1], lo, hi))
        frames.append([_Obj(color, shape, x, y, size)])
    return frames, {}, color


def _gen_ground_position(lat: _Latents, T: int) -> _Scene:
    side = lat.answer("side", TASKS["ground_position"].options)
    color, shape, size = _obj_latents(lat)
    near = lat.uniform("near", size / 2 + 0.02, 0.30)
    along = lat.uniform("along", 0.35, 0.65)
    far = 1 - near
    x, y = {"left": (near, along), "right": (far, along), "top": (along, near), "bottom": (along, far)}[side]
    return [[_Obj(color, shape, x, y, size)] for _ in range(T)], {}, side


def _gen_ground_color(lat: _Latents, T: int) -> _Scene:
    color = lat.answer("color", COLORS)
    _, shape, size = _obj_latents(lat, color=color)
    x, y = _free_xy(lat, "pos", size)
    return [[_Obj(color, shape, x, y, size)] for _ in range(T)], {}, color


def _gen_ground_size(lat: _Latents, T: int) -> _Scene:
    word = lat.answer("size_word", TASKS["ground_size"].options)
    color = lat.choice("color", COLORS)
    shape = lat.choice("shape", SHAPES)
    small, large = lat.uniform("size_small", *SMALL_SIZE), lat.uniform("size_large", *LARGE_SIZE)
    size = lat.pick("size", lambda: small if word == "small" else large)
    x, y = _free_xy(lat, "pos", LARGE_SIZE[1])
    return [[_Obj(color, shape, x, y, size)] for _ in range(T)], {}, word


_GENERATORS: dict[str, Callable[[_Latents, int], _Scene]] = {
    "direction": _gen_direction, "rotation": _gen_rotation, "count": _gen_count,
    "velocity": _gen_velocity, "order": _gen_order, "order3": _gen_order3,
    "brightness": lambda lat, T: _gen_attribute(lat, T, "brightness"),
    "size_change": lambda lat, T: _gen_attribute(lat, T, "size_change"),
    "referring": _gen_referring, "when": _gen_when, "static_color": _gen_static_color,
    "ground_position": _gen_ground_position, "ground_color": _gen_ground_color,
    "ground_size": _gen_ground_size,
}


# --------------------------------------------------------------------------
# Drawing and captions.
def _draw(frames: list[list[_Obj]], size: int, background: str) -> np.ndarray:
    """Objects per frame -> uint8 [T, size, size, 3]."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    out[:] = BACKGROUNDS[background]
    c = (np.arange(size) + 0.5) / size  # pixel centres in unit coordinates
    for t, objs in enumerate(frames):
        for o in objs:
            h = o.size / 2
            if o.shape == "square":
                mask = (np.abs(c[:, None] - o.y) < h) & (np.abs(c[None, :] - o.x) < h)
            else:
                mask = (c[:, None] - o.y) ** 2 + (c[None, :] - o.x) ** 2 < h * h
            out[t][mask] = np.round(np.asarray(RGB[o.color]) * o.bright).astype(np.uint8)
    return out


def _word_for(value: float, table: list[tuple[float, str]]) -> str:
    return next(w for bound, w in table if value < bound)


def _cell(v: float, words: list[str]) -> str:
    return words[min(int(v * len(words)), len(words) - 1)]


def _phrase(o: _Obj) -> str:
    return (f"a {_word_for(o.bright, BRIGHTNESS_WORDS)} {_word_for(o.size, SIZE_WORDS)} {o.color} {o.shape} "
            f"at {_cell(o.y, ROWS)} {_cell(o.x, COLUMNS)}")


def _caption(objs: list[_Obj]) -> str:
    if not objs:
        return EMPTY_CAPTION
    return " and ".join(_phrase(o) for o in sorted(objs, key=lambda o: (o.x, o.y))) + "."


# --------------------------------------------------------------------------
# Public API.
def render(task: str, seed: int, n_frames: int | None = None, size: int = 32, background: str = "black",
           **overrides: Any) -> Sample:
    """Render one sample of `task`, identical for identical arguments.

    n_frames: frame count T (default: the task's `default_frames`, 8 or 1 for grounding).
    size:     frame side H = W in pixels.
    overrides: fix any latent by name (e.g. `answer=2`, `color="red"`, `shape="circle"`);
               an unknown name raises ValueError listing the task's latents.
    Returns a Sample with frames uint8 [T, size, size, 3], one caption per frame,
    latents (JSON-serialisable, including every object per frame) and
    meta {"background", "size", "n_frames"}.
    """
    spec = TASKS.get(task)
    if spec is None:
        raise ValueError(f"unknown synthetic task {task!r}; valid tasks: {sorted(TASKS)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; valid: {sorted(BACKGROUNDS)}")
    T = spec.default_frames if n_frames is None else int(n_frames)
    if T < spec.min_frames:
        raise ValueError(f"task {task!r} needs at least {spec.min_frames} frames, got n_frames={T}")
    if int(size) < 8:
        raise ValueError(f"size={size} is too small to draw objects (need >= 8 px)")
    # The task name enters the seed so that equal seeds of different tasks are unrelated.
    rng = np.random.default_rng([zlib.crc32(task.encode()), int(seed)])
    lat = _Latents(rng, overrides)
    frames, slots, answer_text = _GENERATORS[task](lat, T)
    unknown = set(overrides) - set(lat.values)
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)} for task {task!r}; "
                         f"its latents are {sorted(lat.values)}")
    answer = spec.options.index(answer_text)
    if "answer" in overrides and overrides["answer"] != answer:
        raise ValueError(f"override answer={overrides['answer']} contradicts the other overrides of {task!r} "
                         f"(they give {answer_text!r}, index {answer})")
    lat.values["answer"] = answer
    latents = _jsonable(lat.values)
    latents["objects"] = [[o.as_dict() for o in objs] for objs in frames]
    return Sample(
        id=f"{task}-{seed}",
        task=task,
        question=spec.question.format(**slots),
        options=list(spec.options),
        answer=answer,
        frames=_draw(frames, int(size), background),
        latents=latents,
        captions=[_caption(objs) for objs in frames],
        meta={"background": background, "size": int(size), "n_frames": T},
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 6)
    return v


# Render seeds of the datasets the analyses build start here. The organism was
# trained on render seeds below it (within 0-172,799: organism/train.py), so no clip an
# analysis evaluates by default was seen in training.
EVAL_SEED_BASE = 10_000_000


def task_seed(task: str, seed: int, i: int) -> int:
    """The render seed of the i-th sample of `task` in a dataset built with `seed`
    (>= 0): EVAL_SEED_BASE + seed * 1_000_003 + i, above every training seed."""
    if int(seed) < 0:
        raise ValueError(f"dataset seed {seed} < 0: dataset seeds count from 0 (render seeds from {EVAL_SEED_BASE})")
    return EVAL_SEED_BASE + int(seed) * 1_000_003 + int(i)


def make_dataset(tasks: list[str] | None, n_per_task: int, seed: int = 0, n_frames: int | None = None,
                 size: int = 32, background: str = "black") -> list[Sample]:
    """n_per_task samples of each task (all of TASKS when `tasks` is None), task after task.

    The answer index cycles 0, 1, ..., n_options-1, so each option is the answer
    equally often (exactly when n_per_task is a multiple of the option count).
    n_frames None uses each task's default (8, or 1 for grounding tasks).
    """
    names = list(TASKS) if tasks is None else list(tasks)
    for t in names:
        if t not in TASKS:
            raise ValueError(f"unknown synthetic task {t!r}; valid tasks: {sorted(TASKS)}")
    out = []
    for t in names:
        k = len(TASKS[t].options)
        for i in range(n_per_task):
            out.append(render(t, task_seed(t, seed, i), n_frames, size, background, answer=i % k))
    return out


# Which frames carry the answer, from the renderer's latents (the ground truth
# that per-frame attention statistics are checked against).
INFORMATIVE_TASKS = ("when", "count", "direction")


def informative_frames(sample: Sample) -> list[int] | None:
    """Frame indices that decide the answer of a rendered clip, or None for a
    task without such frames: "when", the frames of the target's segment;
    "count", the frames where the flashing object is shown; "direction", the
    first and the last frame (the start and end positions)."""
    objects = sample.latents.get("objects")
    if sample.task not in INFORMATIVE_TASKS or objects is None:
        return None
    T = len(objects)
    if sample.task == "direction":
        return [0, T - 1]
    if sample.task == "count":
        return [t for t, objs in enumerate(objects) if objs]
    a, b = _thirds(T)[_SEGMENTS.index(sample.latents["segment"])]
    return list(range(a, b))


def caption_prompt(sample: Sample) -> str:
    """The video as text: "Frame 1: <caption> Frame 2: <caption> ..."."""
    if sample.captions is None:
        raise ValueError(f"sample {sample.id!r} has no captions")
    if len(sample.captions) > MAX_CAPTION_FRAMES:
        raise ValueError(f"sample {sample.id!r} has {len(sample.captions)} frames; "
                         f"caption_prompt numbers at most {MAX_CAPTION_FRAMES}")
    return " ".join(f"Frame {i + 1}: {c}" for i, c in enumerate(sample.captions))


_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Split text into words and single punctuation marks, case kept."""
    return _WORD.findall(text)


def vocabulary() -> list[str]:
    """Every word any question, option, caption or caption_prompt can contain, sorted.

    Enumerated from the templates and word tables (not sampled), so it is complete.
    """
    vocab: set[str] = set()
    for spec in TASKS.values():
        for opt in spec.options:
            vocab.update(words(opt))
        if spec.slots:
            (slot, values), = spec.slots.items()
            for v in values:
                vocab.update(words(spec.question.format(**{slot: v})))
        else:
            vocab.update(words(spec.question))
    vocab.update(words(EMPTY_CAPTION))
    for _, b in BRIGHTNESS_WORDS:
        for _, s in SIZE_WORDS:
            for c in COLORS:
                for sh in SHAPES:
                    for r in ROWS:
                        for col in COLUMNS:
                            vocab.update(words(f"a {b} {s} {c} {sh} at {r} {col} and ."))
    vocab.update(["Frame", ":"])
    vocab.update(str(i) for i in range(1, MAX_CAPTION_FRAMES + 1))
    return sorted(vocab)
