"""The run engine's overhead: Map the Flow on the same samples, as a plain
in-process loop and through the engine with one Ray worker.

    python -m bench.scale [--model organism] [--tasks direction,count,order,static_color] [--limit 10] [--frames 8]

- plain: every sample's ``analyses.flow.sample_arrays`` in a loop, nothing
  stored, in a fresh Python process (as a Ray worker is: no warm caches);
- engine: ``analyses.run.run`` with ``workers=1``: the worker computes the same
  units, writes them into its shard file, and the driver merges them into the
  output.

Both run on two sample sets, ``--limit`` and 3 x ``--limit`` samples per task,
and the per-sample time is the difference of the two times over the
difference of their sample counts: what every further sample costs, with the
fixed costs (Ray's start-up, the worker's own start-up: imports, loading the
model, building the declaration) cancelled out. The fixed costs are printed
apart. Each engine run is done twice and the faster kept (a shared machine).

Prints the times and ``engine overhead: X%`` (target: at most 5%), then runs
2 workers and checks that they give the same arrays as 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPEATS = 3  # each timing is the fastest of three: a shared machine's noise only ever adds time


def main(argv=None) -> dict:
    from analyses.cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", default="organism", help="registry name, hub id or local folder")
    ap.add_argument("--tasks", default="direction,count,order,static_color", help="synthetic tasks")
    ap.add_argument("--limit", type=int, default=10, help="samples per task of the smaller set (the larger: 3x)")
    ap.add_argument("--frames", type=int, default=8, help="frames per video")
    ap.add_argument("--plain-only", type=int, default=None, help=argparse.SUPPRESS)  # one plain timing, printed
    a = ap.parse_args(argv)

    import ray
    import torch

    from analyses import flow
    from analyses import run as engine
    from tracing.store import CacheReader

    torch.set_num_threads(1)  # as each Ray worker (one CPU each)

    def flow_argv(limit: int, out: Path) -> list[str]:
        return ["--model", a.model, "--tasks", a.tasks, "--limit", str(limit), "--frames", str(a.frames),
                "--samples", "all", "--no-progress", "--out", str(out)]

    if a.plain_only is not None:
        with tempfile.TemporaryDirectory() as d:
            p = flow.prepare(flow_argv(a.plain_only, Path(d) / "unused.h5"))
            t = time.perf_counter()
            for i in range(len(p.decl.units)):
                p.decl.compute(i)
            print(json.dumps({"n": len(p.decl.units), "s": time.perf_counter() - t}))
        return {}

    def plain_run(limit: int) -> tuple[int, float]:
        cmd = [sys.executable, "-m", "bench.scale", "--model", a.model, "--tasks", a.tasks, "--frames",
               str(a.frames), "--plain-only", str(limit)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        return r["n"], r["s"]

    plain, through, n = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for limit in (a.limit, 3 * a.limit):
            runs = [plain_run(limit) for _ in range(REPEATS)]
            n[limit], plain[limit] = runs[0][0], min(s for _, s in runs)

        os.environ.setdefault("RAY_worker_niceness", "0")  # as analyses.run starts its local instance
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        try:
            for limit in (a.limit, 3 * a.limit):
                times = []
                for rep in range(REPEATS):
                    out = Path(d) / f"one-{limit}-{rep}.h5"
                    job = flow_argv(limit, out)
                    p = flow.prepare(job)
                    t = time.perf_counter()
                    engine.run(p.decl, out, p.lm.name, p.lm.fingerprint, p.dataset, progress=False, workers=1,
                               job=("analyses.flow", job))
                    times.append(time.perf_counter() - t)
                through[limit] = min(times)
            small = a.limit
            two = Path(d) / "two.h5"
            p = flow.prepare(flow_argv(small, two))
            engine.run(p.decl, two, p.lm.name, p.lm.fingerprint, p.dataset, progress=False, workers=2,
                       job=("analyses.flow", flow_argv(small, two)))
        finally:
            ray.shutdown()
        one, other = CacheReader(Path(d) / f"one-{small}-0.h5"), CacheReader(two)
        same = all(np.array_equal(one.acts(h), other.acts(h), equal_nan=True) for h in one.hooks)
    lo, hi = a.limit, 3 * a.limit
    extra = n[hi] - n[lo]
    per_plain = (plain[hi] - plain[lo]) / extra
    per_engine = (through[hi] - through[lo]) / extra
    fixed = through[lo] - n[lo] * per_engine
    overhead = 100 * (per_engine / per_plain - 1)
    print(f"{a.model}: Map the Flow ({a.frames} frames) on {n[lo]} and {n[hi]} samples, one thread per process")
    print(f"plain loop: {plain[lo]:.1f} s and {plain[hi]:.1f} s: {per_plain:.3f} s per further sample")
    print(f"engine, 1 Ray worker: {through[lo]:.1f} s and {through[hi]:.1f} s: {per_engine:.3f} s per further sample")
    print(f"fixed costs: ray start-up {ray_start:.1f} s (once); per run {fixed:.1f} s (worker start-up: imports, "
          f"model, declaration; the first unit in the driver)")
    print(f"2 workers give the same arrays as 1: {same}")
    print(f"engine overhead: {overhead:.1f}%")
    return {"plain_per_sample_s": per_plain, "engine_per_sample_s": per_engine, "ray_start_s": ray_start,
            "fixed_s": fixed, "overhead_pct": overhead, "same": same, "samples": (n[lo], n[hi])}


if __name__ == "__main__":
    main()
