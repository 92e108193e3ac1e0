"""The reasoner's word problems (tasks/reasoning.py): answers and every step
against datetime / timedelta arithmetic, a topological sort and a sort of
parsed times; determinism and the held-out (longer) chains. The model trained
on them is issue 12's reasoner."""
import re
from datetime import date, datetime, timedelta
from graphlib import TopologicalSorter

import pytest

from tasks.reasoning import (
    FAMILIES, LONG_LENGTHS, TRAIN_LENGTHS, answer_of, lengths, make)

# Every family at every length of both splits, a few seeds each.
CASES = [(f, L, sp, s) for f in FAMILIES for sp in ("train", "long") for L in lengths(f, sp) for s in range(12)]
DAY0 = date(2024, 1, 1)  # a Monday
TIME = r"\d{1,2}:\d\d"


def clock(s: str) -> datetime:
    return datetime.strptime(s, "%H:%M")


def fmt(d: timedelta) -> str:
    m = int(d.total_seconds()) // 60
    return f"{m // 60}:{m % 60:02d}"


def weekday(name: str) -> date:
    return next(DAY0 + timedelta(days=i) for i in range(7) if (DAY0 + timedelta(days=i)).strftime("%A") == name)


# -- answers, by independent computation -----------------------------------------
def expected_answer(p) -> str:
    q = p.problem
    if p.family == "clock":
        start = clock(re.search(rf"left at ({TIME})\.", q).group(1))
        mins = [int(m) for m in re.findall(r"(\d+) minutes", q)]
        return (start + timedelta(minutes=sum(mins))).strftime("%-H:%M")
    if p.family == "duration":
        pairs = re.findall(rf"from ({TIME}) to ({TIME})", q)
        return fmt(sum((clock(b) - clock(a) for a, b in pairs), timedelta()))
    if p.family == "weekday":
        start = weekday(re.search(r"set out on (\w+)\.", q).group(1))
        days = [int(d) for d in re.findall(r"(\d+) days?", q)]
        return (start + timedelta(days=sum(days))).strftime("%A")
    if p.family == "relations":
        ts = TopologicalSorter()
        for a, rel, b in re.findall(r"The (\w+) happened (before|after) the (\w+)\.", q):
            early, late = (a, b) if rel == "before" else (b, a)
            ts.add(late, early)
        order = list(ts.static_order())
        return "the " + (order[0] if q.endswith("first?") else order[-1])
    if p.family == "timestamps":
        ev = re.findall(rf"At ({TIME}) the (\w+) began\.", q)
        return ", ".join("the " + e for _, e in sorted(ev, key=lambda x: clock(x[0])))
    raise KeyError(p.family)


def expected_chain(problem: str) -> list[str]:
    ts = TopologicalSorter()
    for a, rel, b in re.findall(r"The (\w+) happened (before|after) the (\w+)\.", problem):
        ts.add(*((b, a) if rel == "before" else (a, b)))
    return list(ts.static_order())


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_are_right(family):
    for f, L, sp, s in [c for c in CASES if c[0] == family]:
        p = make(f, s, L, sp)
        assert p.length == L and p.answer == expected_answer(p), p.text
        assert answer_of(p.solution) == p.answer and p.solution.endswith("Answer: " + p.answer)


def test_relation_chains_are_unique():
    # The relations pin down one order, and each one names an event already named (growth order).
    for f, L, sp, s in [c for c in CASES if c[0] == "relations"]:
        rel = re.findall(r"The (\w+) happened (before|after) the (\w+)\.", make(f, s, L, sp).problem)
        assert len(rel) == L - 1 and len({w for a, _, b in rel for w in (a, b)}) == L
        for k in range(1, len(rel)):
            assert {rel[k][0], rel[k][2]} & {w for a, _, b in rel[:k] for w in (a, b)}


def test_every_step_is_right():
    for f, L, sp, s in CASES:
        p = make(f, s, L, sp)
        for line in p.steps:
            if f in ("clock", "duration"):
                a, op, b, c = re.fullmatch(rf"({TIME}) ([+-]) ({TIME}) = ({TIME})", line).groups()
                if op == "+":
                    want = clock(a) + (clock(b) - clock("0:00")) if f == "clock" else \
                        (clock(a) - clock("0:00")) + (clock(b) - clock("0:00"))
                    got = want.strftime("%-H:%M") if isinstance(want, datetime) else fmt(want)
                else:
                    got = fmt(clock(a) - clock(b))
                assert got == c, (line, p.text)
            elif f == "weekday":
                a, n, c = re.fullmatch(r"(\w+) \+ (\d+) = (\w+)", line).groups()
                assert (weekday(a) + timedelta(days=int(n))).strftime("%A") == c, line
        if f == "timestamps":
            times = [clock(re.match(TIME, line).group(0)) for line in p.steps]
            assert times == sorted(times) and len(times) == L
            assert len({t.hour for t in times}) == L  # one hour per event: the hour orders and names it
        if f == "relations":
            chain = expected_chain(p.problem)
            lines = [re.findall(r"the (\w+)", line) for line in p.steps]
            assert len(lines) == L - 1 and lines[-1] == chain
            for k, ev in enumerate(lines):  # a contiguous piece of the chain, one event longer each line
                i = chain.index(ev[0])
                assert chain[i : i + len(ev)] == ev and len(ev) == k + 2
                assert k == 0 or ev[1:] == lines[k - 1] or ev[:-1] == lines[k - 1]


def test_determinism_and_held_out_lengths():
    for f in FAMILIES:
        assert make(f, 5) == make(f, 5) and make(f, 5, split="long") == make(f, 5, split="long")
        assert len({make(f, s).problem for s in range(20)}) >= 18
        assert min(LONG_LENGTHS[f]) > max(TRAIN_LENGTHS[f])
        assert {make(f, s, split="long").length for s in range(40)} == set(LONG_LENGTHS[f])
        assert max(len(make(f, s, L).steps) for s in range(3) for L in TRAIN_LENGTHS[f]) <= 4
