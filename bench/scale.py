"""The run engine's overhead: Map the Flow on the same samples, as a plain
in-process loop and through the engine with one Ray worker.

    python -m bench.scale [--model organism] [--tasks direction,count,order] [--limit 4] [--frames 8]

- plain: every sample's ``analyses.flow.sample_arrays`` in a loop, nothing stored;
- engine: ``analyses.run.run`` with ``workers=1``: the worker computes the same
  units, writes them into its shard file, and the driver merges them into the
  output. Ray's start-up (``ray.init``) and the worker's own start-up (imports,
  loading the model, building the declaration), measured apart by starting one
  worker alone, are printed apart and not counted in the overhead.

Prints the times and ``engine overhead: X%`` (target: at most 5%), then runs
2 workers and checks that they give the same arrays as 1.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="organism", help="registry name, hub id or local folder")
    ap.add_argument("--tasks", default="direction,count,order,static_color", help="synthetic tasks")
    ap.add_argument("--limit", type=int, default=4, help="samples per task")
    ap.add_argument("--frames", type=int, default=8, help="frames per video")
    a = ap.parse_args(argv)

    import ray
    import torch

    from analyses import flow
    from analyses import run as engine
    from tracing.store import CacheReader

    torch.set_num_threads(1)  # as each Ray worker (one CPU each)
    argv_flow = ["--model", a.model, "--tasks", a.tasks, "--limit", str(a.limit), "--frames", str(a.frames),
                 "--samples", "all", "--no-progress"]
    with tempfile.TemporaryDirectory() as d:
        argv_run = argv_flow + ["--out", str(Path(d) / "one.h5")]
        p = flow.prepare(argv_run)
        n = len(p.decl.units)
        t = time.perf_counter()
        for i in range(n):
            p.decl.compute(i)
        plain = time.perf_counter() - t

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        try:
            worker = ray.remote(num_cpus=1)(engine._Worker)
            t = time.perf_counter()
            w = worker.remote("analyses.flow", argv_run, str(Path(d) / ".probe.shard"), None)
            ray.get(w.compute.remote([]))
            worker_start = time.perf_counter() - t
            ray.kill(w)

            t = time.perf_counter()
            engine.run(p.decl, Path(d) / "one.h5", p.lm.name, p.lm.fingerprint, p.dataset, progress=False,
                       workers=1, job=("analyses.flow", argv_run))
            through = time.perf_counter() - t - worker_start
            argv_two = argv_flow + ["--out", str(Path(d) / "two.h5")]
            engine.run(p.decl, Path(d) / "two.h5", p.lm.name, p.lm.fingerprint, p.dataset, progress=False,
                       workers=2, job=("analyses.flow", argv_two))
        finally:
            ray.shutdown()
        one, two = CacheReader(Path(d) / "one.h5"), CacheReader(Path(d) / "two.h5")
        same = all(np.array_equal(one.acts(h), two.acts(h), equal_nan=True) for h in one.hooks)
    overhead = 100 * (through / plain - 1)
    print(f"{a.model}: {n} samples of Map the Flow ({a.frames} frames), one thread per process")
    print(f"plain loop: {plain:.1f} s ({plain / n:.2f} s per sample)")
    print(f"engine, 1 Ray worker: {through:.1f} s ({through / n:.2f} s per sample), after start-ups")
    print(f"ray start-up: {ray_start:.1f} s; worker start-up (imports, model, declaration): {worker_start:.1f} s")
    print(f"2 workers give the same arrays as 1: {same}")
    print(f"engine overhead: {overhead:.1f}%")
    return {"plain_s": plain, "engine_s": through, "ray_start_s": ray_start, "worker_start_s": worker_start,
            "overhead_pct": overhead, "same": same, "samples": n}


if __name__ == "__main__":
    main()
