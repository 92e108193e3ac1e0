"""The run engine: what every analysis (and capture) shares, written once.

An analysis declares itself as a ``Declaration``: its configuration (what
changes results), its units (one per sample) and a per-unit function that
returns arrays; optionally a reduction from the stored per-unit arrays to
results. ``run`` does the rest:

- the output's identity (model fingerprint, dataset, configuration and the
  unit list; never outputs): a file of another run is refused with one line
  naming the file and the differing settings, and left untouched;
- checks before any compute (``check_out``): a parent that is a file, a
  folder that cannot be written, an existing file chronolens did not write
  (never replaced, even with --overwrite);
- one writer at a time (a lock beside the output);
- per-unit resume (the store's completion record: a killed run redoes only
  the unit it was writing);
- ``--overwrite``: the new run is written beside the old file and swapped in
  with one atomic rename when it completes, so a killed run leaves the old
  file as it was;
- progress bars, and the record of skipped bad units (stored in the file,
  summarised at the end).

``cli_boundary`` is the one error boundary of every CLI: a known error is one
line on stderr (exit 2 for usage errors, 1 for the rest), ``--debug`` shows
the traceback.
"""
from __future__ import annotations

import fcntl
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


class RunError(Exception):
    """A known problem with a run (bad file, mismatched output, a second writer): one line, exit 1."""

    exit_code = 1


class UsageError(RunError):
    """A bad flag value or combination: exit 2, as argparse does."""

    exit_code = 2


class SkipUnit(Exception):
    """Raised by a per-unit function for a bad item (a corrupt video, ...): the
    unit is recorded as skipped with the message, and the run goes on."""


@dataclass
class Declaration:
    """An analysis, as the engine runs it.

    kind:     the analysis name ('capture', 'lens', ...), recorded in the file.
    config:   everything that changes results (presentation flags excluded).
    units:    ``tracing.store.SampleMeta`` per unit, in order (id, task, gold: the
              ground truth, -1 where none; predicted -1: filled per unit, below).
    compute:  unit index -> (arrays {name: ndarray}, layout dict, meta dict); raise
              SkipUnit for a bad item.
    shapes:   {name: (max shape, dtype)} when known before the first unit, else None
              (then the first computed unit fixes them).
    float16:  store floating arrays as float16.
    predicted: the name of the per-unit array holding the model's answer (an
              option index), copied into /samples/predicted when the unit has
              exactly one value there (a unit with none, or several, such as
              tomato's one per condition, leaves -1); None: no such array.
    """

    kind: str
    config: dict
    units: list
    compute: Callable[[int], tuple[dict, dict, dict]]
    shapes: dict | None = None
    float16: bool = False
    order: list[int] | None = None  # units to compute first (e.g. the largest, which fixes shapes)
    static: dict | None = None  # {name: (array, attrs)} results that need no unit (a vocabulary, word lists)
    max_json_bytes: int = 16384  # per unit, for its layout and meta
    describe: str = ""
    predicted: str | None = "pred"  # flow and lens store it as 'pred' [1]

    def identity_config(self) -> dict:
        return {"analysis": self.kind, **self.config}


@dataclass
class Prepared:
    """What an analysis' ``prepare(argv)`` builds from its CLI arguments, in the
    driver and in every Ray worker alike."""

    lm: object
    decl: Declaration
    dataset: str
    args: object = None
    out: Path | None = None


def engine_options(a, module: str, argv: list[str]) -> dict:
    """The engine's keyword arguments from the shared CLI flags. The workers
    parse ``argv`` again, with the paths as this process resolved them."""
    from analyses.cli import worker_argv

    # one GPU per actor when the model runs on CUDA (Ray then shows each actor its own device)
    gpus = 1 if str(a.device).startswith("cuda") and not a.device_map else 0
    return dict(overwrite=a.overwrite, progress=not a.no_progress, workers=a.workers, ray_address=a.ray_address,
                job=(module, worker_argv(argv, a)), gpus_per_worker=gpus)


@dataclass
class Outcome:
    path: Path
    computed: int
    resumed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- the output path

def check_out(out: str | Path) -> Path:
    """Refuse, before any compute, an output path that cannot work: its parent is
    a file or not writable, it is a folder, or it is an existing file that
    chronolens did not write (never replaced, even with ``overwrite``). A
    missing parent folder is created. -> the absolute path."""
    from tracing.store import StoreError, _open_h5, _read_identity

    out = Path(out).expanduser().absolute()
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"--out {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunError(f"--out {out}: folder {parent} is not writable")
            break
    if out.is_dir():
        raise RunError(f"--out {out}: is a folder; give a file name ending in .h5")
    if out.exists():
        try:
            with _open_h5(out) as f:
                _read_identity(f, out)
        except (StoreError, OSError, KeyError) as e:
            raise RunError(f"--out {out}: an existing file that chronolens did not write ({e}); "
                           f"it is never replaced: choose another --out") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


class _Lock:
    """An exclusive lock beside the output: a second run writing the same file is refused at once."""

    def __init__(self, out: Path):
        self.out, self.path = out, out.with_name(f".{out.name}.lock")

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RunError(f"{self.out}: another run is writing it (lock {self.path}); wait for it to "
                           f"finish or choose another --out") from None
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def beside(out: Path) -> Path:
    """Where an --overwrite run writes until it completes."""
    return out.with_name(out.name + ".next")


def _mismatch(path: Path, decl: Declaration, model: str, fingerprint: str, dataset: str) -> list[str]:
    """How the file at path differs from this run ([] when it is this run's)."""
    from tracing.store import _differences, _identity, _open_h5, _read_identity

    with _open_h5(path) as f:
        old = _read_identity(f, path)
    new = _identity("cache", model, fingerprint, dataset, decl.identity_config(), decl.units,
                    decl.shapes, decl.float16)
    return _differences(old, new)


# ---------------------------------------------------------------- the run

def _compute(decl: Declaration, w, todo: list[int], bar=None) -> list[tuple[int, str]]:
    """Compute and write the units ``todo`` into the store writer ``w`` (the
    one loop of both a single process and a Ray worker) -> [(unit, reason)]
    skipped. A skipped unit is recorded as complete and empty with its reason:
    a rerun does not retry it."""
    skipped = []
    for i in todo:
        try:
            arrays, layout, meta = decl.compute(i)
        except SkipUnit as e:
            skipped.append((i, str(e)))
        else:
            w.write_sample(i, arrays, layout, meta, predicted=_predicted(decl, arrays))
        if bar is not None:
            bar.update(1)
    for i, why in skipped:
        if w.hooks is None:
            raise RunError(f"no unit could be computed; first problem: {decl.units[i].id}: {why}")
        w.write_sample(i, {n: np.zeros((0,) * len(shape)) for n, (shape, _) in w.hooks.items()}, {},
                       {"skipped": why})
    return skipped


def _predicted(decl: Declaration, arrays: dict) -> int | None:
    """The model's answer among a unit's arrays (``Declaration.predicted``), or None."""
    x = arrays.get(decl.predicted) if decl.predicted else None
    return int(np.asarray(x).reshape(-1)[0]) if x is not None and np.size(x) == 1 else None


def _open(decl: Declaration, path: Path, model: str, fingerprint: str, dataset: str, hooks=None):
    from tracing.store import CacheWriter

    return CacheWriter.open(path, model, fingerprint, dataset, decl.identity_config(), decl.units,
                            hooks=hooks or decl.shapes, float16=decl.float16, static=decl.static,
                            max_json_bytes=decl.max_json_bytes)


def run(decl: Declaration, out: str | Path, model: str, fingerprint: str, dataset: str,
        overwrite: bool = False, progress: bool = True, log=None, workers: int = 0,
        ray_address: str | None = None, job: tuple[str, list[str]] | None = None,
        gpus_per_worker: float = 0) -> Outcome:
    """Compute every pending unit of ``decl`` into the HDF5 file ``out`` (see the
    module docstring). Raises RunError for a file of another run (unless
    ``overwrite``), a second writer, or a file chronolens did not write.

    workers > 0 (or ray_address): the units are computed by Ray actors, each
    rebuilding the declaration once from ``job`` = (module, argv) with the
    module's ``prepare(argv)`` (so each loads the model once), each writing a
    shard file beside the output through the same store; the driver merges the
    shards into the output as they finish (see ``_sharded``)."""
    from tqdm import tqdm

    log = log or (lambda m: print(m, file=sys.stderr))
    out = check_out(out)
    with _Lock(out):
        target = out
        if out.exists():
            diffs = _mismatch(out, decl, model, fingerprint, dataset)
            if diffs and not overwrite:
                raise RunError(f"{out} holds another run ({'; '.join(diffs)}); choose another --out, "
                               f"or pass --overwrite to replace it")
            if diffs:
                target = beside(out)
                if target.exists() and _mismatch(target, decl, model, fingerprint, dataset):
                    target.unlink()  # an abandoned --overwrite of yet another configuration
        with _open(decl, target, model, fingerprint, dataset) as w:
            if workers or ray_address:
                _merge(w, _shards(target), remove=True)  # what a killed driver's workers had finished
            todo = w.pending()
            resumed = len(decl.units) - len(todo)
            if resumed:
                log(f"{out}: resuming, {resumed} of {len(decl.units)} units already complete")
            first = [i for i in (decl.order or []) if i in todo]
            todo = first + [i for i in todo if i not in set(first)]
            desc = decl.describe or f"{decl.kind} -> {out.name}"
            with tqdm(total=len(todo), desc=desc, unit="unit", disable=not progress) as bar:
                if (workers or ray_address) and todo:
                    if job is None:
                        raise UsageError(f"{decl.kind}: --workers needs the analysis' prepare(argv) to rebuild it")
                    # the units that fix the file's shapes first, here; the rest on the workers
                    skipped = _compute(decl, w, first if w.hooks is None else [], bar)
                    skipped += _sharded(decl, w, target, [i for i in todo if not w.is_complete(i)], job,
                                        workers, ray_address, bar, gpus_per_worker)
                else:
                    skipped = _compute(decl, w, todo, bar)
        if target != out:
            _swap_in(target, out)
    for i, why in skipped:
        log(f"skipped {decl.units[i].id}: {why}")
    return Outcome(out, len(todo) - len(skipped), resumed, [(decl.units[i].id, why) for i, why in skipped])


# ---------------------------------------------------------------- scale-out on Ray

def _shard(target: Path, k: int) -> Path:
    return target.with_name(f".{target.name}.shard{k}")


def _shards(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.glob(f".{target.name}.shard*") if p.name.rsplit(".shard", 1)[-1].isdigit())


def _merge(w, shards: list[Path], remove: bool = False, units=None, checked: set | None = None) -> list[int]:
    """Copy the complete units of the shard files (only ``units`` when given)
    into the writer ``w`` (the same store, the same identity) -> the units
    merged; ``remove`` deletes the shards afterwards (their actors are done).
    ``checked``: shards whose identity was checked already (reading it costs
    more than a batch's rows); the ones checked now are added."""
    merged = []
    for shard in shards:
        if not shard.exists():
            continue
        merged += w.copy_units(shard, units, check=checked is None or shard not in checked)
        if checked is not None:
            checked.add(shard)
        if remove:
            shard.unlink()
    return merged


def _sharded(decl: Declaration, w, target: Path, todo: list[int], job, workers: int, ray_address,
             bar, gpus: float = 0) -> list[tuple[int, str]]:
    """The units ``todo`` on Ray actors -> skipped units. Each actor writes its
    own shard file; each finished batch is merged into ``w`` at once, so a
    killed driver loses at most what is in the shards, and a rerun merges
    those first. An actor killed mid-batch is restarted by Ray (which loads the
    model again) and the batch is retried: it resumes its shard."""
    import ray

    started = not ray.is_initialized()
    if started:
        if not ray_address:
            # Ray runs workers at nice 15 by default: on a machine given to this run, the workers do
            # all of its compute and should not yield to everything else (measured: bench/scale.py).
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=3, max_task_retries=3)(_Worker)
        actors = [actor.remote(*job, str(_shard(target, k)), w.hooks) for k in range(n)]
        size = max(1, min(8, len(todo) // (2 * n) or 1))
        batches = [todo[a:a + size] for a in range(0, len(todo), size)]
        pending = {actors[b % n].compute.remote(batch): b for b, batch in enumerate(batches)}
        skipped, checked = [], set()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    b = pending.pop(ref)
                    skipped += [tuple(x) for x in ray.get(ref)]
                    bar.update(len(_merge(w, [_shard(target, b % n)], units=batches[b], checked=checked)))
            ray.get([a.close.remote() for a in actors])
        finally:
            for a in actors:  # on an error too: none may hold its shard open for a rerun (a shared Ray lives on)
                ray.kill(a)
        _merge(w, _shards(target), remove=True)
        return skipped
    finally:
        if started:
            ray.shutdown()


class _Worker:
    """A Ray actor: the analysis rebuilt from (module, argv) with the model
    loaded once, writing its units into its own shard file."""

    def __init__(self, module: str, argv: list[str], shard: str, hooks: dict | None):
        import importlib

        p = importlib.import_module(module).prepare(argv)
        self.lm, self.decl, self.dataset = p.lm, p.decl, p.dataset
        self.shard, self.hooks = Path(shard), hooks
        self.w = None

    def compute(self, units: list[int]) -> list[tuple[int, str]]:
        # the shard stays open from batch to batch (closing and reopening it cost about 25 ms a batch,
        # 3 ms a unit of a flow run on the organism: bench/scale.py); the driver reads it meanwhile, as a
        # notebook may read any file being written (tracing/store.py)
        if self.w is None:
            self.w = _open(self.decl, self.shard, self.lm.name, self.lm.fingerprint, self.dataset, self.hooks)
        return _compute(self.decl, self.w, [i for i in units if not self.w.is_complete(i)])

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None


def _swap_in(new: Path, out: Path) -> None:
    """The one place an output is replaced: one atomic rename, so a reader or a
    kill sees the old file or the new one, never a mix."""
    os.replace(new, out)


def later_stage(out: str | Path, stage: str, request: dict, compute: Callable[[], dict],
                overwrite: bool = False, log=None) -> bool:
    """Results of a stage that reads every unit (e.g. flow's pathways), stored
    under /results/<stage>/ of a completed run's file together with ``request``
    (what the stage was asked; not part of the file's identity, so that a file
    can be extended). Same request stored: nothing to do (-> False). Another
    request: RunError unless ``overwrite``. ``compute()`` -> {name: (array,
    attrs)} (names under the stage); they are written into a copy of the file
    that replaces it atomically, so a kill leaves the old file. -> True."""
    import shutil

    import h5py

    from tracing.store import CacheReader, _norm, _put_result, diff_lines

    log = log or (lambda m: print(m, file=sys.stderr))
    out = Path(out).absolute()
    marker = f"{stage}/request"
    with _Lock(out):
        r = CacheReader(out)
        if marker in r.results():
            old = r.result(marker)[1]
            if old == _norm(request):
                log(f"{out}: {stage} results of this request complete, not recomputed")
                return False
            if not overwrite:
                diffs = diff_lines(old, _norm(request), stage)
                raise RunError(f"{out} holds {stage} results of another request ({'; '.join(diffs)}); "
                               f"pass --overwrite to replace them (the rest of the file is kept)")
        results = compute()
        tmp = out.with_name(f".{out.name}.{stage}")
        shutil.copyfile(out, tmp)
        try:
            with h5py.File(tmp, "r+") as f:
                if f"results/{stage}" in f:
                    del f[f"results/{stage}"]
                for name, (array, attrs) in results.items():
                    _put_result(f, out, f"{stage}/{name}", array, attrs, overwrite=False)
                # written last: its presence means the stage is complete
                _put_result(f, out, marker, np.zeros(0), request, overwrite=False)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _swap_in(tmp, out)
    return True


# ---------------------------------------------------------------- the error boundary

def known_errors() -> tuple[type, ...]:
    from tasks.video import VideoError
    from tracing.registry import ModelNotFoundError
    from tracing.store import StoreError

    return (RunError, ModelNotFoundError, StoreError, VideoError, FileNotFoundError, ValueError)


def cli_boundary(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI's main(argv): a known error becomes one line on stderr and exit
    code 2 (usage) or 1 (the rest), without a traceback unless --debug."""

    def entry(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in argv
        try:
            main([x for x in argv if x != "--debug"])
        except KeyboardInterrupt:
            print("interrupted; what was complete is kept and a rerun resumes", file=sys.stderr)
            return 130
        except known_errors() as e:
            if debug:
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", 1)
        return 0

    return entry


def stored(path: str | Path, name: str, fill=np.nan) -> np.ndarray:
    """The per-unit arrays ``name`` of a run's file stacked [N, *largest shape],
    ``fill`` where a unit's array is smaller (or the unit was skipped or is not
    complete)."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    parts = r.acts(name, complete_only=False)
    done = r.samples["complete"]
    if isinstance(parts, np.ndarray) and done.all():
        return parts
    parts = list(parts)
    shape = np.max([p.shape for p in parts], 0)
    dtype = np.result_type(parts[0].dtype, np.asarray(fill).dtype)
    out = np.full((len(parts), *shape), fill, dtype)
    for n, p in enumerate(parts):
        if done[n]:
            out[(n, *[slice(0, d) for d in p.shape])] = p
    return out
