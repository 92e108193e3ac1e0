"""Set-up and CLI edges (issue 15): with-venv's messages, relative paths from
where the user stands, the committed checkpoints written only on request,
library modules run as commands, --help lines, --no-progress on loading."""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from analyses import cli

REPO = Path(__file__).resolve().parent.parent


# -- with-venv ---------------------------------------------------------------------
FAKE_PYTHON3 = """#!/usr/bin/env bash
# python3 -m venv DIR: DIR/bin/python logs its arguments instead of installing anything
[ "$1 $2" = "-m venv" ] || exit 3
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'PY'
#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../pip.log"
PY
chmod +x "$3/bin/python"
"""


def _fake_checkout(tmp_path: Path) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "with-venv", repo / "with-venv")
    shutil.copy(REPO / "constraints.txt", repo / "constraints.txt")
    (repo / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOLENS_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return repo, env


def test_with_venv_says_each_step_and_nothing_when_up_to_date(tmp_path):
    repo, env = _fake_checkout(tmp_path)
    run = lambda: subprocess.run(["bash", str(repo / "with-venv"), "echo", "hello"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stdout == "hello\n"
    lines = first.stderr.splitlines()
    assert all(line.startswith("with-venv: ") for line in lines), lines
    steps = ["creating the virtual environment", "installing torch 2.13.0", "installing chronolens", "ready"]
    assert len(lines) == len(steps) and all(s in line for s, line in zip(steps, lines)), lines
    # the installs themselves, unchanged: torch alone and pinned first, then chronolens, never torchvision
    pip = (repo / ".venv" / "pip.log").read_text().splitlines()
    c = f"-c {repo}/constraints.txt"
    assert pip == [f"-m pip install -q --disable-pip-version-check {c} torch==2.13.0",
                   f"-m pip install -q --disable-pip-version-check {c} -e {repo}[test]"]
    assert "torchvision" not in first.stderr + "".join(pip)

    again = run()
    assert again.returncode == 0 and again.stdout == "hello\n" and again.stderr == ""
    assert len((repo / ".venv" / "pip.log").read_text().splitlines()) == 2

    (repo / "pyproject.toml").write_text("[project]\nname = 'fake'\nversion = '2'\n")
    changed = run()
    assert changed.returncode == 0
    assert "updating" in changed.stderr and "creating" not in changed.stderr
    assert "installing torch" in changed.stderr and "installing chronolens" in changed.stderr


def test_with_venv_exports_the_callers_folder(tmp_path):
    repo, env = _fake_checkout(tmp_path)
    here = tmp_path / "elsewhere"
    here.mkdir()
    script = 'echo "$CHRONOLENS_CALLER_DIR $CHRONOLENS_CALLER_PID $$ $PWD"'
    res = subprocess.run([str(repo / "with-venv"), "bash", "-c", script], env=env, cwd=here,
                         capture_output=True, text=True, timeout=60)
    caller, pid, own_pid, cwd = res.stdout.split()
    assert caller == str(here) and cwd == str(repo)
    assert pid == own_pid  # exec: the command is the process with-venv named


# -- relative paths are relative to where the user stands ------------------------------
def test_relative_out_from_another_folder_lands_there(tmp_path):
    """Through the repository's with-venv, from another folder: the file is
    written there, the "wrote" line shows its absolute path, nothing lands in
    the repository."""
    assert not (REPO / "rel-out-test").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOLENS_")}
    res = subprocess.run([str(REPO / "with-venv"), "python", "-m", "analyses.capture", "--model", "tiny-llama",
                          "--dataset", "reasoning", "--tasks", "clock", "--limit", "1", "--positions", "last",
                          "--no-progress", "--out", "rel-out-test/run.h5"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "rel-out-test" / "run.h5"
    assert out.is_file()
    assert f"wrote {out}" in res.stdout + res.stderr
    assert not (REPO / "rel-out-test").exists()


@pytest.fixture
def as_with_venv(monkeypatch, tmp_path):
    """This process as with-venv starts a command: in the repository, called from tmp_path/user."""
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CHRONOLENS_CALLER_DIR", str(user))
    monkeypatch.setenv("CHRONOLENS_CALLER_PID", str(os.getpid()))
    return user


def test_user_path_is_relative_to_the_callers_folder(as_with_venv, monkeypatch, tmp_path):
    user = as_with_venv
    assert cli.user_path("a/b.h5") == str(user / "a" / "b.h5")
    assert cli.user_path("/abs/b.h5") == "/abs/b.h5"
    assert cli.user_path(None) is None
    a = cli.common_parser("python -m analyses.flow", "test").parse_args(
        ["--out", "r.h5", "--figures", "figs", "--data-dir", "data"])
    assert (a.out, a.figures, a.data_dir) == (str(user / "r.h5"), str(user / "figs"), str(user / "data"))
    assert cli.figures_dir(a, a.out) == user / "figs"
    # a Ray worker parses argv again, without knowing where the user stood
    argv = cli.worker_argv(["--out", "r.h5", "--figures", "figs"], a)
    monkeypatch.delenv("CHRONOLENS_CALLER_DIR")
    b = cli.common_parser("python -m analyses.flow", "test").parse_args(argv)
    assert (b.out, b.figures, b.data_dir, b.model) == (a.out, a.figures, a.data_dir, "organism")


def test_user_path_unchanged_outside_with_venv(as_with_venv, monkeypatch, tmp_path):
    monkeypatch.setenv("CHRONOLENS_CALLER_PID", str(os.getpid() + 1))  # another process: a child, a stale shell
    assert cli.user_path("a/b.h5") == "a/b.h5"
    monkeypatch.setenv("CHRONOLENS_CALLER_PID", str(os.getpid()))
    monkeypatch.chdir(tmp_path)  # the process changed folder itself
    assert cli.user_path("a/b.h5") == "a/b.h5"
    monkeypatch.setenv("CHRONOLENS_CALLER_DIR", str(REPO))  # called from the repository: as typed
    monkeypatch.chdir(REPO)
    assert cli.user_path("a/b.h5") == "a/b.h5"
    a = argparse.Namespace(figures=None)
    assert cli.figures_dir(a, "x/run.h5") == REPO / "x" / "run_figures"  # absolute, for the "wrote" line


def test_model_folder_relative_to_the_callers_folder(as_with_venv):
    (as_with_venv / "ckpt").mkdir()
    assert cli.user_model("ckpt") == str(as_with_venv / "ckpt")
    assert cli.user_model("organism") == "organism"
    assert cli.user_model("owner/name") == "owner/name"  # a hub id stays one


# -- the committed checkpoints are written only on request --------------------------
def _digest(folder: Path) -> str:
    h = hashlib.sha1()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes() + str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()


@pytest.mark.parametrize("module", ["organism.train", "organism.reasoner.train"])
def test_train_does_not_touch_the_committed_checkpoint(module, monkeypatch, tmp_path):
    mod = importlib.import_module(module)
    committed = (REPO / "organism" / "checkpoint" if module == "organism.train"
                 else REPO / "organism" / "reasoner" / "checkpoint")
    before = _digest(committed)
    calls = []
    monkeypatch.setattr(mod, "train", lambda steps, seed, out, **kw: calls.append(Path(out)))
    monkeypatch.chdir(tmp_path)
    for flag in os.environ:
        if flag.startswith("CHRONOLENS_"):
            monkeypatch.delenv(flag)

    # without --out: a new folder, never the committed checkpoint
    mod.main(["--steps", "7"])
    seed = getattr(mod, "RECIPE", {}).get("seed", 0)  # the reasoner's defaults are its checkpoint's recipe
    assert len(calls) == 1 and calls[0].is_absolute() and not mod.is_committed(calls[0])
    assert calls[0].parent.parent == tmp_path and calls[0].name == f"seed{seed}-steps7"

    # --out naming the committed checkpoint: refused before anything is built
    for argv in (["--out", str(committed)], ["--out", os.path.relpath(committed, tmp_path)],
                 ["--replace-checkpoint", "--out", str(tmp_path / "other")]):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2
    assert len(calls) == 1
    assert _digest(committed) == before

    # the explicit flag
    mod.main(["--replace-checkpoint"])
    assert calls[-1] == committed


def test_train_help_says_how_to_replace_the_checkpoint(capsys):
    from organism.train import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--replace-checkpoint" in text and "organism-runs" in text
    assert not re.search(r"issue \d", text)


# -- library modules run as commands ----------------------------------------------------
@pytest.mark.parametrize("module,goes_to", [("analyses.pathways", "python -m analyses.flow --find-pathways"),
                                            ("tracing.capture", "python -m analyses.capture")])
def test_library_module_says_where_to_go(module, goes_to, monkeypatch, capsys):
    """python -m <module>: exit 2 and where to go; --help: what it is and where to go."""
    def run_as_main(*argv) -> int:
        monkeypatch.setattr(sys, "argv", [module, *argv])
        with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return e.value.code

    assert run_as_main() == 2
    err = capsys.readouterr().err
    assert "library module, not a command" in err and goes_to in err
    assert run_as_main("--help") == 0
    assert goes_to in capsys.readouterr().out


# -- --help ----------------------------------------------------------------------------------
CLIS = ["analyses.flow", "analyses.lens", "analyses.tomato", "analyses.t3", "analyses.rhythm", "analyses.capture",
        "analyses.findings",
        "bench.capture", "bench.flow", "bench.probes", "bench.realscale", "bench.scale",
        "organism.train", "organism.reasoner.train", "tracing.check", "tracing.published"]


class _Parsed(Exception):
    pass


def _parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    mod = importlib.import_module(module)
    if hasattr(mod, "build_parser"):
        return mod.build_parser()
    got = []

    def parse_args(self, args=None, namespace=None):
        got.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(_Parsed):
        mod.main([])
    monkeypatch.undo()
    return got[-1]


@pytest.mark.parametrize("module", CLIS)
def test_every_flag_has_help_and_one_default(module, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # bench/ is not an installed package
    ap = _parser(module, monkeypatch)
    for act in ap._actions:
        if act.option_strings and act.help != argparse.SUPPRESS:
            assert act.help, f"{module} {act.option_strings[0]}: no help"
    text = re.sub(r"\s+", " ", ap.format_help())
    assert "(default: None)" not in text and "(default: False)" not in text
    for act in ap._actions:  # a flag's help states its default at most once
        if act.option_strings and act.help != argparse.SUPPRESS:
            shown = ap._get_formatter()._expand_help(act)
            assert len(re.findall(r"\(default\b", shown)) <= 1, (module, act.option_strings[0], shown)
    assert not re.search(r"issue \d|issue's", text, re.I), module


# -- --no-progress hides transformers' "Loading weights" bar -------------------------
def test_no_progress_hides_the_loading_bar(capfd):
    from transformers.utils import logging as hf_logging

    args = lambda quiet: argparse.Namespace(model="organism", device="cpu", dtype="float32", device_map=None,
                                            video_pixels=None, no_progress=quiet)
    was = hf_logging.is_progress_bar_enabled()
    cli.load_from_args(args(True))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == was  # as it was, after the load
    if was:
        cli.load_from_args(args(False))
        assert "Loading weights" in capfd.readouterr().err  # the check above can fail
