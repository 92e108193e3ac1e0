"""The committed organism: loads through the registry, answers held-out
questions, collapses without frame order, across held-out seed sets; training
is deterministic.

The across-seed assertions read the committed organism/checkpoint/evaluation.json
(3 seed sets x 100 samples, written by `python -m organism.evaluate --card`);
test_evaluation_json_reproduces recomputes one set's cells for two tasks live, so
the file cannot drift from the checkpoint unnoticed."""
import json

import numpy as np
import pytest
import torch

from organism.evaluate import CONDITIONS, HELD_OUT_SEED, accuracy_table, markdown, seed_sets, summarise, \
    training_seed_range
from organism.train import train
from tracing.registry import ORGANISM_DIR, load_model

# Issue 3's tasks, all at its bar (90%).
AT_BAR = ["direction", "rotation", "count", "velocity", "order", "brightness", "size_change", "static_color"]
# Tasks whose answer needs the frame order and has no 2-of-4 shortcut ("order" keeps a coin flip, ~0.5).
COLLAPSE = ("direction", "rotation", "brightness", "size_change")


@pytest.fixture(scope="module")
def result():
    return json.loads((ORGANISM_DIR / "evaluation.json").read_text())


def test_ordered_accuracy_in_every_seed_set(result):
    assert len(result["seed_sets"]) >= 3
    for t in AT_BAR:
        assert min(result["tasks"][t]["ordered"]["per_set"]) >= 0.9, (t, result["tasks"][t]["ordered"])


def test_single_frame_and_shuffle_collapse_across_seeds(result):
    # 100 samples per set: binomial sd ~0.05 at chance 0.5; the sets' spread is larger still.
    for t in COLLAPSE:
        r = result["tasks"][t]
        for cond in ("single", "shuffled"):
            c = r[cond]
            assert max(c["per_set"]) <= r["chance"] + 0.25, (t, cond, c)
            assert c["mean"] <= r["chance"] + max(2 * c["sd"], 0.1), (t, cond, c)
            assert c["mean"] <= r["ordered"]["mean"] - 0.3, (t, cond, c)
    s = result["tasks"]["static_color"]
    for cond in CONDITIONS:
        assert min(s[cond]["per_set"]) >= 0.9, (cond, s[cond])


def test_mean_and_spread_are_numpys(result):
    k = len(result["seed_sets"])
    assert result["spread"] == "sd"
    for t, r in result["tasks"].items():
        for cond in CONDITIONS:
            c = r[cond]
            assert len(c["per_set"]) == k, (t, cond)
            assert c["mean"] == pytest.approx(np.mean(c["per_set"]), abs=1e-12), (t, cond)
            assert c["sd"] == pytest.approx(np.std(c["per_set"], ddof=1), abs=1e-12), (t, cond)


def test_seed_sets_are_disjoint_and_held_out(result):
    sets, n = result["seed_sets"], result["n"]
    assert sets == seed_sets(len(sets), n)
    assert sets[0][0] == HELD_OUT_SEED  # set 0 is the set that the one-set card used
    log = json.loads((ORGANISM_DIR / "train_log.json").read_text())
    assert result["training_seeds"] == training_seed_range(log) == [0, 172_783]
    assert training_seed_range(log, blocks=True) == [0, 172_799]  # tests/test_synthetic.py counts whole blocks
    spans = sorted(sets)
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b < c
    for a, b in sets:
        assert b - a + 1 == n
        assert a >= HELD_OUT_SEED > result["training_seeds"][1]


def test_card_shows_the_stored_result(result):
    card = (ORGANISM_DIR / "README.md").read_text()
    assert markdown(result) in card
    assert "172,783" in card and all(f"{a:,}-{b:,}" in card for a, b in result["seed_sets"])


def test_summarise_on_made_up_sets():
    tables = [{"x": {"chance": 0.5, **{c: v for c in CONDITIONS}}} for v in (0.2, 0.4, 0.9)]
    out = summarise(tables, 10, seed_sets(3, 10), [0, 5])
    assert out["tasks"]["x"]["single"] == {"per_set": [0.2, 0.4, 0.9], "mean": pytest.approx(0.5),
                                           "sd": pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))}
    assert "0.50 ± 0.36" in markdown(out)
    with pytest.raises(ValueError):
        seed_sets(3, 100_001)  # sets would overlap


def test_evaluation_json_reproduces(result):
    """The last seed set, two tasks, every condition, recomputed from the checkpoint."""
    torch.set_num_threads(1)
    lm = load_model("organism")
    (first, _), n = result["seed_sets"][-1], result["n"]
    live = accuracy_table(lm, ["direction", "size_change"], n, seed0=first, progress=False)
    for t, row in live.items():
        for cond in CONDITIONS:
            # one sample's answer may flip between thread counts on a near tie
            assert abs(row[cond] - result["tasks"][t][cond]["per_set"][-1]) <= 1.0 / n + 1e-9, (t, cond, row)


def test_training_is_deterministic():
    a = train(steps=3, seed=1, out=None, batch=4, threads=1, log_every=1000)
    b = train(steps=3, seed=1, out=None, batch=4, threads=1, log_every=1000)
    assert [e["loss"] for e in a] == [e["loss"] for e in b]
    assert not np.allclose([e["loss"] for e in a], [e["loss"] for e in train(steps=3, seed=2, out=None, batch=4, threads=1, log_every=1000)])


def test_resume_continues_the_log_and_the_weights(tmp_path):
    import json

    import transformers

    first = tmp_path / "a"
    train(steps=2, seed=1, out=first, batch=4, threads=1, log_every=1000)
    # lr 0: the resumed run must end with exactly the weights it started from, the first run's.
    log = train(steps=2, seed=1, out=tmp_path / "b", batch=4, lr=0.0, threads=1, log_every=1000, resume=first,
                weights={"rotation": 3.0})
    saved = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert [e["step"] for e in log] == [0, 1, 2, 3] and saved["steps"] == 4
    assert [s["from_step"] for s in saved["stages"]] == [0, 2] and saved["stages"][1]["weights"] == {"rotation": 3.0}
    m = transformers.LlavaNextVideoForConditionalGeneration
    a, b = m.from_pretrained(first).state_dict(), m.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = train.__globals__["build_model"](m.from_pretrained(first).config, 1).state_dict()
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # and the first run did train
    with pytest.raises(FileNotFoundError, match="train_log.json"):
        train(steps=1, seed=1, out=None, batch=4, threads=1, resume=tmp_path)
