"""The run engine (analyses/run.py), the same battery for every analysis on it
(capture, lens, flow, tomato, t3, rhythm):
a mismatched output is refused and left unchanged; a run killed with SIGKILL
at two moments resumes to exactly the arrays and attributes of an
uninterrupted run; a killed --overwrite leaves the old file intact; an
unreachable model, a second writer, and output paths that cannot work are one
line on stderr, no traceback, nothing written."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analyses import capture as capture_mod
from analyses import flow as flow_mod
from analyses import lens as lens_mod
from analyses import rhythm as rhythm_mod
from analyses import t3 as t3_mod
from analyses import tomato as tomato_mod
from analyses.run import _Lock, beside, cli_boundary
from tracing.store import CacheReader

# One thread here and in the killed subprocesses: the same arithmetic order, the same bits.
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "tiny-llava-next", "--tasks", "direction,static_color", "--limit", "3", "--frames", "4", "--no-progress"]
# T3 renders its own tasks, sized by --samples (per split): 3 + 3 units of 'order'.
T3_COMMON = ["--model", "tiny-llava-next", "--tasks", "order", "--samples", "3", "--frames", "4", "--no-progress",
             "--C", "1.0", "--probe-seeds", "1"]
# analysis -> (module, its CLI main, arguments of run A, what makes run B another configuration)
ANALYSES = {
    "capture": ("analyses.capture", capture_mod.main, ["--hooks", "resid_post,projector", "--positions", "frames"],
                ["--seed", "1"]),
    "lens": ("analyses.lens", lens_mod.main, ["--k", "2", "--readout", "embed"], ["--k", "3"]),
    "flow": ("analyses.flow", flow_mod.main, ["--samples", "all", "--window", "2", "--edges", "video_last,cross_frame",
                                              "--no-layerwise"], ["--window", "3"]),
    "tomato": ("analyses.tomato", tomato_mod.main, ["--shuffle-seeds", "1", "--counts", "2", "--singles", "first,human",
                                                    "--bootstrap", "50", "--no-figures"], ["--shuffle-seeds", "2"]),
    "t3": ("analyses.t3", t3_mod.main, [], ["--seed", "1"]),
    "rhythm": ("analyses.rhythm", rhythm_mod.main, ["--max-new-tokens", "3", "--draws", "20"], ["--window", "5"]),
}
N_UNITS = 6


@pytest.fixture(params=sorted(ANALYSES))
def analysis(request):
    return request.param


def common(name) -> list[str]:
    return T3_COMMON if name == "t3" else COMMON


def run_in_process(name, out, *extra):
    _, main, args, _ = ANALYSES[name]
    return cli_boundary(main)([*common(name), *args, "--out", str(out), *extra])


def contents(path) -> dict:
    """Every array and attribute of the file (the creation time aside)."""
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        out["attrs"] = {k: str(v) for k, v in f.attrs.items() if k != "created"}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
                out[name + "@attrs"] = {k: str(v) for k, v in obj.attrs.items()}
        f.visititems(visit)
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def kill_after(name, out, watch, n_done, *extra):
    """Run the CLI in a subprocess; SIGKILL it once ``watch`` has n_done complete units."""
    module, _, args, _ = ANALYSES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *common(name), *args, "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                if CacheReader(watch).samples["complete"].sum() >= n_done:
                    proc.send_signal(signal.SIGKILL)
                    break
            except Exception:  # not there yet, or being created
                pass
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err.decode()[-2000:]}"
    return int(CacheReader(watch).samples["complete"].sum())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs A and B of every analysis."""
    ref = {}
    for name, (_, _, _, other) in ANALYSES.items():
        d = tmp_path_factory.mktemp(f"ref-{name}")
        assert run_in_process(name, d / "a.h5") == 0
        assert run_in_process(name, d / "b.h5", *other) == 0
        ref[name] = {"a": contents(d / "a.h5"), "b": contents(d / "b.h5")}
    return ref


def test_killed_twice_resumes_to_the_uninterrupted_arrays(analysis, reference, tmp_path):
    out = tmp_path / "killed.h5"
    first = kill_after(analysis, out, out, 1)
    second = kill_after(analysis, out, out, min(first + 2, N_UNITS - 1))
    assert 1 <= first <= second < N_UNITS
    assert run_in_process(analysis, out) == 0
    assert_same(contents(out), reference[analysis]["a"])


def test_killed_overwrite_leaves_the_old_file(analysis, reference, tmp_path):
    out = tmp_path / "x.h5"
    assert run_in_process(analysis, out) == 0
    before = out.read_bytes()
    _, _, _, other = ANALYSES[analysis]
    kill_after(analysis, out, beside(out), 2, *other, "--overwrite")
    assert out.read_bytes() == before  # the old file, untouched
    assert run_in_process(analysis, out, *other, "--overwrite") == 0  # resumes beside, then swaps in
    assert_same(contents(out), reference[analysis]["b"])
    assert not beside(out).exists()


def test_another_configuration_is_refused_and_left_unchanged(analysis, tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert run_in_process(analysis, out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert run_in_process(analysis, out, *ANALYSES[analysis][3]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert out.read_bytes() == before


def test_unreachable_model_second_writer_and_bad_paths(analysis, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.h5"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, main, args, _ = ANALYSES[analysis]
    assert cli_boundary(main)([*common(analysis), *args, "--model", "llava-next", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'llava-next'") and "hf download" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written
    # a second writer of the same output is refused at once
    with _Lock(out.absolute()):
        assert run_in_process(analysis, out) == 1
    assert "another run is writing" in capsys.readouterr().err and not out.exists()
    # an output whose parent is a file; a file chronolens did not write (never replaced, even with --overwrite)
    (tmp_path / "file").write_text("x")
    assert run_in_process(analysis, tmp_path / "file" / "x.h5") == 1
    assert "is a file" in capsys.readouterr().err
    foreign = tmp_path / "notes.h5"
    foreign.write_bytes(b"not chronolens")
    assert run_in_process(analysis, foreign, "--overwrite") == 1
    assert "did not write" in capsys.readouterr().err and foreign.read_bytes() == b"not chronolens"
    # --debug shows the traceback
    assert run_in_process(analysis, foreign, "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("bad, says", [(["--limit", "-1"], "--limit -1"), (["--frames", "0"], "--frames 0"),
                                       (["--device", "cuda"], "no CUDA device")])
def test_bad_shared_flags_are_usage_errors_before_anything_loads(analysis, bad, says, tmp_path, capsys):
    if bad[0] == "--device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")  # a GPU machine: --device cuda is valid there
    assert run_in_process(analysis, tmp_path / "x.h5", *bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- scale-out on Ray

@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the six two-worker runs below, started as the
    engine starts its own (which it reuses when one is running, and leaves
    running): its start-up is paid once, not once per analysis."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_ray_workers_equal_one_process(analysis, reference, local_ray, tmp_path):
    out = tmp_path / "ray.h5"
    assert run_in_process(analysis, out, "--workers", "2") == 0
    assert_same(contents(out), reference[analysis]["a"])
    assert not list(tmp_path.glob(".ray.h5.shard*"))  # merged and removed


def _ray_workers():
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if any("ray::_Worker" in c for c in p.info["cmdline"] or [])]


def test_a_killed_worker_is_restarted_and_the_run_ends_equal(reference, tmp_path):
    """SIGKILL one of two Ray workers once it has written a unit: Ray restarts it,
    its batch is redone from its shard, and the file equals a one-process run."""
    module, _, args, _ = ANALYSES["flow"]
    out = tmp_path / "ray.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *COMMON, *args, "--out", str(out), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and proc.poll() is None:
            for shard in tmp_path.glob(".ray.h5.shard*"):
                try:
                    done = CacheReader(shard).samples["complete"].sum()
                except Exception:
                    continue
                workers = _ray_workers()
                if done >= 1 and workers:
                    killed = workers[0].pid
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert killed is not None, "no worker was seen writing"
    assert proc.returncode == 0, err.decode()[-3000:]
    assert_same(contents(out), reference["flow"]["a"])
