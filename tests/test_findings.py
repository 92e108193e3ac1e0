"""python -m analyses.findings: README blocks rewritten from stored results.

The renderers' numbers and comparisons are checked on hand-built results here
(the flow text) and on the stored test runs in test_tomato.py and
test_rhythm.py; this file checks the block mechanics and the command."""
from __future__ import annotations

import numpy as np
import pytest

from analyses import findings, findings_blocks
from analyses.flow_figures import window_label


def test_blocks_are_found_and_only_named_ones_replaced():
    text = ("intro\n<!-- findings:a -->\nold a\n<!-- /findings:a -->\nmiddle\n"
            "<!-- findings:b -->\nold b\nline 2\n<!-- /findings:b -->\nend\n")
    assert findings.blocks_in(text) == {"a": "old a\n", "b": "old b\nline 2\n"}
    new = findings.replace_blocks(text, {"b": "new b"})
    assert new == text.replace("old b\nline 2\n", "new b\n")
    assert findings.blocks_in(findings.replace_blocks(new, {"a": "x\n\n"}))["a"] == "x\n"


def test_command_checks_rewrites_and_names_what_is_missing(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n<!-- findings:x -->\nstale 1.0\n<!-- /findings:x -->\n\nkept\n")
    monkeypatch.setitem(findings.BLOCKS, "x", ((), lambda paths: "fresh 2.0 from the results"))
    assert findings.main(["--check", "--only", "x", "--readme", str(readme)]) == 1
    assert "block 'x' differs" in capsys.readouterr().err
    assert "stale" in readme.read_text()  # --check writes nothing
    assert findings.main(["--only", "x", "--readme", str(readme)]) == 0
    assert readme.read_text() == "# t\n\n<!-- findings:x -->\nfresh 2.0 from the results\n<!-- /findings:x -->\n\nkept\n"
    assert findings.main(["--check", "--only", "x", "--readme", str(readme)]) == 0

    # a block whose result file is missing names the command that makes it
    monkeypatch.setitem(findings.RUNS, "y", findings_blocks.Run("analyses.flow", ("--limit", "2"), str(tmp_path / "none.h5")))
    monkeypatch.setitem(findings.BLOCKS, "x", (("y",), lambda paths: "unused"))
    capsys.readouterr()
    assert findings.main(["--check", "--only", "x", "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert "none.h5" in err and "python -m analyses.flow --limit 2" in err
    # a README without the block, and an unknown block name
    assert findings.main(["--check", "--only", "organism", "--readme", str(readme)]) == 1
    assert "no <!-- findings:NAME --> block for organism" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        findings.main(["--only", "nope", "--readme", str(readme)])
    assert e.value.code == 2


def test_every_run_writes_where_its_block_reads():
    for name, (needs, fn) in findings.BLOCKS.items():
        assert callable(fn) and all(r in findings.RUNS for r in needs), name
    for r in findings.RUNS.values():
        cmd = r.command(rerun=True)
        if r.takes_out:
            assert cmd[cmd.index("--out") + 1] == r.out and "--overwrite" in cmd


def _flow_res(strongest: dict[str, dict[str, tuple[float, int]]], L: int = 4, k: int = 2) -> dict:
    """A flow result with 2 kept samples per task whose mean change per window
    is 0 except ``value`` at window centre ``c`` (0-indexed), per edge."""
    tasks = list(next(iter(strongest.values())))
    task = np.repeat(tasks, 2)
    res = {"tasks": tasks, "task": task, "kept": np.ones(len(task), bool), "k": k, "accuracy": 0.9, "flow": {}}
    for e, per in strongest.items():
        f = np.zeros((len(task), L))
        for t, (v, c) in per.items():
            f[task == t, c] = [v - 1, v + 1]  # mean v
        res["flow"][e] = f
    return res


def test_flow_text_follows_the_numbers():
    tasks = ["order3", "direction", "count", "static_color", "ground_color"]
    cf = {"order3": (-70, 1), "direction": (-4, 2), "count": (-66, 1), "static_color": (-0.6, 0), "ground_color": (-1.2, 3)}
    vl = {"order3": (-52, 1), "direction": (-62, 2), "count": (-30, 1), "static_color": (0, 0), "ground_color": (0, 0)}
    vq = {"order3": (-2, 1), "direction": (-1, 1), "count": (-21, 3), "static_color": (0, 0), "ground_color": (0, 0)}
    ql = {t: (-80, 1) for t in tasks}
    ql["ground_color"] = (-40, 2)
    text = findings_blocks.flow_text(_flow_res({"cross_frame": cf, "video_question": vq, "video_last": vl,
                                         "question_last": ql}))
    flat = " ".join(text.split())
    lab = {c: window_label(c, 2, 4) for c in range(4)}
    assert f"compare frames: order of three -70% (layers {lab[1]}) and count -66% (layers {lab[1]});" in flat
    assert "it stays within 1.2%" in flat  # |-1.2| on a one-frame task
    assert f"less than 10%) for direction -4% (layers {lab[2]})." in flat
    assert "straight to the last position, more than through the question tokens" in flat
    assert "on 3 of 3 multi-frame tasks" in flat and f"count -21% (layers {lab[3]}) only" in flat
    assert f"by half or more on 4 of 5 tasks, most of them (4) in the window cutting layers {lab[1]}" in flat
    assert "(10 of 10 samples kept" in flat and "clean accuracy 90.0%" in flat

    # the other way round: the question carries the video
    text = findings_blocks.flow_text(_flow_res({"cross_frame": cf, "video_question": vl, "video_last": vq,
                                         "question_last": ql}))
    flat = " ".join(text.split())
    assert "through the question tokens more than straight to the last position" in flat
    assert "on 0 of 3 multi-frame tasks" in flat and "7B" not in flat


def test_listing_and_signed_percentages():
    assert findings_blocks.listing([]) == "none" and findings_blocks.listing(["a"]) == "a"
    assert findings_blocks.listing(["a", "b", "c"]) == "a, b and c"
    assert [findings_blocks.pct(v) for v in (-70.4, 0.2, 3.0, -0.4)] == ["-70%", "0%", "+3%", "0%"]


def test_organism_block_reads_the_committed_evaluation():
    import json

    ev = json.loads((findings_blocks.ROOT / "organism/checkpoint/evaluation.json").read_text())
    flat = " ".join(findings.render(["organism"])["organism"].split())
    for task in ("direction", "count", "when"):
        o = ev["tasks"][task]["ordered"]
        assert f"{findings_blocks._quoted(task)} {np.mean(o['per_set']):.2f} ± {np.std(o['per_set'], ddof=1):.2f}" in flat
    s = ev["tasks"]["direction"]["single"]["per_set"]
    assert f"direction {np.mean(s):.2f} ± {np.std(s, ddof=1):.2f} against 0.25" in flat
    moves = max(max(ev["tasks"][t][c]["per_set"]) - min(ev["tasks"][t][c]["per_set"])
                for t in ("direction", "rotation", "order", "brightness", "size_change") for c in ("single", "shuffled"))
    assert f"move by up to {100 * moves:.0f} points between sets of {ev['n']}" in flat
    assert f"in each of {len(ev['seed_sets'])} disjoint seed sets" in flat


def test_reasoner_block_follows_its_table(tmp_path):
    import json

    def row(train, long):
        return {"train": {"n": 100, "answer": train}, "long": {"n": 100, "answer": long}}

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"clock": row(0.99, 0.1), "relations": row(0.96, 0.22)}))
    flat = " ".join(findings_blocks.reasoner_block({"reasoner": str(path)}).split())
    assert "clock 0.99, relations 0.96 at the training chain lengths" in flat
    assert "gets 0.10-0.22: it has learnt the lengths it saw, not the procedure." in flat
    path.write_text(json.dumps({"clock": row(0.99, 0.9), "relations": row(0.96, 0.8)}))
    flat = " ".join(findings_blocks.reasoner_block({"reasoner": str(path)}).split())
    assert "gets 0.80-0.90." in flat and "not the procedure" not in flat
