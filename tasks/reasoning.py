"""Temporal word problems with step-by-step solutions and known dependencies.

The reasoner (organism/reasoner/) is trained on these; WAAD/FAI-style
analyses read its attention while it writes the solution and compare it with
the dependency graph that every problem records by construction.

    p = make("clock", seed=3)
    p.problem   # 'Mia left at 7:40. The bus took 35 minutes and the walk 20 minutes. When did Mia arrive?'
    p.solution  # '7:40 + 0:35 = 8:15\\n8:15 + 0:20 = 8:35\\nAnswer: 8:35'
    p.text      # problem + '\\n' + solution: every span below indexes this string

Families (``FAMILIES``); ``length`` is the chain length, the difficulty knob:

  clock       a start time plus ``length`` durations -> arrival time
              (one ``a + b = c`` step per duration)
  duration    ``length`` intervals "from t1 to t2" -> their total duration
              (one ``t2 - t1 = d`` step per interval, then running sums)
  weekday     a start day plus ``length`` day offsets -> the final day
              (one ``Monday + 3 = Thursday`` step per offset)
  relations   ``length`` events in a chain, given as before/after
              relations, each one touching the events already named ->
              the first or the last event (one step per relation: the
              order so far, with the relation's new event at its end)
  timestamps  ``length`` events with times -> the events sorted by time
              (one step per event, earliest first)

Training uses ``TRAIN_LENGTHS``; the held-out ``long`` split uses the longer
chains of ``LONG_LENGTHS`` (generalisation). Held-out evaluation draws seeds
at or above ``HELD_OUT_SEED``; training stays below.

Arithmetic is kept learnable for a model of a few million parameters: every
time is a multiple of 5 minutes, hours stay within one day (no wrap past
midnight), durations are under an hour (clock) or two (duration), day offsets
are 1-9 (one token each), the times to sort have one-digit hours (1:00-9:55),
different within a problem, and names, activities and events come from
small fixed lists.

Dependencies (``Problem.deps``) are character spans of ``text``: each ``Dep``
says that the value written at ``target`` (in the solution) is read from
(``kind='copy'``: the same value) or computed from (``kind='compute'``) the
values at ``sources`` (earlier in the problem or the solution). Operands of a
step read the problem's numbers or an earlier step's result; a step's result
is computed from its operands; the answer line reads the last result.
``token_graph`` maps this to token indices with a tokenizer's offset mapping.

numpy only; deterministic in (family, seed, length, split).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

FAMILIES = ("clock", "duration", "weekday", "relations", "timestamps")
TRAIN_LENGTHS: dict[str, tuple[int, ...]] = {
    "clock": (1, 2, 3),
    "duration": (1, 2),
    "weekday": (1, 2, 3),
    "relations": (2, 3, 4),
    "timestamps": (3, 4),
}
LONG_LENGTHS: dict[str, tuple[int, ...]] = {
    "clock": (4, 5),
    "duration": (3,),
    "weekday": (4, 5),
    "relations": (5, 6),
    "timestamps": (5, 6),
}
SPLITS = ("train", "long")
HELD_OUT_SEED = 10_000_000  # training seeds stay below, evaluation seeds at or above
SEP = "\n"  # between the problem and the solution, and between solution lines
ANSWER = "Answer: "

NAMES = ["Mia", "Leo", "Ana", "Sam", "Eva", "Tom", "Zoe", "Max"]
LEGS = ["bus", "walk", "train", "ride", "ferry", "wait", "climb", "drive"]
ACTIVITIES = ["read", "swam", "worked", "painted", "studied", "played", "cooked", "slept"]
ACTIVITY_BASE = {"read": "read", "swam": "swim", "worked": "work", "painted": "paint", "studied": "study",
                 "played": "play", "cooked": "cook", "slept": "sleep"}
PLACES = ["lake", "farm", "city", "coast", "hills", "forest", "castle", "bridge"]
EVENTS = ["storm", "party", "game", "concert", "parade", "meeting", "wedding", "race", "exam", "flood", "fair",
          "match"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

Span = tuple[int, int]  # half-open character span [start, end) of Problem.text


@dataclass(frozen=True)
class Dep:
    """The value at ``target`` is read from (``copy``) or computed from
    (``compute``) the values at ``sources``; all spans index ``Problem.text``."""

    target: Span
    sources: tuple[Span, ...]
    kind: str  # 'copy' | 'compute'


@dataclass(frozen=True)
class Problem:
    family: str
    length: int  # chain length (durations, intervals, offsets or events)
    seed: int
    split: str
    problem: str
    solution: str  # step lines, then 'Answer: ...'
    answer: str
    deps: tuple[Dep, ...]

    @property
    def text(self) -> str:
        return self.problem + SEP + self.solution

    @property
    def solution_start(self) -> int:
        """Character offset of the solution in ``text``."""
        return len(self.problem) + len(SEP)

    @property
    def steps(self) -> list[str]:
        """The solution's lines before the answer line."""
        return self.solution.split(SEP)[:-1]


# ---------------------------------------------------------------------------
# Text with spans: the problem and the solution are written into one buffer so
# that every recorded span indexes Problem.text directly.
class _Writer:
    def __init__(self):
        self.parts: list[str] = []
        self.n = 0

    def put(self, s: str) -> Span:
        start = self.n
        self.parts.append(s)
        self.n += len(s)
        return start, self.n

    def text(self) -> str:
        return "".join(self.parts)

    def step(self, x: str, op: str, y: str, z: str) -> tuple[Span, Span, Span]:
        """One solution line 'x op y = z' -> the spans of x, y and z."""
        a = self.put(x)
        self.put(f" {op} ")
        b = self.put(y)
        self.put(" = ")
        c = self.put(z)
        self.put(SEP)
        return a, b, c


def hm(minutes: int) -> str:
    """Minutes since midnight (or a duration in minutes) -> 'H:MM'."""
    return f"{minutes // 60}:{minutes % 60:02d}"


def parse_hm(s: str) -> int:
    h, m = s.split(":")
    return int(h) * 60 + int(m)


def _join(items: list[str]) -> list[str]:
    """Separators between list items: 'a', 'a and b', 'a, b and c'."""
    return ["" if i == 0 else (" and " if i == len(items) - 1 else ", ") for i in range(len(items))]


def _rng(family: str, seed: int, length: int, split: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(family.encode()), SPLITS.index(split), length, seed])


# ---------------------------------------------------------------------------
# One function per family: (rng, length) -> (writer, answer, deps); the writer
# holds problem + SEP + solution.
def _clock(rng, k):
    name = NAMES[rng.integers(len(NAMES))]
    legs = [LEGS[i] for i in rng.permutation(len(LEGS))[:k]]
    start = int(rng.integers(6 * 12, 16 * 12)) * 5  # 6:00-15:55
    mins = [int(rng.integers(1, 12)) * 5 for _ in range(k)]  # 5-55 minutes
    w = _Writer()
    w.put(f"{name} left at ")
    t_span = w.put(hm(start))
    w.put(". ")
    num = []
    for i, (leg, sep) in enumerate(zip(legs, _join(legs))):
        w.put(sep + ("The " if i == 0 else "the ") + leg + (" took " if i == 0 else " "))
        num.append(w.put(str(mins[i])))
        w.put(" minutes")
    w.put(f". When did {name} arrive?")
    w.put(SEP)
    deps, prev, cur = [], t_span, start
    for i in range(k):
        a, b, c = w.step(hm(cur), "+", hm(mins[i]), hm(cur + mins[i]))
        cur += mins[i]
        deps += [Dep(a, (prev,), "copy"), Dep(b, (num[i],), "copy"), Dep(c, (a, b), "compute")]
        prev = c
    w.put(ANSWER)
    deps.append(Dep(w.put(hm(cur)), (prev,), "copy"))
    return w, hm(cur), deps


def _duration(rng, k):
    name = NAMES[rng.integers(len(NAMES))]
    act = ACTIVITIES[rng.integers(len(ACTIVITIES))]
    t = int(rng.integers(6 * 12, 10 * 12)) * 5  # first start 6:00-9:55
    spans = []
    for i in range(k):
        if i:
            t += int(rng.integers(1, 13)) * 5  # a gap of 5-60 minutes
        d = int(rng.integers(1, 24)) * 5  # 5-115 minutes
        spans.append((t, t + d))
        t += d
    w = _Writer()
    w.put(f"{name} {act}")
    marks = []
    for i, sep in enumerate(_join(spans)):
        w.put(sep.rstrip() + " from ")
        a = w.put(hm(spans[i][0]))
        w.put(" to ")
        b = w.put(hm(spans[i][1]))
        marks.append((a, b))
    w.put(f". How long did {name} {ACTIVITY_BASE[act]} in all?")
    w.put(SEP)
    deps, results = [], []
    for (t1, t2), (a_src, b_src) in zip(spans, marks):
        b, a, c = w.step(hm(t2), "-", hm(t1), hm(t2 - t1))
        deps += [Dep(b, (b_src,), "copy"), Dep(a, (a_src,), "copy"), Dep(c, (b, a), "compute")]
        results.append((c, t2 - t1))
    prev, total = results[0]
    for c_src, d in results[1:]:
        a, b, c = w.step(hm(total), "+", hm(d), hm(total + d))
        total += d
        deps += [Dep(a, (prev,), "copy"), Dep(b, (c_src,), "copy"), Dep(c, (a, b), "compute")]
        prev = c
    w.put(ANSWER)
    deps.append(Dep(w.put(hm(total)), (prev,), "copy"))
    return w, hm(total), deps


def _weekday(rng, k):
    name = NAMES[rng.integers(len(NAMES))]
    places = [PLACES[i] for i in rng.permutation(len(PLACES))[:k]]
    day = int(rng.integers(7))
    offs = [int(rng.integers(1, 10)) for _ in range(k)]  # 1-9 days
    w = _Writer()
    w.put(f"{name} set out on ")
    d_span = w.put(DAYS[day])
    w.put(".")
    num = []
    for i, (place, sep) in enumerate(zip(places, _join(places))):
        w.put((f" {name} reached the " if i == 0 else sep + "the ") + place + " ")
        num.append(w.put(str(offs[i])))
        w.put((" day" if offs[i] == 1 else " days") + (" later" if i == 0 else " after that"))
    w.put(f". On which day did {name} reach the {places[-1]}?")
    w.put(SEP)
    deps, prev = [], d_span
    for i in range(k):
        a, b, c = w.step(DAYS[day], "+", str(offs[i]), DAYS[(day + offs[i]) % 7])
        day = (day + offs[i]) % 7
        deps += [Dep(a, (prev,), "copy"), Dep(b, (num[i],), "copy"), Dep(c, (a, b), "compute")]
        prev = c
    w.put(ANSWER)
    deps.append(Dep(w.put(DAYS[day]), (prev,), "copy"))
    return w, DAYS[day], deps


def _growth_order(rng, n_links: int) -> list[int]:
    """The links of a chain in an order in which each one touches the part
    already stated (so every statement adds one event at an end)."""
    i = int(rng.integers(n_links))
    lo, hi, order = i, i, [i]
    while len(order) < n_links:
        ends = ([lo - 1] if lo > 0 else []) + ([hi + 1] if hi < n_links - 1 else [])
        j = ends[int(rng.integers(len(ends)))]
        lo, hi = min(lo, j), max(hi, j)
        order.append(j)
    return order


def _relations(rng, n):
    events = [EVENTS[i] for i in rng.permutation(len(EVENTS))[:n]]  # in true order
    links = _growth_order(rng, n - 1)  # the order in which the relations are stated
    w = _Writer()
    stated = []  # per statement: (link, span of earlier event, span of later event, span of relation word)
    for j, i in enumerate(links):
        early, late = events[i], events[i + 1]
        w.put(("" if j == 0 else " ") + "The ")
        if rng.random() < 0.5:
            e1 = w.put(early)
            w.put(" happened ")
            r = w.put("before")
            w.put(" the ")
            e2 = w.put(late)
        else:
            e2 = w.put(late)
            w.put(" happened ")
            r = w.put("after")
            w.put(" the ")
            e1 = w.put(early)
        stated.append((i, e1, e2, r))
        w.put(".")
    first = rng.random() < 0.5
    w.put(" Which came first?" if first else " Which came last?")
    w.put(SEP)
    # One line per statement: the order so far, the statement's new event added at its end.
    deps, prev, lo, hi = [], {}, None, None
    for j, (i, e1_src, e2_src, r_src) in enumerate(stated):
        if j == 0:
            lo, hi = i, i + 1
            new = {i: e1_src, i + 1: e2_src}
        elif i < lo:
            lo, new = i, {i: e1_src}
        else:
            hi, new = i + 1, {i + 1: e2_src}
        line = {}
        for k, ev in enumerate(range(lo, hi + 1)):
            w.put(("" if k == 0 else ", ") + "the ")
            span = w.put(events[ev])
            line[ev] = span
            if ev in new:  # read from the statement; its place from the relation word
                deps += [Dep(span, (new[ev],), "copy"), Dep(span, (r_src,), "compute")]
            else:
                deps.append(Dep(span, (prev[ev],), "copy"))
        w.put(SEP)
        prev = line
    w.put(ANSWER + "the ")
    ans = lo if first else hi
    deps.append(Dep(w.put(events[ans]), (prev[ans],), "copy"))
    return w, "the " + events[ans], deps


def _timestamps(rng, n):
    events = [EVENTS[i] for i in rng.permutation(len(EVENTS))[:n]]  # in the order stated
    # One-digit hours, all different (1:00-9:55): the hour digit decides the order and names the event.
    times = [int(h) * 60 + int(rng.integers(12)) * 5 for h in rng.choice(np.arange(1, 10), size=n, replace=False)]
    w = _Writer()
    marks = []
    for j, (e, t) in enumerate(zip(events, times)):
        w.put(("" if j == 0 else " ") + "At ")
        t_span = w.put(hm(t))
        w.put(" the ")
        marks.append((w.put(e), t_span))
        w.put(" began.")
    w.put(" Put them in order.")
    w.put(SEP)
    deps, lines = [], []
    for j in sorted(range(n), key=lambda j: times[j]):
        t = w.put(hm(times[j]))
        w.put(" the ")
        e = w.put(events[j])
        w.put(SEP)
        deps += [Dep(t, (marks[j][1],), "copy"), Dep(e, (marks[j][0],), "copy")]
        lines.append((e, events[j]))
    w.put(ANSWER)
    for i, ((e_src, e), sep) in enumerate(zip(lines, [""] + [", "] * (n - 1))):
        w.put(sep + "the ")
        deps.append(Dep(w.put(e), (e_src,), "copy"))
    return w, ", ".join("the " + e for _, e in lines), deps


_MAKERS = {"clock": _clock, "duration": _duration, "weekday": _weekday, "relations": _relations,
           "timestamps": _timestamps}


def lengths(family: str, split: str = "train") -> tuple[int, ...]:
    if family not in _MAKERS:
        raise KeyError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    return (TRAIN_LENGTHS if split == "train" else LONG_LENGTHS)[family]


def make(family: str, seed: int, length: int | None = None, split: str = "train") -> Problem:
    """One problem, deterministic in (family, seed, length, split). ``length``
    None draws one of the split's chain lengths uniformly (from the seed)."""
    allowed = lengths(family, split)
    if length is None:
        length = allowed[zlib.crc32(f"{family}:{split}:{seed}".encode()) % len(allowed)]
    rng = _rng(family, seed, length, split)
    w, answer, deps = _MAKERS[family](rng, int(length))
    text = w.text()
    problem, solution = text.split(SEP, 1)
    return Problem(family, int(length), int(seed), split, problem, solution.rstrip(SEP), answer, tuple(deps))


def problem_set(families=None, limit: int = 16, seed: int = 0, split: str = "train") -> list[Problem]:
    """``limit`` held-out problems per family (all families by default), chain
    lengths drawn per problem: what an analysis runs on (``--dataset
    reasoning``). Seeds from ``HELD_OUT_SEED + 100_000 * seed``, never trained
    on. Unknown family names -> KeyError naming them."""
    families = list(FAMILIES if families is None else families)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise KeyError(f"unknown reasoning task(s) {', '.join(bad)}; valid: {', '.join(FAMILIES)}")
    base = HELD_OUT_SEED + 100_000 * int(seed)
    return [make(f, base + i, split=split) for f in families for i in range(limit)]


def problem_id(p: Problem) -> str:
    return f"{p.family}-{p.split}-{p.seed}"


def answer_of(solution: str) -> str | None:
    """The answer line's value of a (generated) solution, or None without one."""
    for line in solution.split(SEP):
        if line.startswith(ANSWER):
            return line[len(ANSWER):].strip()
    return None


def vocabulary() -> list[str]:
    """Every word, number and mark the problems use (for the tokenizer)."""
    words = NAMES + LEGS + ACTIVITIES + list(ACTIVITY_BASE.values()) + PLACES + EVENTS + DAYS
    scaffold = ("left at The the took minutes When did arrive from to How long in all set out on reached days later "
                "after that On which day reach happened before Which came first last At began Put them order "
                "Answer and")
    return words + scaffold.split() + list("0123456789") + list(":.,?+-=")


# ---------------------------------------------------------------------------
# Character spans -> token indices.
def _tokens_in(span: Span, offsets) -> list[int]:
    a, b = span
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < b and a < e]


def token_graph(problem: Problem, offsets, shift: int = 0) -> dict[int, list[int]]:
    """The dependency graph over tokens: {token index: sorted source token indices}.

    ``offsets``: per token of ``problem.text``, its (start, end) character
    offsets (a fast tokenizer's ``return_offsets_mapping=True``; special tokens
    with (0, 0) are skipped). ``shift`` is added to every index (e.g. 1 when
    the model's input starts with ``<s>`` that the offsets do not include).
    Every token of the solution is a key; scaffolding tokens (``+``, ``=``,
    spaces, newlines, 'Answer') map to []. A target token depends on every
    token of every source span."""
    offsets = [tuple(int(x) for x in o) for o in offsets]
    start = problem.solution_start
    graph: dict[int, set[int]] = {i: set() for i, (s, e) in enumerate(offsets) if e > s and s >= start}
    for d in problem.deps:
        src = {j for sp in d.sources for j in _tokens_in(sp, offsets)}
        for i in _tokens_in(d.target, offsets):
            graph.setdefault(i, set()).update(src)
    return {i + shift: sorted(j + shift for j in v) for i, v in sorted(graph.items())}
