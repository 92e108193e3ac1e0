"""Edge sets of an attention knockout: which (query, key) entries are cut.

"A -/-> B": the queries in the target spans B may not read the keys in the
source spans A. An ``EdgeSet`` is a named, serialisable set of (source,
target) position ranges resolved against a prompt's ``TokenLayout``;
``edges(name, layout)`` builds the named ones of ``EDGE_SETS`` (cross-frame,
video -> question, ...) or parses a string such as ``"video->last"`` or
``"frame:0->frame:3"``. ``DenseEdges``: any set of (query, key) entries as a
boolean matrix (e.g. random edges). tracing/knockout.py applies them.

Generation rule: spans are the prompt's, so tokens generated after it
(positions >= ``layout.n_tokens``) are no target of any span, except where an
edge set names the open-ended span ``generated`` (e.g. ``"video->generated"``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import torch

from .layout import TokenLayout

# A position range [start, end); end None = open-ended (to the end of the sequence, generated tokens included).
Range = tuple[int, "int | None"]

GENERATED = "generated"


@dataclass(frozen=True)
class EdgeSet:
    """Attention edges to cut, in token positions of one layout.

    name:  a label (the registry name or the parsed string).
    pairs: ((src_start, src_end), (tgt_start, tgt_end)) ranges: queries in the
           target range may not attend to keys in the source range. An end of
           None is open-ended.
    """

    name: str
    pairs: tuple[tuple[Range, Range], ...]

    def __post_init__(self):
        for src, tgt in self.pairs:
            for r in (src, tgt):
                if len(r) != 2 or r[0] < 0 or (r[1] is not None and r[1] < r[0]):
                    raise ValueError(f"EdgeSet {self.name!r}: bad range {r}")

    def __or__(self, other: "EdgeSet") -> "EdgeSet":
        return EdgeSet(f"{self.name}+{other.name}", self.pairs + other.pairs)

    def blocked(self, q_start: int, q_end: int, k_end: int, device=None) -> torch.Tensor:
        """bool [q_end - q_start, k_end]: True where query position q_start + i
        may not read key position j (causality not applied here)."""
        out = torch.zeros(q_end - q_start, k_end, dtype=torch.bool, device=device)
        for (s0, s1), (t0, t1) in self.pairs:
            s1 = k_end if s1 is None else min(s1, k_end)
            t1 = q_end if t1 is None else min(t1, q_end)
            t0 = max(t0, q_start)
            if s0 < s1 and t0 < t1:
                out[t0 - q_start : t1 - q_start, s0:s1] = True
        return out

    def first_query(self, n: int) -> int | None:
        """The first position < n whose attention changes: a target query with
        a blocked key at or before it (a key after it is masked anyway).
        None when the edge set blocks nothing that causality allows."""
        firsts = []
        for (s0, s1), (t0, t1) in self.pairs:
            q = max(t0, s0)  # a target t reads source keys only from t >= s0 on
            if (s1 is None or s0 < s1) and q < (n if t1 is None else min(t1, n)):
                firsts.append(q)
        return min(firsts) if firsts else None

    def to_dict(self) -> dict:
        return {"name": self.name, "pairs": [[list(s), list(t)] for s, t in self.pairs]}

    @classmethod
    def from_dict(cls, d: dict) -> "EdgeSet":
        return cls(d["name"], tuple((tuple(s), tuple(t)) for s, t in d["pairs"]))


class DenseEdges:
    """Arbitrary attention edges to cut, as a boolean matrix: ``matrix[q, k]``
    True = query q may not read key k. For edge sets that no span pairs
    describe (the random-edge control of Map the Flow's effective pathways).

    name:   a label.
    matrix: bool [T, T] over prompt positions; entries above the diagonal
            are dropped (causality masks them anyway). Positions >= T (e.g.
            generated tokens) are no target and no source.
    Equality compares the name and the matrix.
    """

    def __init__(self, name: str, matrix):
        m = torch.as_tensor(matrix, dtype=torch.bool, device="cpu")
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"DenseEdges {name!r}: matrix must be square [T, T], got {tuple(m.shape)}")
        self.name = name
        self.matrix = m.tril()
        self._key = (name, self.matrix.shape[0], hashlib.sha1(self.matrix.numpy().tobytes()).digest())

    def __eq__(self, other) -> bool:
        return (isinstance(other, DenseEdges) and self._key == other._key
                and bool(torch.equal(self.matrix, other.matrix)))

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"DenseEdges({self.name!r}, T={self.matrix.shape[0]}, blocked={self.count()})"

    def count(self) -> int:
        """Blocked causal entries."""
        return int(self.matrix.sum())

    def blocked(self, q_start: int, q_end: int, k_end: int, device=None) -> torch.Tensor:
        """As ``EdgeSet.blocked``: bool [q_end - q_start, k_end]."""
        out = torch.zeros(q_end - q_start, k_end, dtype=torch.bool)
        T = self.matrix.shape[0]
        a, b, kb = min(q_start, T), min(q_end, T), min(k_end, T)
        if a < b and kb > 0:
            out[a - q_start : b - q_start, :kb] = self.matrix[a:b, :kb]
        return out.to(device)

    def first_query(self, n: int) -> int | None:
        """As ``EdgeSet.first_query``: the first query < n with a blocked key."""
        rows = torch.nonzero(self.matrix[:n].any(1))
        return int(rows[0, 0]) if len(rows) else None

    def to_dict(self) -> dict:
        q, k = torch.nonzero(self.matrix, as_tuple=True)
        return {"name": self.name, "size": int(self.matrix.shape[0]), "entries": [q.tolist(), k.tolist()]}

    @classmethod
    def from_dict(cls, d: dict) -> "DenseEdges":
        m = torch.zeros(d["size"], d["size"], dtype=torch.bool)
        q, k = d["entries"]
        m[torch.tensor(q, dtype=torch.long), torch.tensor(k, dtype=torch.long)] = True
        return cls(d["name"], m)


def edges_from_dict(d: dict) -> "EdgeSet | DenseEdges":
    """``to_dict`` of an EdgeSet or a DenseEdges -> the object."""
    return DenseEdges.from_dict(d) if "entries" in d else EdgeSet.from_dict(d)


def union_blocked(edge_sets, q_start: int, q_end: int, k_end: int, device=None) -> torch.Tensor:
    """bool [q_end - q_start, k_end]: blocked by any of ``edge_sets``."""
    out = torch.zeros(q_end - q_start, k_end, dtype=torch.bool, device=device)
    for es in edge_sets:
        out |= es.blocked(q_start, q_end, k_end, device=device)
    return out


def _ranges(layout: TokenLayout, spec: str) -> list[Range]:
    """'video' / 'frame:2' / 'question,last' -> position ranges."""
    out: list[Range] = []
    for name in (s.strip() for s in spec.split(",")):
        if name == GENERATED:
            out.append((layout.n_tokens, None))
            continue
        try:
            spans = layout.span(name)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"edge spec: unknown or unavailable span {name!r} ({e})") from None
        out += [(s.start, s.end) for s in spans if len(s)]
    return out


def from_pairs(name: str, layout: TokenLayout, pairs: Iterable[tuple[str, str]]) -> EdgeSet:
    """Span-name pairs ``[("video", "question"), ...]`` -> EdgeSet (every
    source range paired with every target range)."""
    out = []
    for src, tgt in pairs:
        out += [(s, t) for s in _ranges(layout, src) for t in _ranges(layout, tgt)]
    return EdgeSet(name, tuple(out))


def _cross_frame(layout: TokenLayout) -> EdgeSet:
    # Frame groups, not frames: on Qwen2-VL two frames share one temporal patch
    # (one span), and attention inside a group is attention within a frame.
    groups = layout.frame_groups
    pairs = tuple(((g.start, g.end), (f.start, f.end)) for i, f in enumerate(groups) for g in groups[:i])
    return EdgeSet("cross_frame", pairs)


# Map the Flow's span-to-span edge types: name -> (source span, target span).
SPAN_EDGES: dict[str, tuple[str, str]] = {
    "video_question": ("video", "question"),  # the question includes the options
    "video_last": ("video", "last"),
    "question_last": ("question", "last"),
    "last_last": ("last", "last"),  # the diagonal entry of the last position
    "question_text_last": ("question_text", "last"),
    "true_option_last": ("true_option", "last"),
    "false_options_last": ("false_options", "last"),
    "video_question_text": ("video", "question_text"),
    "question_text_true_option": ("question_text", "true_option"),
    "video_true_option": ("video", "true_option"),
}


def _span_edge(name: str, layout: TokenLayout) -> EdgeSet:
    return from_pairs(name, layout, [SPAN_EDGES[name]])


# The named edge sets: name -> (layout -> EdgeSet). Add an entry to add one.
EDGE_SETS: dict[str, Callable[[TokenLayout], EdgeSet]] = {
    "cross_frame": _cross_frame,
    **{name: partial(_span_edge, name) for name in SPAN_EDGES},
}


def edges(name: str, layout: TokenLayout) -> EdgeSet:
    """A named edge set (``EDGE_SETS``) or a string of span pairs:
    ``"video->last"``, ``"frame:0->frame:3"``, ``"video->question,last"``
    (commas: several spans), ``"video->question; question->last"``
    (semicolons: several pairs). Span names are those of
    ``TokenLayout.span`` plus ``generated`` (tokens after the prompt)."""
    if name in EDGE_SETS:
        return EDGE_SETS[name](layout)
    if "->" not in name:
        raise ValueError(f"edge set {name!r}: not one of {sorted(EDGE_SETS)} and not of the form 'source->target'")
    pairs = []
    for part in name.split(";"):
        if part.count("->") != 1:
            raise ValueError(f"edge set {name!r}: each ';'-separated part needs exactly one '->', got {part!r}")
        src, tgt = (s.strip() for s in part.split("->"))
        pairs.append((src, tgt))
    return from_pairs(name, layout, pairs)


