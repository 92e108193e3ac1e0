"""The README's findings, rewritten from stored results by one command.

    python -m analyses.findings              # run what is missing, rewrite every block, copy the figures
    python -m analyses.findings --check      # exit 1 naming each block that differs from its results
    python -m analyses.findings --only flow,tomato [--rerun]

Every number the README states about the organism and the reasoner sits in a
block between ``<!-- findings:NAME -->`` and ``<!-- /findings:NAME -->``. The
block's text, prose included, is written here from stored result files, so
prose and numbers cannot drift apart: where a finding is a comparison (which
tasks a knockout hurts, whether anchors follow WAAD peaks more often than
chance), the comparison is computed and the sentence follows it.

The result files are made by ordinary CLI runs (RUNS: the command of each is
in the block it feeds), into ``cache/findings/``; a run whose file is missing
is run first, ``--rerun`` redoes it with ``--overwrite``. This module is the
command; the renderers are in ``analyses/findings_blocks.py``: a new finding
is one renderer (a function from the runs' files to markdown) in its BLOCKS
and, if it needs a new run, one entry in its RUNS.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from analyses.findings_blocks import BLOCKS, ROOT, RUNS

README = ROOT / "README.md"


_BLOCK = re.compile(r"(<!-- findings:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /findings:(?P=name) -->)", re.S)


def blocks_in(text: str) -> dict[str, str]:
    """name -> body of every findings block of a README text."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def replace_blocks(text: str, new: dict[str, str]) -> str:
    """The README text with the named blocks' bodies replaced (others untouched)."""
    def sub(m):
        name = m["name"]
        return m.group(1) + (new[name].rstrip("\n") + "\n" if name in new else m["body"]) + m.group(4)

    return _BLOCK.sub(sub, text)


def _complete(path: Path) -> bool:
    """The file exists and, for a run-engine file, every unit of its run is done
    (a run still writing, or killed, is not a result yet)."""
    if not path.exists():
        return False
    if path.suffix != ".h5":
        return True
    from tracing.store import CacheReader

    return bool(np.all(CacheReader(path).samples["complete"]))


def render(names, paths: dict | None = None) -> dict[str, str]:
    """name -> the block's markdown from the stored results (nothing is run)."""
    paths = paths or {k: r.out for k, r in RUNS.items()}
    out = {}
    for name in names:
        needs, fn = BLOCKS[name]
        missing = [r for r in needs if not _complete(ROOT / paths[r])]
        if missing:
            raise FileNotFoundError(f"findings block {name!r} needs {', '.join(paths[r] for r in missing)} (missing "
                                    f"or not complete); make it with: {'; '.join(RUNS[r].shown() for r in missing)} "
                                    f"(or python -m analyses.findings --only {name})")
        out[name] = fn(paths)
    return out


def run_missing(names, rerun: bool = False) -> None:
    """Run (in the repository root, one process each) every run the blocks
    need whose file is missing, or all of them with rerun; copy their figures."""
    runs = list(dict.fromkeys(r for n in names for r in BLOCKS[n][0]))
    for r in runs:
        run = RUNS[r]
        if rerun or not _complete(ROOT / run.out):
            (ROOT / run.out).parent.mkdir(parents=True, exist_ok=True)
            print(f"findings: {run.shown()}", file=sys.stderr, flush=True)
            done = subprocess.run(run.command(rerun), cwd=ROOT)
            if done.returncode:
                raise RuntimeError(f"{run.shown()} failed (exit {done.returncode}); its findings were not rewritten")
        for src, dst in run.figures.items():
            f = run.figures_dir() / src
            if f.exists():
                shutil.copyfile(f, ROOT / "docs" / dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analyses.findings", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None,
                    help=f"comma-separated blocks to rewrite (default: all of {', '.join(BLOCKS)})")
    ap.add_argument("--check", action="store_true",
                    help="run nothing and write nothing: exit 1 naming each README block that differs from what "
                         "its stored results give")
    ap.add_argument("--rerun", action="store_true", help="recompute the result files (--overwrite) even if present")
    ap.add_argument("--readme", default=str(README), help="the README to rewrite (default: the repository's)")
    a = ap.parse_args(argv)
    names = list(BLOCKS) if a.only is None else [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BLOCKS]
    if bad:
        ap.error(f"--only {','.join(bad)}: unknown block; blocks: {', '.join(BLOCKS)}")
    readme = Path(a.readme)
    text = readme.read_text()
    have = blocks_in(text)
    absent = [n for n in names if n not in have]
    if absent:
        print(f"{readme}: no <!-- findings:NAME --> block for {', '.join(absent)}", file=sys.stderr)
        return 1
    if not a.check:
        run_missing(names, a.rerun)
    try:
        new = render(names)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    differ = [n for n in names if have[n].rstrip("\n") != new[n].rstrip("\n")]
    if a.check:
        for n in differ:
            print(f"{readme}: block {n!r} differs from its stored results", file=sys.stderr)
        return 1 if differ else 0
    readme.write_text(replace_blocks(text, new))
    print(f"rewrote {len(differ)} of {len(names)} blocks in {readme.absolute()}"
          + (f" ({', '.join(differ)})" if differ else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
