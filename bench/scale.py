"""The run engine's overhead: Map the Flow on the same samples, as a plain
in-process loop and through the engine with one Ray worker.

    python -m bench.scale [--model organism] [--tasks direction,count,order,static_color] [--limit 30] [--frames 8]

- plain: every sample's ``decl.compute`` in a loop, nothing stored, in a fresh
  Python process (as a Ray worker is: no warm caches), one thread;
- engine: ``analyses.run.run`` with ``workers=1``: the worker computes the same
  units, writes them into its shard file, and the driver merges them into the
  output.

What is compared is what every further sample costs, timed where the work
happens: both processes note the moment each unit's computation starts, and
a unit's cost is the time from its start to the next unit's. In the engine
that includes everything the engine adds per unit (the write into the shard,
the bookkeeping, and at a batch's end Ray's return and the next call); the
fixed costs (Ray's start-up,
the worker's imports, loading the model, building the declaration, the
driver's first unit and the final merge) are outside the units and printed
apart. Both compute on the same core (the last one this process may use),
the driver and Ray's own processes on the others. Plain and engine runs
alternate, ``--repeats`` times each, and each unit counts with its fastest
time over the repeats: noise on a shared machine only ever adds time, while
the engine's own per-unit work is there in every repeat. (Timing whole runs instead, and taking the per-sample cost
as a difference between two sample counts, left a few milliseconds a sample
under seconds of run-to-run spread in the fixed costs: +61% to -44% over
identical runs; docs/scaling.md.)

Prints the per-sample costs and ``engine overhead: X%`` (target: at most 5%),
then runs 2 workers and checks that they give the same arrays as 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def prepare(argv):
    """``analyses.flow.prepare`` with every unit's computation timed into the
    file after ``--stamps`` (a line per unit: index, start, end; perf_counter)
    and, with ``--cpu N``, the process moved onto core N: the job module that
    the engine's worker rebuilds the analysis with, and the plain loop's."""
    from analyses import flow

    i = argv.index("--stamps")
    stamps, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    if "--cpu" in argv:  # the computing process on this core (see main)
        i = argv.index("--cpu")
        os.sched_setaffinity(0, {int(argv[i + 1])})
        argv = argv[:i] + argv[i + 2:]
    p = flow.prepare(argv)
    compute = p.decl.compute

    def timed(u):
        t0 = time.perf_counter()
        r = compute(u)
        with stamps.open("a") as f:  # the same small cost in the plain loop and in the worker
            f.write(f"{u} {t0!r} {time.perf_counter()!r}\n")
        return r

    p.decl.compute = timed
    return p


def intervals(stamps: Path) -> tuple[dict[int, float], dict[int, float]]:
    """-> (unit -> seconds from its start to the next unit's start in the same
    process (the last unit has none), unit -> seconds computing it)."""
    rows = [line.split() for line in stamps.read_text().splitlines()]
    return ({int(u): float(t1) - float(t0) for (u, t0, _), (_, t1, _) in zip(rows, rows[1:])},
            {int(u): float(t1) - float(t0) for u, t0, t1 in rows})


def main(argv=None) -> dict:
    from analyses.cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", default="organism", help="registry name, hub id or local folder")
    ap.add_argument("--tasks", default="direction,count,order,static_color", help="synthetic tasks")
    ap.add_argument("--limit", type=int, default=30, help="samples per task")
    ap.add_argument("--frames", type=int, default=8, help="frames per video")
    ap.add_argument("--repeats", type=int, default=3, help="plain and engine runs each, alternating; every unit "
                    "counts with its fastest time")
    ap.add_argument("--plain-only", default=None, help=argparse.SUPPRESS)  # STAMPS: one plain loop, noted there
    ap.add_argument("--cpu", default=None, help=argparse.SUPPRESS)  # with --plain-only: the core to compute on
    a = ap.parse_args(argv)
    if a.limit < 1 or a.repeats < 1:
        ap.error("--limit and --repeats must be at least 1")

    def flow_argv(out: Path, stamps: Path, pinned: bool = True) -> list[str]:
        return ["--model", a.model, "--tasks", a.tasks, "--limit", str(a.limit), "--frames", str(a.frames),
                "--samples", "all", "--no-progress", "--out", str(out), "--stamps", str(stamps)] + pin * pinned

    # On a machine of several cores the plain loop and the engine's worker compute on the same one, the
    # driver and Ray's own processes on the others: two processes on different cores of a shared virtual
    # machine differ by up to 15% in speed whatever they run (measured: a Ray actor running the plain loop).
    cores = sorted(os.sched_getaffinity(0))
    pin = ["--cpu", str(cores[-1])] if len(cores) > 1 else []
    import torch

    torch.set_num_threads(1)  # as each Ray worker (one CPU each)
    if a.plain_only is not None:
        with tempfile.TemporaryDirectory() as d:
            p = prepare(flow_argv(Path(d) / "unused.h5", Path(a.plain_only)) + (["--cpu", a.cpu] if a.cpu else []))
            for i in range(len(p.decl.units)):
                p.decl.compute(i)
        return {}

    import ray

    from analyses import run as engine
    from tracing.store import CacheReader

    def plain_run(stamps: Path) -> float:
        cmd = [sys.executable, "-m", "bench.scale", "--model", a.model, "--tasks", a.tasks, "--limit",
               str(a.limit), "--frames", str(a.frames), "--plain-only", str(stamps)] + pin
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - t

    def engine_run(out: Path, stamps: Path, workers: int) -> float:
        job = flow_argv(out, stamps, pinned=workers == 1)  # two workers: each on its own core
        p = prepare(flow_argv(out, stamps.with_suffix(".driver"), pinned=False))  # the driver's own units apart
        t = time.perf_counter()
        engine.run(p.decl, out, p.lm.name, p.lm.fingerprint, p.dataset, progress=False, workers=workers,
                   job=("bench.scale", job))
        return time.perf_counter() - t

    plain, through, wall_plain, wall_engine = [], [], [], []
    if pin:
        os.sched_setaffinity(0, set(cores[:-1]))  # the driver, and Ray's processes started from it
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ.setdefault("RAY_worker_niceness", "0")  # as analyses.run starts its local instance
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        try:
            for rep in range(a.repeats):  # alternating, so that a slow spell of the machine hits both
                wall_plain.append(plain_run(d / f"plain{rep}.txt"))
                plain.append(intervals(d / f"plain{rep}.txt"))
                wall_engine.append(engine_run(d / f"one{rep}.h5", d / f"one{rep}.txt", 1))
                through.append(intervals(d / f"one{rep}.txt"))  # the driver's units: not in the worker's file
            two = d / "two.h5"
            engine_run(two, d / "two.txt", 2)
        finally:
            ray.shutdown()
        one, other = CacheReader(d / "one0.h5"), CacheReader(two)
        same = all(np.array_equal(one.acts(h), other.acts(h), equal_nan=True) for h in one.hooks)
    units = sorted(set.intersection(*(set(x) for x, _ in plain + through)))

    def best(runs, k):  # per unit, the fastest over the repeats; mean over the units
        return sum(min(r[k][u] for r in runs) for u in units) / len(units)

    per_plain, per_engine = best(plain, 0), best(through, 0)
    comp_plain, comp_engine = best(plain, 1), best(through, 1)
    overhead = 100 * (per_engine / per_plain - 1)
    rep_ratio = [100 * (sum(e[u] for u in units) / sum(p[u] for u in units) - 1) for (p, _), (e, _) in
                 zip(plain, through)]
    fixed = min(w - sum(e.values()) for w, (e, _) in zip(wall_engine, through))
    print(f"{a.model}: Map the Flow ({a.frames} frames), {len(units)} samples timed in each run "
          f"(of {len(plain[0][1])}; each process's last has no next start), one thread per process, "
          f"{a.repeats} runs each")
    print(f"plain loop: {per_plain:.4f} s a sample (fastest of {a.repeats} per sample); whole runs "
          f"{', '.join(f'{w:.1f}' for w in wall_plain)} s")
    print(f"engine, 1 Ray worker: {per_engine:.4f} s a sample; whole runs "
          f"{', '.join(f'{w:.1f}' for w in wall_engine)} s")
    print(f"of which computing: plain {comp_plain:.4f} s, engine {comp_engine:.4f} s; the rest (the loop, in the "
          f"engine its writes and batch ends) {per_plain - comp_plain:.4f} s and {per_engine - comp_engine:.4f} s")
    own = per_engine - comp_engine - (per_plain - comp_plain)
    print(f"the engine's own work a sample (its writes, batch ends): {1000 * own:.1f} ms, "
          f"{100 * own / per_plain:.1f}% of a plain sample")
    print(f"each pair of runs alone: {', '.join(f'{r:+.1f}%' for r in rep_ratio)}")
    print(f"fixed costs: ray start-up {ray_start:.1f} s (once); per run outside the timed units {fixed:.1f} s "
          f"(worker start-up: imports, model, declaration; the driver's first unit; the final merge)")
    print(f"2 workers give the same arrays as 1: {same}")
    print(f"engine overhead: {overhead:.1f}%")
    return {"plain_per_sample_s": per_plain, "engine_per_sample_s": per_engine, "ray_start_s": ray_start,
            "fixed_s": fixed, "overhead_pct": overhead, "pairs_pct": rep_ratio, "same": same, "samples": len(units),
            "compute_per_sample_s": (comp_plain, comp_engine),
            "own_per_sample_s": own}


if __name__ == "__main__":
    main()
