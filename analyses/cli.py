"""Arguments every analysis CLI shares, and what they load."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
import json
import os
import sys

from tasks.datasets import DATASETS, load_dataset
from tracing.registry import available, load_model, pixel_budget


REPO = Path(__file__).resolve().parent.parent


class HelpFormatter(argparse.HelpFormatter):
    """Every CLI's --help: a flag's default is appended as "(default: X)" unless
    its help already says what the default is, or there is none to show (None,
    an on/off switch, a suppressed default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.nargs == 0
                or any(action.default is x for x in (None, False, argparse.SUPPRESS))):
            return text
        return text + " (default: %(default)s)"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter with the description printed as written (a module docstring)."""


# ---------------------------------------------------------------- paths the user typed

def caller_dir() -> Path | None:
    """The folder the user ran ``./with-venv`` from, when it matters: with-venv
    changes into the repository before it starts the command, and exports the
    caller's folder and its own process id (the command keeps it: exec). None
    when this process is not that command, or has changed folder since; then
    relative paths are relative to the working directory, as usual."""
    where, pid = os.environ.get("CHRONOLENS_CALLER_DIR"), os.environ.get("CHRONOLENS_CALLER_PID")
    if not where or pid != str(os.getpid()):
        return None
    try:
        if Path.cwd().resolve() != REPO:
            return None
    except OSError:
        return None
    return Path(where)


def user_path(text: str | None) -> str | None:
    """A path given on the command line, relative to where the user stands (see
    ``caller_dir``); an absolute path, or a relative one when the user stands
    where the process runs, is returned as given."""
    if text is None:
        return None
    path = Path(text).expanduser()
    base = caller_dir()
    if path.is_absolute() or base is None or base.resolve() == Path.cwd().resolve():
        return str(path) if str(text).startswith("~") else text
    return str(base / path)


def user_model(text: str) -> str:
    """--model: a registry name or hub id as given; a checkpoint folder relative
    to where the user stands (``user_path``) when there is one."""
    if text in available():
        return text
    found = user_path(text)
    return found if found != text and Path(found).is_dir() else text


PATH_FLAGS = ("--model", "--out", "--figures", "--data-dir")


def worker_argv(argv: list[str], a) -> list[str]:
    """``argv`` for a process that parses it again (a Ray worker) with the path
    flags as this process resolved them (``user_path``): the worker does not
    know where the user stood."""
    extra = []
    for flag in PATH_FLAGS:
        value = getattr(a, flag[2:].replace("-", "_"), None)
        if value is not None:
            extra.append(f"{flag}={value}")
    return list(argv) + extra


# ---------------------------------------------------------------- library modules run as commands

def not_a_command(module: str, what: str, use: list[tuple[str, str]], argv: list[str] | None = None) -> int:
    """``python -m <module>`` of a library module: ``--help`` says what it is and
    which commands run it (exit 0); anything else says so on stderr, exit 2.
    use: [(command, what it does)]."""
    import textwrap

    commands = "\n".join(f"  {cmd}\n" + textwrap.fill(why, 79, initial_indent=" " * 6, subsequent_indent=" " * 6)
                         for cmd, why in use)
    ap = argparse.ArgumentParser(prog=f"python -m {module}", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description=textwrap.fill(f"{module} is a library module, not a command: {what}", 79),
                                 epilog=f"run instead:\n{commands}")
    ap.parse_known_args(argv)  # --help prints the above and exits 0
    print(f"{module} is a library module, not a command; run instead:\n{commands}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------- the shared flags

def common_parser(prog: str, description: str, frames: int = 8, limit: int = 16,
                  text_datasets: bool = False) -> argparse.ArgumentParser:
    """The shared flags. ``text_datasets``: the analysis also takes
    ``--dataset reasoning`` (tasks/reasoning.py word problems, text models).
    Relative --out, --figures, --data-dir and --model folders are relative to
    where the user stands (``user_path``, ``user_model``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    analysis = prog.rsplit(".", 1)[-1] if prog.startswith("python -m analyses.") else "<analysis>"
    ap.add_argument("--model", default="organism", type=user_model,
                    help=f"registry name ({', '.join(available())}), a hub id, or a local checkpoint folder")
    text = " or reasoning (temporal word problems with their solutions, for text models; --tasks picks families " \
           "and --limit counts per family)" if text_datasets else ""
    choices = sorted(DATASETS) + (["reasoning"] if text_datasets else [])
    ap.add_argument("--dataset", default="synthetic", choices=choices,
                    help=f"synthetic (rendered here), or a local copy of tomato / tvbench (see --data-dir){text}")
    ap.add_argument("--data-dir", default=None, type=user_path,
                    help="folder holding the benchmark's annotations and videos (tomato / tvbench)")
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: the dataset's own set)")
    ap.add_argument("--frames", type=int, default=frames, help="frames sampled uniformly from each video")
    ap.add_argument("--limit", type=_limit, default=limit,
                    help="samples per task (synthetic) or in total (benchmarks); 'all' for every one")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples and of any randomness")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--device-map", default=None, help="'auto' spreads a large model over the visible GPUs")
    ap.add_argument("--video-pixels", default=None, type=pixel_budget, metavar="MIN,MAX",
                    help="Qwen families: pixels per frame after resizing, e.g. 100352,602112 (default: the "
                         "checkpoint's video processor, else Hugging Face's video defaults 128*28*28,768*28*28)")
    ap.add_argument("--out", default=None, type=user_path,
                    help=f"HDF5 output file (default: cache/{analysis}-<model>-<dataset>.h5, in the repository's "
                         f"cache/ when run through with-venv)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out written with another configuration (without it such a file is "
                         "refused, and one of this configuration is resumed)")
    ap.add_argument("--figures", default=None, type=user_path,
                    help="folder for the figures, PNG and PDF (default: next to --out, <out stem>_figures)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bars (the run's, and transformers' while it loads the weights)")
    ap.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    ap.add_argument("--workers", type=int, default=0,
                    help="run the samples on N Ray workers (a local Ray instance started for the run; each worker "
                         "loads the model once); 0: in this process, without Ray")
    ap.add_argument("--ray-address", default=None,
                    help="join an existing Ray cluster (e.g. 'auto' or 'HEAD_IP:6379', after `ray start --head` "
                         "on the head node and `ray start --address ...` on the others) instead of starting one")
    return ap


# Arguments that change how a run is shown or where it goes, not its numbers:
# left out of the configuration a results file is identified by.
PRESENTATION = ("out", "overwrite", "figures", "no_progress", "debug", "workers", "ray_address")


def figures_dir(a, out) -> Path:
    """The figures' folder, absolute (the "wrote" lines show it)."""
    out = Path(out).absolute()
    return Path(a.figures).expanduser().absolute() if a.figures else out.with_name(out.stem + "_figures")


def _limit(text: str) -> int | None:
    return None if text == "all" else int(text)


def check_flags(a) -> None:
    """The shared flags' values, before anything is loaded: UsageError naming the flag."""
    from analyses.run import UsageError

    if getattr(a, "limit", None) is not None and a.limit < 1:
        raise UsageError(f"--limit {a.limit}: must be >= 1, or 'all'")
    if getattr(a, "frames", 1) < 1:
        raise UsageError(f"--frames {a.frames}: must be >= 1")
    if getattr(a, "workers", 0) < 0:
        raise UsageError(f"--workers {a.workers}: must be >= 0")
    if str(getattr(a, "device", "cpu")).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {a.device}: this torch has no CUDA device (torch {torch.__version__}); "
                             f"use --device cpu")


def preflight(analysis: str, a) -> "Path":
    """What can be checked before the data and the model are loaded, in that
    order: the output path (analyses.run.check_out), then the model's name
    (an unknown name fails in milliseconds). -> the absolute output path."""
    from analyses.run import check_out
    from tracing.registry import resolve

    check_flags(a)
    out = check_out(default_out(analysis, a))
    resolve(a.model)
    return out


def load_data(a, n_frames: int | None = None, **kw):
    """The dataset the arguments name; bad items are reported and skipped."""
    tasks = a.tasks.split(",") if a.tasks else None
    res = load_dataset(a.dataset, data_dir=a.data_dir, n_frames=n_frames or a.frames, limit=a.limit,
                       tasks=tasks, seed=a.seed, **kw)
    for item, path, why in res.problems:
        print(f"skipped {item} ({path}): {why}", file=sys.stderr)
    if not res.samples:
        raise SystemExit(f"no usable samples in dataset {a.dataset!r} (data dir {a.data_dir!r})")
    note = short_video_note(res.samples, n_frames or a.frames)
    if note:
        print(note, file=sys.stderr)
    return res


def short_video_note(samples, n_frames: int) -> str | None:
    """One line for a run whose videos have fewer frames than were asked for
    (their frames repeat, as TOMATO's np.linspace sampling does), or None."""
    short = [s for s in samples if s.meta.get("distinct_frames", n_frames) < n_frames]
    if not short:
        return None
    fewest = min(s.meta["distinct_frames"] for s in short)
    return (f"note: {len(short)} of {len(samples)} videos have fewer than --frames {n_frames} frames (the fewest "
            f"{fewest}): their frames repeat, np.linspace(0, n-1, {n_frames}, dtype=int) as TOMATO samples them")


def load_from_args(a, attn: str = "sdpa"):
    with progress_bars(not getattr(a, "no_progress", False)):
        return load_model(a.model, device=a.device, dtype=a.dtype, attn=attn, device_map=a.device_map,
                          video_pixels=a.video_pixels)


@contextmanager
def progress_bars(show: bool = True):
    """With ``show`` False, transformers' and huggingface_hub's own progress bars
    (the "Loading weights" bar of ``from_pretrained``, downloads) are off inside
    the block, and back as they were after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if show or not was:
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def default_out(analysis: str, a) -> str:
    """--out, or cache/<analysis>-<model>-<dataset>.h5 (relative to the
    working directory: the repository under with-venv)."""
    return a.out or f"cache/{analysis}-{a.model.strip('/').replace('/', '_')}-{a.dataset}.h5"


def run_config(a, **extra) -> dict:
    """The run's configuration as recorded in the output file."""
    d = {k: v for k, v in vars(a).items() if k not in PRESENTATION}
    if d.get("video_pixels") is None:  # recorded only when set: files written before the flag still resume
        d.pop("video_pixels", None)
    d.update(extra)
    return json.loads(json.dumps(d, default=str))
