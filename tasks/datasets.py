"""One entry point for every dataset: `load_dataset(name, ...)` -> LoadResult.

The benchmark loaders live in their own modules (`tasks.tomato`,
`tasks.tvbench`) and are imported lazily here, because they import
`LoadResult` from this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tasks.types import LETTERS, Sample

DATASETS = ("synthetic", "tomato", "tvbench")


@dataclass
class LoadResult:
    """What a loader read.

    samples:  the questions that loaded.
    problems: (item_id, path, reason) for every item or file that was skipped;
              item_id is "*" when a whole annotation file was unusable.
    """

    samples: list[Sample]
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


class AnnotationError(ValueError):
    """A malformed annotation file or entry; the message names the file and the item id."""

    def __init__(self, path: str, item_id: str, reason: str):
        self.path, self.item_id, self.reason = str(path), str(item_id), reason
        where = f"{self.path}" if item_id == "*" else f"{self.path} [item {item_id!r}]"
        super().__init__(f"{where}: {reason}")


def check_options(options: object, path: str, item_id: str, field_name: str = "options") -> list[str]:
    """A list of 2..len(LETTERS) strings, or AnnotationError."""
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise AnnotationError(path, item_id, f"{field_name!r} must be a list of strings, got {options!r}")
    if not 2 <= len(options) <= len(LETTERS):
        raise AnnotationError(path, item_id, f"{field_name!r} has {len(options)} entries; "
                                             f"expected 2..{len(LETTERS)}")
    return list(options)


def load_dataset(name: str, data_dir: str | None = None, n_frames: int | None = 8, limit: int | None = None,
                 tasks: list[str] | None = None, seed: int = 0, size: int | None = None,
                 decode: bool = True) -> LoadResult:
    """Load a dataset by name: "synthetic", "tomato" or "tvbench".

    synthetic: `limit` samples per task (default 100), rendered at size x size
               (None: 32) with n_frames frames (None: each task's default);
               data_dir is unused.
    tomato / tvbench: read from data_dir (required); `tasks` selects reasoning types /
               tasks; `limit` keeps the first `limit` samples overall; frames are
               resized to size x size (None keeps the video's own size);
               n_frames None uses the benchmark's own count (16 / 8).
    """
    if name == "synthetic":
        from tasks.synthetic import make_dataset

        return LoadResult(make_dataset(tasks, 100 if limit is None else int(limit), seed=seed,
                                       n_frames=n_frames, size=32 if size is None else size))
    if name in ("tomato", "tvbench"):
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs data_dir (the folder of a local copy of the benchmark)")
        if name == "tomato":
            from tasks.tomato import load_tomato

            res = load_tomato(data_dir, reasoning_types=tasks, n_frames=16 if n_frames is None else n_frames,
                              decode=decode, size=size, limit=limit)
        else:
            from tasks.tvbench import load_tvbench

            res = load_tvbench(data_dir, tasks=tasks, n_frames=8 if n_frames is None else n_frames,
                               decode=decode, size=size, limit=limit)
        return res
    raise ValueError(f"unknown dataset {name!r}; valid names: {list(DATASETS)}")
