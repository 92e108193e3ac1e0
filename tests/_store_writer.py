"""A small capture run for tests/test_store.py, which runs it as a subprocess
and kills it with SIGKILL at random moments.

Every sample's data are a pure function of its index, so a resumed run must end
with exactly the data of an uninterrupted one. Prints "open" once the file is
open and "done <i>" after each sample is written.

usage: python tests/_store_writer.py OUT.h5 [SLEEP_S]
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tracing.store import CacheWriter, SampleMeta  # noqa: E402

N, MAX_POS, D_MODEL, N_HEADS = 50, 72, 384, 4
HOOKS = {
    "blocks.0.hook_resid_post": ((MAX_POS, D_MODEL), "float32"),
    "blocks.1.hook_resid_post": ((MAX_POS, D_MODEL), "float32"),
    "blocks.1.attn.hook_pattern": ((N_HEADS, MAX_POS, MAX_POS), "float32"),
}
CONFIG = {"positions": "all", "hooks": sorted(HOOKS), "seed": 0, "frames": {"n": 8, "fps": 2}}


def samples(n=N):
    return [SampleMeta(id=f"s{i:03d}", task="order" if i % 2 else "count", gold=i % 4,
                       predicted=(7 * i) % 4, meta={"n_frames": 8 + i % 3}) for i in range(n)]


def sample_data(i):
    """(acts, layout, meta) of sample i; the token count varies with i."""
    rng = np.random.default_rng(1000 + i)
    n = 40 + (37 * i) % 29  # 40..68 positions; samples i and i + 29 have the same
    acts = {
        "blocks.0.hook_resid_post": rng.standard_normal((n, D_MODEL), dtype=np.float32),
        "blocks.1.hook_resid_post": rng.standard_normal((n, D_MODEL), dtype=np.float32),
        "blocks.1.attn.hook_pattern": rng.random((N_HEADS, n, n), dtype=np.float32),
    }
    layout = {"frames": [[4 + 4 * f, 8 + 4 * f] for f in range(8)], "question": [36, n - 5],
              "options": [[n - 5 + k, n - 4 + k] for k in range(4)], "last": n - 1}
    return acts, layout, {"pred": int(rng.integers(4)), "n_tokens": n}


def run(path, sleep=0.0, float16=False, stop_after=None):
    with CacheWriter.open(path, "tiny-test", "fp-0123", "synthetic", CONFIG, samples(),
                          HOOKS, float16=float16) as w:
        print("open", flush=True)
        for k, i in enumerate(w.pending()):
            if stop_after is not None and k >= stop_after:
                break
            w.write_sample(i, *sample_data(i))
            print(f"done {i}", flush=True)
            time.sleep(sleep)


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
