"""Where a training run writes: a new folder per run, and the committed
checkpoint only on explicit request (both trainers, ``organism.train`` and
``organism.reasoner.train``)."""
from __future__ import annotations

from pathlib import Path


def new_run_folder(root: str, seed: int, steps: int) -> Path:
    """A folder that does not exist yet: <root>/seed<S>-steps<N>[-k]."""
    base = Path(root) / f"seed{seed}-steps{steps}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def is_same_folder(folder, committed: Path) -> bool:
    return Path(folder).expanduser().resolve() == Path(committed).resolve()


def output_folder(ap, out, replace: bool, committed: Path, root: str, seed: int, steps: int) -> Path:
    """The run's output folder from ``--out`` and ``--replace-checkpoint``,
    before anything is built: the committed checkpoint only with the flag
    (a usage error through ``ap`` otherwise), else ``--out`` or a new folder
    under ``root``. -> an absolute path."""
    if replace:
        if out is not None and not is_same_folder(out, committed):
            ap.error(f"--replace-checkpoint writes {committed}; --out {out} is another folder: give one of the two")
        return Path(committed).absolute()
    if out is not None and is_same_folder(out, committed):
        ap.error(f"--out {out} is the committed checkpoint: pass --replace-checkpoint to write over it, "
                 f"or choose another folder")
    return (Path(out) if out is not None else new_run_folder(root, seed, steps)).absolute()
