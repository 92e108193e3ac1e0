"""The committed organism: loads through the registry, answers held-out
questions, collapses without frame order; training is deterministic."""
import numpy as np
import pytest
import torch

from organism.evaluate import accuracy_table
from organism.train import train
from tracing.registry import ORGANISM_DIR, load_model

pytestmark = pytest.mark.skipif(not (ORGANISM_DIR / "config.json").exists(), reason="organism checkpoint missing")
# Tasks that reach the bar; rotation, count and velocity do not yet
# (the model card gives their numbers) and are checked only against chance.
AT_BAR = ["direction", "order", "brightness", "size_change", "static_color"]
BELOW_BAR = ["rotation", "count", "velocity"]


@pytest.fixture(scope="module")
def table():
    torch.set_num_threads(1)
    lm = load_model("organism")
    return accuracy_table(lm, AT_BAR + BELOW_BAR, n=40, progress=False)


def test_ordered_accuracy(table):
    for t in AT_BAR:
        assert table[t]["ordered"] >= 0.9, (t, table[t])
    for t in BELOW_BAR:
        assert table[t]["ordered"] >= table[t]["chance"] + 0.1, (t, table[t])


def test_single_frame_and_shuffle_collapse(table):
    # 40 samples, 4 options: chance 0.25, binomial sd ~0.07
    assert table["direction"]["single"] <= 0.45
    assert table["direction"]["shuffled"] <= 0.5
    assert table["static_color"]["single"] >= 0.9
    assert table["static_color"]["shuffled"] >= 0.9


def test_training_is_deterministic():
    a = train(steps=3, seed=1, out=None, batch=4, threads=1, log_every=1000)
    b = train(steps=3, seed=1, out=None, batch=4, threads=1, log_every=1000)
    assert [e["loss"] for e in a] == [e["loss"] for e in b]
    assert not np.allclose([e["loss"] for e in a], [e["loss"] for e in train(steps=3, seed=2, out=None, batch=4, threads=1, log_every=1000)])
