"""The one data type every part of chronolens speaks: a multiple-choice video question."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"


@dataclass
class Sample:
    """One multiple-choice question about a video.

    frames:   uint8 array [T, H, W, 3] (RGB). May be None for a loader that
              defers decoding (see `video_path`); call `tasks.video.load_frames`.
    question: the question text, without options.
    options:  option texts in display order; the answer letter of option i is LETTERS[i].
    answer:   index into `options` of the correct option.
    task:     task name (e.g. "direction", "static_color", or a benchmark's type).
    latents:  the renderer's latent parameters (JSON-serialisable) or benchmark metadata.
    captions: one text caption per frame (the T3 text form), or None.
    """

    id: str
    task: str
    question: str
    options: list[str]
    answer: int
    frames: np.ndarray | None = None
    latents: dict[str, Any] = field(default_factory=dict)
    captions: list[str] | None = None
    video_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def n_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])
