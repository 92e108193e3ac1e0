"""tracing/attention_stats.py against materialised eager attention maps.

The reference takes the maps the model itself returns (``output_attentions``
under eager) and applies the formulas of PAPERS.md section 4 in float64
numpy, entry by entry; nothing of the streamed code is reused.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from tracing.attention_stats import HORIZONS, Horizon, StatsSpec, attention_stats
from tracing.inputs import build_inputs
from tracing.registry import TINY_MODELS, TINY_TEXT_MODELS, load_model

torch.set_num_threads(1)
TOL = 1e-5
W = 10
# v1's [10, 50], the analysis' "to the end", and a short one whose T(s) is empty
# over the last 2 positions (s + 2 > T - 1).
SPEC_HORIZONS = (HORIZONS["v1"], HORIZONS["end"], Horizon("near", 2, 5))

_MODELS: dict = {}


def model(name, attn="eager"):
    if (name, attn) not in _MODELS:
        _MODELS[name, attn] = load_model(name, attn=attn)
    return _MODELS[name, attn]


def video_prompt(lm, n_frames=3):
    size = lm.config.vision_config.image_size if lm.name == "organism" else 96
    frames = np.random.default_rng(0).integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8)
    return build_inputs(lm, frames, "Which way does the object move ?", ["left", "right", "up"], answer=1)


def text_prompt(lm):
    if lm.name == "reasoner":
        from tasks.reasoning import problem_set
        from tracing.traces import trace_inputs
        return trace_inputs(lm.tokenizer, problem_set(["clock"], 1, seed=3)[0])
    return build_inputs(lm, None, "Which way does the object move ?", ["left", "right", "up"], answer=1)


def spec_for(layout, T, chunk):
    rows = np.zeros(T, bool)
    rows[layout.question.start:] = True  # everything after the video (the text models: after <s>)
    frames = sorted({(s.start, s.end) for s in layout.frames})
    spans = {"system": (layout.system.start, layout.system.end), "video": (layout.video.start, layout.video.end),
             "question": (layout.question.start, layout.question.end), "last": (layout.last, layout.last + 1)}
    return StatsSpec(rows=rows, window=W, horizons=SPEC_HORIZONS, frames=frames, spans=spans, chunk=chunk)


def reference(maps: np.ndarray, spec: StatsSpec) -> dict[str, np.ndarray]:
    """The formulas, over materialised maps [L, H, T, T] (float64)."""
    L, H, T, _ = maps.shape
    t = np.arange(T)[:, None]
    s = np.arange(T)[None, :]
    dist = np.where(s <= t, t - s, 0).astype(float)
    out = {"span_term": (maps * dist).sum(-1), "waad": (maps * np.minimum(dist, W)).sum(-1)}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["entropy"] = -np.where(maps > 0, maps * np.log(maps), 0.0).sum(-1)
    rows = np.asarray(spec.rows)
    for h in spec.horizons:
        hi = T if h.hi is None else h.hi
        fai = np.full((L, H, T), np.nan)
        for key in range(T):
            ts = [q for q in range(T) if rows[q] and key + h.lo <= q <= key + hi]
            if ts:
                fai[:, :, key] = maps[:, :, ts, key].mean(-1)
        out[f"fai_{h.name}"] = fai

    def mass(groups):
        return np.array([[maps[:, :, a:b, c:d].sum((-1, -2)) for (c, d) in groups] for (a, b) in groups]
                        ).transpose(2, 3, 0, 1) if groups else np.zeros((L, H, 0, 0))

    out["frame_mass"] = mass(list(spec.frames))
    out["span_mass"] = mass(list(spec.spans.values()))
    return out


def check(lm, inputs, layout, chunk):
    T = inputs["input_ids"].shape[1]
    spec = spec_for(layout, T, chunk)
    with torch.no_grad():
        plain = lm.model(**inputs, output_attentions=True)
        with attention_stats(lm, spec) as st:
            streamed = lm.model(**inputs)
    # the layers' outputs are the model's own
    assert torch.equal(plain.logits, streamed.logits)
    maps = np.stack([a[0].double().numpy() for a in plain.attentions])
    ref = reference(maps, spec)
    got = st.numpy()
    assert set(got) == set(ref)
    for name, r in ref.items():
        assert got[name].shape == r.shape, name
        assert np.array_equal(np.isnan(got[name]), np.isnan(r)), name
        np.testing.assert_allclose(np.nan_to_num(got[name]), np.nan_to_num(r), rtol=TOL, atol=TOL, err_msg=name)
    for h in spec.horizons:  # counts: |T(s)| by hand
        hi = T if h.hi is None else h.hi
        rows = np.asarray(spec.rows)
        want = [sum(rows[q] for q in range(T) if key + h.lo <= q <= key + hi) for key in range(T)]
        assert st.fai_count(h.name).tolist() == want
    return ref


@pytest.mark.parametrize("name", TINY_MODELS + ("organism",))
def test_video_models_against_eager_maps(name):
    lm = model(name)
    inputs, layout = video_prompt(lm)
    ref = check(lm, inputs, layout, chunk=7)  # boundaries inside frames and at odd offsets
    assert np.isnan(ref["fai_near"][..., -2:]).all() and not np.isnan(ref["fai_near"][..., -3]).any()
    assert ref["frame_mass"].shape[-1] == len({(s.start, s.end) for s in layout.frames}) >= 2


@pytest.mark.parametrize("name", TINY_TEXT_MODELS + ("reasoner",))
def test_text_models_against_eager_maps(name):
    lm = model(name)
    inputs, layout = text_prompt(lm)
    for chunk in (1, 16, None):  # a row at a time, boundaries, one chunk for all
        check(lm, inputs, layout, chunk)


def test_chunks_sized_by_their_keys(monkeypatch):
    """The automatic plan (chunk=None) on a long input: early chunks, reading
    fewer keys, take more rows; with a small score budget a prompt of a few
    hundred tokens gets chunks of many sizes, checked against the maps."""
    from tracing import attention_stats as stats

    assert stats.chunk_plan(4, 100, 7)[-2:] == [(91, 98), (98, 100)]
    plan = stats.chunk_plan(4, 5000)
    assert plan[0][0] == 0 and plan[-1][1] == 5000 and all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    sizes = [j - i for i, j in plan]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 362 and sizes[-2] == 26  # the last: what is left
    assert all(4 * (j - i) * j <= stats.SCORES_PER_CHUNK for i, j in plan)
    monkeypatch.setattr(stats, "SCORES_PER_CHUNK", 4 * 64 * 64)  # 64 rows, then 39, 30, 25, 22, ...
    lm = model("tiny-llava-next")
    inputs, layout = video_prompt(lm)
    plan = stats.chunk_plan(lm.text_config.num_attention_heads, inputs["input_ids"].shape[1])
    assert len({j - i for i, j in plan}) > 5
    check(lm, inputs, layout, chunk=None)


def test_sdpa_model_gives_the_same_statistics():
    eager, sdpa = model("tiny-qwen2-vl"), model("tiny-qwen2-vl", "sdpa")
    inputs, layout = video_prompt(eager)
    spec = spec_for(layout, inputs["input_ids"].shape[1], 32)
    got = {}
    for lm in (eager, sdpa):
        with torch.no_grad(), attention_stats(lm, spec, layers=[0, 2]) as st:
            lm.model(**inputs)
        got[lm.text_config._attn_implementation] = st.numpy()
    for n, a in got["eager"].items():
        np.testing.assert_allclose(np.nan_to_num(got["sdpa"][n]), np.nan_to_num(a), rtol=TOL, atol=TOL, err_msg=n)
    assert got["eager"]["waad"].shape[0] == 2


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="horizon"):
        StatsSpec(horizons=("v9",))
    with pytest.raises(ValueError, match="lo <= hi"):
        Horizon("x", 10, 5)
    with pytest.raises(ValueError, match="window"):
        StatsSpec(window=0)
    lm = model("reasoner")
    inputs, _ = text_prompt(lm)
    T = inputs["input_ids"].shape[1]
    with pytest.raises(ValueError, match="rows"), attention_stats(lm, StatsSpec(rows=[True] * (T - 1))):
        lm.model(**inputs)
    with pytest.raises(ValueError, match="outside"), attention_stats(lm, StatsSpec(spans={"x": (0, T + 1)})):
        lm.model(**inputs)


def test_padded_batch_under_sdpa_against_eager_maps():
    """Left padding: sdpa's boolean mask reaches the statistics; each row of
    the batch against the eager maps of the same padded batch."""
    from tasks.reasoning import problem_set
    from tracing.traces import prompt_ids
    eager, sdpa = model("reasoner"), model("reasoner", "sdpa")
    ids = [prompt_ids(eager.tokenizer, p) for p in problem_set(["clock", "weekday"], 1, seed=5)]
    T = max(map(len, ids))
    pad = eager.tokenizer.pad_token_id
    inputs = {"input_ids": torch.tensor([[pad] * (T - len(x)) + x for x in ids]),
              "attention_mask": torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in ids])}
    assert len(set(map(len, ids))) > 1
    spec = StatsSpec(rows=[t >= T // 2 for t in range(T)], horizons=SPEC_HORIZONS, spans={"a": (0, 5), "b": (5, T)},
                     chunk=9)
    with torch.no_grad():
        plain = eager.model(**inputs, output_attentions=True)
        with attention_stats(sdpa, spec) as st:
            sdpa.model(**inputs)
    for b in range(2):
        pad = inputs["attention_mask"][b].numpy() == 0
        maps = np.stack([a[b].double().numpy() for a in plain.attentions])
        maps[:, :, pad] = 0.0  # padding queries are no part of the sequence
        ref = reference(maps, spec)
        for name in ("span_term", "waad", "entropy"):
            ref[name][..., pad] = np.nan
        got = st.numpy(batch=b)
        for name, r in ref.items():
            np.testing.assert_allclose(np.nan_to_num(got[name]), np.nan_to_num(r), rtol=TOL, atol=TOL, err_msg=name)


# -- the fused C kernel (tracing/stats_kernel.py) ---------------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS + TINY_TEXT_MODELS + ("organism", "reasoner"))
def test_fused_kernel_against_eager_maps(name):
    """sdpa without a mask takes the kernel (grouped-query heads in the tiny
    families); its statistics against the same formulas over the eager maps of
    the same weights, and the layers' outputs are the sdpa model's own."""
    eager, sdpa = model(name), model(name, "sdpa")
    inputs, layout = (text_prompt if name in TINY_TEXT_MODELS + ("reasoner",) else video_prompt)(eager)
    T = inputs["input_ids"].shape[1]
    spec = spec_for(layout, T, None)
    with torch.no_grad():
        maps = np.stack([a[0].double().numpy() for a in eager.model(**inputs, output_attentions=True).attentions])
        own = sdpa.model(**inputs)
        with attention_stats(sdpa, spec, kernel="c") as st:
            streamed = sdpa.model(**inputs)
    assert set(st.path.values()) == {"c"} and len(st.path) == sdpa.n_layers
    assert torch.equal(own.logits, streamed.logits)
    got, ref = st.numpy(), reference(maps, spec)
    for n, r in ref.items():
        assert np.array_equal(np.isnan(got[n]), np.isnan(r)), n
        np.testing.assert_allclose(np.nan_to_num(got[n]), np.nan_to_num(r), rtol=TOL, atol=TOL, err_msg=n)


def test_fused_kernel_on_an_unpadded_batch_equals_the_torch_path():
    """Two sequences of one length: no mask, so the kernel runs over (batch,
    head) pairs; each row of the batch equals the torch path's."""
    from tasks.reasoning import problem_set
    from tracing.traces import prompt_ids

    lm = model("reasoner", "sdpa")
    ids = [prompt_ids(lm.tokenizer, p) for p in problem_set(["clock", "weekday", "timestamps"], 4, seed=7)]
    n = min(map(len, ids))
    batch = {"input_ids": torch.tensor([x[:n] for x in ids[:3]])}
    spec = StatsSpec(rows=[t >= n // 3 for t in range(n)], horizons=SPEC_HORIZONS, spans={"a": (0, 6), "b": (4, n)})
    got = {}
    for kernel in ("c", "torch"):
        with torch.no_grad(), attention_stats(lm, spec, kernel=kernel) as st:
            lm.model(**batch)
        assert set(st.path.values()) == {kernel}
        got[kernel] = st.numpy(batch=None)
    for name, a in got["torch"].items():
        assert a.shape[0] == 3, name
        np.testing.assert_allclose(np.nan_to_num(got["c"][name]), np.nan_to_num(a), rtol=TOL, atol=TOL, err_msg=name)


def test_without_a_compiler_the_torch_path_runs(monkeypatch, tmp_path):
    """No compiler: 'auto' warns once and takes the torch path, 'c' says why;
    a mask under kernel='c' and an unknown kernel are refused by name."""
    from tracing import stats_kernel

    monkeypatch.setattr(stats_kernel, "_state", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("CHRONOLENS_KERNEL_CACHE", str(tmp_path / "cache"))
    lm = model("reasoner", "sdpa")
    inputs, _ = text_prompt(lm)
    with pytest.warns(UserWarning, match="torch path"), torch.no_grad(), attention_stats(lm, StatsSpec()) as st:
        lm.model(**inputs)
    assert set(st.path.values()) == {"torch"} and "no-such-cc" in stats_kernel.why()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-built
    with pytest.raises(RuntimeError, match="unavailable"), torch.no_grad(), attention_stats(lm, StatsSpec(),
                                                                                         kernel="c"):
        lm.model(**inputs)
    monkeypatch.setattr(stats_kernel, "_state", {})
    monkeypatch.delenv("CC")
    if stats_kernel._compiler():  # a fresh build into the empty cache: one library, nothing left aside
        assert stats_kernel.library() is not None
        built = [f.name for f in (tmp_path / "cache").iterdir()]
        assert len(built) == 1 and built[0].startswith("stats_kernel-") and built[0].endswith(".so")
    with pytest.raises(ValueError, match="no attention mask"), torch.no_grad(), \
            attention_stats(model("reasoner"), StatsSpec(), kernel="c"):  # eager: a mask
        model("reasoner").model(**inputs)
    with pytest.raises(ValueError, match="unknown kernel"), attention_stats(lm, StatsSpec(), kernel="cuda"):
        pass


def kernel_equals_torch_path(spec, q, k, scaling, where=""):
    """One layer's statistics of random queries and keys on the kernel and on
    the torch path, no model: equal to TOL."""
    from tracing.attention_stats import AttentionStats

    got = {}
    for kernel in ("c", "torch"):
        st = AttentionStats(spec, [0], kernel)
        st._record(0, None, q, k, None, scaling)
        assert st.path == {0: kernel}
        got[kernel] = st.numpy(batch=None)
    for name, a in got["torch"].items():
        np.testing.assert_allclose(np.nan_to_num(got["c"][name]), np.nan_to_num(a), rtol=TOL, atol=TOL,
                                   err_msg=f"{name}{where}")


@pytest.mark.parametrize("d, heads, kv_heads", [(6, 6, 3), (8, 4, 1), (24, 4, 2), (128, 7, 1)])
def test_fused_kernel_on_any_head_size(d, heads, kv_heads):
    """Head sizes off the eight-coordinate passes (6) and on them (8: one
    pass; 24: three; 128, the published 7B models', sixteen), with
    grouped-query heads (seven per key head as in Qwen2-VL-7B's 28 over 4):
    the kernel's numbers against the torch path's on random queries and keys,
    no model."""
    g = torch.Generator().manual_seed(d)
    T, H = 90, heads
    q, k = torch.randn(2, H, T, d, generator=g) * 2, torch.randn(2, kv_heads, T, d, generator=g)
    spec = StatsSpec(rows=[t % 3 > 0 for t in range(T)], horizons=SPEC_HORIZONS, frames=[(5, 30), (30, 55)],
                     spans={"a": (0, 5), "b": (55, T)})
    kernel_equals_torch_path(spec, q, k, d ** -0.5)


def test_fused_kernel_on_short_sequences():
    """The kernel takes query rows four at a time: sequences of 1 to 9 tokens
    (no block, one block and a tail, two blocks and a tail) against the torch
    path, on random queries and keys."""
    g = torch.Generator().manual_seed(11)
    for T in range(1, 10):
        q, k = torch.randn(1, 4, T, 8, generator=g) * 2, torch.randn(1, 2, T, 8, generator=g)
        spec = StatsSpec(rows=[True] * T, horizons=SPEC_HORIZONS, spans={"a": (0, (T + 1) // 2), "b": (T // 2, T)})
        kernel_equals_torch_path(spec, q, k, 8 ** -0.5, f" at {T} tokens")


def _kernel_sums(seed: int) -> dict:
    from tracing import stats_kernel

    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 4, 40, 8, generator=g), torch.randn(2, 2, 40, 8, generator=g)
    return stats_kernel.row_stats(q, k, 8 ** -0.5, 10, torch.ones(40, dtype=torch.bool), [(0, None)], [(0, 20)])


def _in_forked_child(conn):
    torch.set_num_threads(2)  # torch starts a forked child on one thread
    conn.send({n: a.numpy() for n, a in _kernel_sums(5).items()})


def test_kernel_threads_split_the_heads_and_survive_a_fork():
    """Two threads split the (batch, head) pairs over a kept pool: the same
    numbers as one thread; a child forked after the pool started computes the
    same again (a pool copied into a child has no threads and would hang)."""
    import multiprocessing

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _kernel_sums(5)
        torch.set_num_threads(2)
        two = _kernel_sums(5)
        for n in one:
            assert torch.equal(one[n], two[n]), n  # each head computed alike whichever thread runs it
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_in_forked_child, args=(child,))
        p.start()
        try:
            assert parent.poll(60), "the forked child's kernel call did not finish"
            got = parent.recv()
        finally:
            p.join(10)
            if p.is_alive():
                p.kill()
        for n in one:
            np.testing.assert_array_equal(got[n], one[n].numpy(), err_msg=n)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("avx512", [True, False])
def test_both_exponentials_of_the_kernel(avx512, monkeypatch, tmp_path):
    """The kernel's two exponentials (exp16 under AVX-512, libmvec's expf
    elsewhere, built here with -mno-avx512f) against the torch path, on rows
    from flat to so peaked that most exponentials underflow to zero."""
    import platform

    from tracing import stats_kernel

    if not avx512:
        if platform.machine().lower() not in ("x86_64", "amd64") or not stats_kernel._compiler():
            pytest.skip("-mno-avx512f is an x86 compiler flag")
        monkeypatch.setattr(stats_kernel, "FLAGS", stats_kernel.FLAGS + ("-mno-avx512f",))
        monkeypatch.setattr(stats_kernel, "_state", {})
        monkeypatch.setenv("CHRONOLENS_KERNEL_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(3)
    T, H, d = 70, 4, 16  # 70 keys: four full vectors of 16 and a tail of 6
    spec = StatsSpec(rows=[t % 2 == 0 for t in range(T)], horizons=SPEC_HORIZONS, frames=[(3, 20), (20, 37)])
    for scale in (0.01, 1.0, 30.0):  # scores' spread ~0.04, ~4, ~120
        q, k = torch.randn(1, H, T, d, generator=g) * scale, torch.randn(1, 2, T, d, generator=g)
        kernel_equals_torch_path(spec, q, k, d ** -0.5, f" at scale {scale}")
        if not avx512:
            assert str(tmp_path) in str(stats_kernel.library()._name)  # the -mno-avx512f build ran


def test_a_kernel_that_does_not_load_leaves_the_torch_path(monkeypatch, tmp_path):
    """A build that succeeds but whose library cannot be loaded (as one built
    against a missing libmvec would fail): 'auto' says why and the statistics
    still come, from the torch path."""
    import subprocess

    from tracing import stats_kernel

    def compiler(cmd, **kw):  # stands in for cc: writes a file that is no shared library where -o says
        Path(cmd[cmd.index("-o") + 1]).write_text("not a shared library")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(stats_kernel, "_state", {})
    monkeypatch.setenv("CHRONOLENS_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(stats_kernel, "_compiler", lambda: "cc")
    monkeypatch.setattr(stats_kernel.subprocess, "run", compiler)
    lm = model("reasoner", "sdpa")
    inputs, _ = text_prompt(lm)
    with pytest.warns(UserWarning, match="does not load"), torch.no_grad(), attention_stats(lm, StatsSpec()) as st:
        lm.model(**inputs)
    assert set(st.path.values()) == {"torch"}
