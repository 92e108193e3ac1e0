"""The TransformerLens backend (tracing/hooked.py) on tiny-llama: parity with
the plain Hugging Face forward and with the nnsight backend at every hook both
have, the HDF5 path through the CLI, and the refusal of video models."""
import re

import numpy as np
import pytest
import torch

from tasks.synthetic import caption_prompt, render
from analyses.capture import capture_dataset, main
from analyses.run import RunError, UsageError, cli_boundary
from tracing.capture import capture
from tracing.hooked import TL_HOOKS, to_hooked
from tracing.inputs import build_inputs, build_sample_inputs
from tracing.registry import load_model
from tracing.store import CacheReader

torch.set_num_threads(1)
TOL = dict(rtol=0, atol=1e-5)  # float32; TL computes attention with its own einsums
ALL = ["embed", "resid_pre", "pattern", "attn_out", "mlp_out", "resid_post", "ln_final"]


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", attn="eager")  # eager: nnsight's patterns need it


@pytest.fixture(scope="module")
def prompt(lm):
    s = render("direction", seed=3)
    return build_sample_inputs(lm, s, context=caption_prompt(s))


def test_tiny_llama_is_a_text_model(lm, prompt):
    inp, lay = prompt
    assert lm.family.name == "causal_lm" and lm.recipe is None and lm.n_layers == 4
    assert lay.frames == [] and lay.extra["context"][1] > lay.extra["context"][0]
    assert lm.tokenizer.unk_token_id not in inp["input_ids"][0].tolist()  # captions are in its vocabulary
    assert load_model("tiny-llama").fingerprint == lm.fingerprint  # seeded: same weights every time


def test_residual_stream_equals_hf_hidden_states(lm, prompt):
    inp, lay = prompt
    with torch.no_grad():
        hs = lm.model(**inp, output_hidden_states=True).hidden_states
    acts = capture(lm, inp, lay, ["resid_pre", "resid_post", "ln_final"], backend="transformer_lens")
    for l in range(lm.n_layers):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_pre"], hs[l][0], **TOL)
    for l in range(lm.n_layers - 1):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_post"], hs[l + 1][0], **TOL)
    # HF's last hidden_states entry is after the final norm: TL's ln_final scaled by its gain.
    torch.testing.assert_close(acts["ln_final.hook_normalized"], hs[-1][0], **TOL)


def test_logits_equal_hf_logits(lm, prompt):
    inp, _ = prompt
    with torch.no_grad():
        ref = lm.model(**inp).logits
        got = to_hooked(lm)(inp["input_ids"])
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # Not a trivially flat distribution: the sharpened tiny model has a clear top token.
    assert ref[0, -1].softmax(-1).max() > 5 / ref.shape[-1]


def test_weights_are_not_processed(lm):
    # fold_ln / centring off: TL's weights are HF's (up to TL's own layout), in the same basis.
    tl = to_hooked(lm)
    hf = lm.model.model
    torch.testing.assert_close(tl.embed.W_E, hf.embed_tokens.weight, rtol=0, atol=0)
    torch.testing.assert_close(tl.blocks[1].ln1.w, hf.layers[1].input_layernorm.weight, rtol=0, atol=0)
    torch.testing.assert_close(tl.ln_final.w, hf.norm.weight, rtol=0, atol=0)
    torch.testing.assert_close(tl.unembed.W_U, lm.model.lm_head.weight.T, rtol=0, atol=0)
    assert to_hooked(lm) is tl  # built once per loaded model


@pytest.mark.parametrize("positions", ["all", "last", "question"])
def test_backends_agree_at_every_shared_hook(lm, prompt, positions):
    inp, lay = prompt
    ours = capture(lm, inp, lay, ALL, positions, backend="nnsight")
    tl = capture(lm, inp, lay, ALL, positions, backend="transformer_lens")
    assert list(tl) == list(ours)  # same names, same (execution) order
    kinds = {re.sub(r"^blocks\.\d+\.", "blocks.{l}.", n) for n in ours}
    assert kinds == set(TL_HOOKS)  # every hook of the table was compared
    for name, x in ours.items():
        assert tl[name].shape == x.shape, name
        torch.testing.assert_close(tl[name], x, **TOL, msg=lambda m: f"{name}: {m}")
    if positions == "all":
        T = lay.n_tokens
        assert ours["blocks.2.attn.hook_pattern"].shape == (4, T, T)
        torch.testing.assert_close(ours["blocks.2.attn.hook_pattern"].sum(-1), torch.ones(4, T))


def test_layers_subset_and_frame_positions(lm, prompt):
    inp, lay = prompt
    one = capture(lm, inp, lay, ["resid_post"], "last", layers=[1], backend="transformer_lens")
    assert list(one) == ["blocks.1.hook_resid_post"] and one["blocks.1.hook_resid_post"].shape == (64,)
    full = capture(lm, inp, lay, ["resid_post"], "last", backend="transformer_lens")
    torch.testing.assert_close(one["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no frames"):
        capture(lm, inp, lay, ["resid_post"], "frame_mean", backend="transformer_lens")
    with pytest.raises(KeyError, match="has no vision side"):
        capture(lm, inp, lay, ["projector"], backend="transformer_lens")
    with pytest.raises(ValueError, match="backend='tl'"):
        capture(lm, inp, lay, ["resid_post"], backend="tl")


def test_video_model_is_refused(tmp_path):
    video = load_model("tiny-llava-next")
    inp, lay = build_inputs(video, np.zeros((2, 32, 32, 3), np.uint8), "Which way?", ["left", "right"])
    with pytest.raises(ValueError, match="no vision towers.*backend='nnsight'"):
        capture(video, inp, lay, ["resid_post"], backend="transformer_lens")
    with pytest.raises(ValueError, match="no vision towers"):
        to_hooked(video)
    out = tmp_path / "v.h5"
    with pytest.raises(ValueError, match="no vision towers"):
        capture_dataset(video, [render("direction", seed=0)], "resid_post", out, backend="transformer_lens",
                        progress=False)
    assert not out.exists()


def test_cli_backend_into_hdf5(lm, tmp_path, capsys):
    out = tmp_path / "tl.h5"
    argv = ["--model", "tiny-llama", "--tasks", "direction,count", "--limit", "2", "--frames", "8",
            "--hooks", "resid_post,ln_final", "--positions", "last", "--out", str(out)]
    main(argv + ["--backend", "transformer_lens"])
    r = CacheReader(out)
    assert r.samples["complete"].all() and r.config["backend"] == "transformer_lens"
    got = r.acts("blocks.3.hook_resid_post")
    assert got.shape == (4, 64)
    # Each stored row equals the nnsight backend on the same caption prompt.
    from tasks.datasets import load_dataset
    samples = load_dataset("synthetic", n_frames=8, limit=2, tasks=["direction", "count"]).samples
    for i, s in enumerate(samples):
        inp, lay = build_sample_inputs(lm, s, context=caption_prompt(s))
        ref = capture(lm, inp, lay, ["blocks.3.hook_resid_post"], "last")["blocks.3.hook_resid_post"]
        np.testing.assert_allclose(got[i], ref.numpy(), rtol=0, atol=1e-5)
    # The other backend is another configuration: refused, not appended to.
    with pytest.raises(RunError, match="config.backend"):
        main(argv + ["--backend", "nnsight"])
    # A video model with the TL backend: a usage error naming the reason, nothing written.
    with pytest.raises(UsageError, match="no vision towers"):
        main(["--model", "tiny-llava-next", "--backend", "transformer_lens", "--out", str(tmp_path / "v.h5")])
    capsys.readouterr()
    assert cli_boundary(main)(["--model", "tiny-llava-next", "--backend", "transformer_lens",
                               "--out", str(tmp_path / "v.h5")]) == 2
    err = capsys.readouterr().err
    assert "no vision towers" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v.h5").exists()
