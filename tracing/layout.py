"""TokenLayout: where every part of a prompt sits in the token sequence.

Every analysis speaks in these spans, never in raw indices. Spans are
half-open ``[start, end)`` token positions of one input sequence.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    def __post_init__(self):
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad span [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start

    def range(self) -> range:
        return range(self.start, self.end)

    def __contains__(self, pos: int) -> bool:
        return self.start <= pos < self.end


@dataclass
class TokenLayout:
    """Spans of one multiple-choice prompt.

    frames:       one span per input frame, in frame order. On Qwen2-VL two
                  consecutive frames share one temporal patch, hence one span
                  (``frames_per_group`` = 2); ``frame_groups`` lists the
                  distinct spans.
    frame_grid:   (rows, cols) of the token grid inside each frame span.
    video:        all video tokens, including separators such as OneVision's
                  trailing newline token (``extra['newline']``).
    question:     the question including its options (Map the Flow's
                  "question"); ``question_text`` is the part before the options.
    trailing:     what follows the options up to and including the last position.
    option_ids:   vocabulary id of each option letter (the answer token).
    """

    n_tokens: int
    system: Span
    video: Span
    frames: list[Span]
    frame_grid: tuple[int, int]
    question: Span
    question_text: Span
    options: list[Span]
    trailing: Span
    last: int
    option_ids: list[int]
    frames_per_group: int = 1
    answer: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def frame_groups(self) -> list[Span]:
        out: list[Span] = []
        for s in self.frames:
            if not out or out[-1] != s:
                out.append(s)
        return out

    @property
    def video_token_positions(self) -> list[int]:
        """Positions of the video tokens, in order: every frame group's, then
        separators such as OneVision's newline (the rows the LLM reads from the projector)."""
        pos = [p for s in self.frame_groups for p in s.range()]
        return pos + ([self.extra["newline"]] if "newline" in self.extra else [])

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def last_span(self) -> Span:
        return Span(self.last, self.last + 1)

    def span(self, name: str) -> list[Span]:
        """Spans by name: 'system', 'video', 'question', 'question_text',
        'options', 'trailing', 'last', 'frame:<i>', 'option:<i>', 'true_option',
        'false_options'."""
        if name in ("system", "video", "question", "question_text", "trailing"):
            return [getattr(self, name)]
        if name == "last":
            return [self.last_span]
        if name == "options":
            return list(self.options)
        if name.startswith("frame:"):
            return [self.frames[int(name.split(":")[1])]]
        if name.startswith("option:"):
            return [self.options[int(name.split(":")[1])]]
        if name in ("true_option", "false_options"):
            if self.answer is None:
                raise ValueError("this layout has no answer index: true/false option spans are undefined")
            if name == "true_option":
                return [self.options[self.answer]]
            return [s for i, s in enumerate(self.options) if i != self.answer]
        raise KeyError(f"unknown span name {name!r}")

    def positions(self, name: str) -> list[int]:
        return [p for s in self.span(name) for p in s.range()]

    # -- serialisation (the HDF5 store keeps layouts as JSON) ---------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        def sp(x):
            return Span(**x) if isinstance(x, dict) else Span(*x)

        d = dict(d)
        for k in ("system", "video", "question", "question_text", "trailing"):
            d[k] = sp(d[k])
        d["frames"] = [sp(x) for x in d["frames"]]
        d["options"] = [sp(x) for x in d["options"]]
        d["frame_grid"] = tuple(d["frame_grid"])
        return cls(**d)
