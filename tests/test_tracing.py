"""Foundation checks on every tiny family: preprocessing against the family's
own image processor, TokenLayout spans, capture against output_hidden_states,
registry errors, and the capture CLI into HDF5."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from tracing.capture import capture
from tracing.inputs import build_inputs, video_token_id
from tracing.preprocess import Recipe, pixel_values, qwen_patches
from tracing.registry import ModelNotFoundError, TINY_MODELS, load_model
from tracing.store import CacheReader

torch.set_num_threads(1)
RNG = np.random.default_rng(0)
FRAMES = RNG.integers(0, 255, (4, 64, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=TINY_MODELS)
def lm(request):
    return load_model(request.param)


def test_clip_recipe_matches_clip_image_processor():
    r = Recipe("shortest_edge_crop", size=48)
    ref = transformers.CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    ours = pixel_values(FRAMES, r)
    theirs = np.stack([ref(images=[f], return_tensors="np")["pixel_values"][0] for f in FRAMES])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_square_recipe_matches_image_processor_without_crop():
    # OneVision's video processor: resize to size x size, no crop, CLIP mean/std.
    r = Recipe("square", size=48)
    ref = transformers.CLIPImageProcessorPil(size={"height": 48, "width": 48}, do_center_crop=False)
    theirs = np.stack([ref(images=[f], return_tensors="np")["pixel_values"][0] for f in FRAMES])
    np.testing.assert_allclose(pixel_values(FRAMES, r), theirs, atol=1e-5)


def test_qwen_patches_match_qwen2vl_image_processor():
    # The image processor repeats an image over the temporal patch: the same as a 2-frame video of it.
    r = Recipe("smart_resize", size=0, min_pixels=56 * 56, max_pixels=112 * 112)
    ref = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    out = ref(images=[FRAMES[0]], return_tensors="np")
    ours, grid = qwen_patches(FRAMES[[0, 0]], r)
    assert list(grid) == list(out["image_grid_thw"][0])
    np.testing.assert_allclose(ours, out["pixel_values"], atol=1e-5)


def test_layout_frame_spans_hold_the_video_tokens_in_order(lm):
    inp, lay = build_inputs(lm, FRAMES, "Which way does the object move?", ["left", "right"], answer=1)
    ids = inp["input_ids"][0]
    vid = video_token_id(lm.config)
    video_pos = set(torch.nonzero(ids == vid).flatten().tolist())
    groups = lay.frame_groups
    in_spans = [p for s in groups for p in s.range()]
    # Spans are contiguous, disjoint, in order, and hold only video tokens.
    assert in_spans == sorted(in_spans) and len(set(in_spans)) == len(in_spans)
    assert all(ids[p] == vid for p in in_spans)
    extra = {lay.extra["newline"]} if "newline" in lay.extra else set()
    assert video_pos == set(in_spans) | extra
    rows, cols = lay.frame_grid
    assert all(len(s) == rows * cols for s in groups)
    if lm.family.frame_tokens == "qwen":
        assert lay.frames_per_group == 2 and len(groups) == 2
        assert lay.frames[0] == lay.frames[1] and lay.frames[2] == lay.frames[3] and lay.frames[1] != lay.frames[2]
    else:
        assert len(groups) == len(FRAMES)
    assert ids[lay.last] == ids[-1] and lay.last == len(ids) - 1
    assert ids[lay.options[1].start: lay.options[1].end].numel() > 0


def test_changing_one_frame_changes_only_its_span(lm):
    """Frame order: the LLM input at frame i's span depends on frame i alone."""
    inp, lay = build_inputs(lm, FRAMES, "Which way?", ["left", "right"])
    frames2 = FRAMES.copy()
    k = 2  # the third frame (Qwen: the second temporal patch)
    frames2[k] = 255 - frames2[k]
    inp2, _ = build_inputs(lm, frames2, "Which way?", ["left", "right"])
    a = capture(lm, inp, lay, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]
    b = capture(lm, inp2, lay, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]
    changed = set(torch.nonzero((a - b).abs().amax(-1) > 1e-6).flatten().tolist())
    assert changed == set(lay.frames[k].range())


def test_capture_equals_output_hidden_states(lm):
    inp, lay = build_inputs(lm, FRAMES, "Which way?", ["left", "right"])
    with torch.no_grad():
        out = lm.model(**inp, output_hidden_states=True)
    acts = capture(lm, inp, lay, ["resid_pre", "resid_post", "ln_final"])
    hs = out.hidden_states
    for l in range(lm.n_layers):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_pre"], hs[l][0], rtol=0, atol=0)
    for l in range(lm.n_layers - 1):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_post"], hs[l + 1][0], rtol=0, atol=0)
    # The last hidden_states entry is after the final norm.
    torch.testing.assert_close(acts["ln_final.hook_normalized"], hs[-1][0], rtol=0, atol=0)
    # The traced forward leaves the model's own output unchanged.
    logits = lm.model(**inp).logits
    torch.testing.assert_close(out.logits, logits)


def test_capture_positions_and_pattern():
    lm = load_model("tiny-llava-next", attn="eager")
    inp, lay = build_inputs(lm, FRAMES[:2], "Which way?", ["left", "right"])
    with torch.no_grad():
        out = lm.model(**inp, output_hidden_states=True, output_attentions=True)
    h = out.hidden_states[2][0]
    fm = capture(lm, inp, lay, ["blocks.1.hook_resid_post"], positions="frame_mean")["blocks.1.hook_resid_post"]
    ref = torch.stack([h[s.start:s.end].mean(0) for s in lay.frames])
    torch.testing.assert_close(fm, ref)
    last = capture(lm, inp, lay, ["blocks.1.hook_resid_post"], positions="last")["blocks.1.hook_resid_post"]
    torch.testing.assert_close(last, h[lay.last])
    pat = capture(lm, inp, lay, ["blocks.3.attn.hook_pattern"])["blocks.3.attn.hook_pattern"]
    torch.testing.assert_close(pat, out.attentions[3][0])


def test_tiny_models_are_deterministic():
    a, b = load_model("tiny-qwen2-vl"), load_model("tiny-qwen2-vl")
    assert a.fingerprint == b.fingerprint
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    assert a.fingerprint != load_model("tiny-qwen2.5-vl").fingerprint


def test_unknown_and_missing_models_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="tiny models"):
        load_model("tiny-gpt")
    empty = tmp_path / "ckpt"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    real = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with pytest.raises(ModelNotFoundError, match=r"hf download llava-hf/LLaVA-NeXT-Video-7B-hf"):
        load_model("llava-next")
    # fails at once: one look in the local cache, no attempt at the hub (which retries for a minute)
    assert calls == [{"local_files_only": True}]
    assert list(tmp_path.iterdir()) == [empty] and list(empty.iterdir()) == []


def test_broken_local_folders_say_what_is_wrong(tmp_path):
    """A folder with a broken config.json, or a config but no weights: an error
    about the folder, not an offline download hint."""
    from tracing.registry import ORGANISM_DIR

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ModelNotFoundError, match="config.json cannot be read") as e:
        load_model(str(broken))
    assert "hf download" not in str(e.value)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bare / f).write_bytes((ORGANISM_DIR / f).read_bytes())
    with pytest.raises(ModelNotFoundError, match="no weights") as e:
        load_model(str(bare))
    assert "hf download" not in str(e.value)


def test_bad_frames_are_refused():
    lm = load_model("tiny-llava-next")
    with pytest.raises(ValueError, match="uint8"):
        build_inputs(lm, FRAMES.astype(np.float32), "q?", ["a", "b"])
    with pytest.raises(ValueError, match="at least one frame"):
        build_inputs(lm, FRAMES[:0], "q?", ["a", "b"])


def test_capture_cli_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "cap.h5"
    cmd = [sys.executable, "-m", "analyses.capture", "--model", "tiny-llava-onevision", "--tasks", "direction,static_color",
           "--limit", "2", "--frames", "4", "--hooks", "vision,resid_post", "--positions", "frame_mean", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    r = CacheReader(out)
    assert r.samples["complete"].all() and list(r.samples["task"]) == ["direction"] * 2 + ["static_color"] * 2
    acts = r.acts("blocks.1.hook_resid_post")
    assert acts.shape == (4, 4, 64)
    # Independent check of one stored value against a plain forward.
    from tasks.datasets import load_dataset
    s = load_dataset("synthetic", n_frames=4, limit=2, tasks=["direction", "static_color"]).samples[3]
    lm = load_model("tiny-llava-onevision")
    inp, lay = build_inputs(lm, s.frames, s.question, s.options)
    with torch.no_grad():
        h = lm.model(**inp, output_hidden_states=True).hidden_states[2][0]
    ref = torch.stack([h[f.start:f.end].mean(0) for f in lay.frames]).numpy()
    np.testing.assert_allclose(acts[3], ref, atol=1e-5)
    # Same configuration: resumes with nothing to do; another configuration is refused
    # (in this process: the entry point was run above, the two processes' start-up is not needed).
    from analyses import capture as capture_mod
    from analyses.run import cli_boundary

    before = out.read_bytes()
    capsys.readouterr()
    assert cli_boundary(capture_mod.main)(cmd[3:]) == 0
    assert cli_boundary(capture_mod.main)(cmd[3:-2] + ["--seed", "1", "--out", str(out)]) != 0
    assert str(out) in capsys.readouterr().err and out.read_bytes() == before


def test_capture_dataset_varied_lengths_no_probe_forward_and_resume(tmp_path):
    """Samples of different lengths (positions='all'): each stored value equals a
    direct capture; the largest sample bounds the file's shapes without a
    throwaway probe forward (one forward per sample), and a resume reads the
    shapes from the file (one forward per pending sample)."""
    import h5py

    from tasks.types import Sample
    from analyses.capture import capture_dataset

    lm = load_model("tiny-llava-onevision")
    samples = [Sample(f"s{i}", "t", q, ["left", "right"], i % 2, frames=FRAMES[:n])
               for i, (n, q) in enumerate([(2, "Which way?"), (4, "Which way does the object move?"), (3, "Which?")])]
    forwards = []
    hook = lm.module(lm.family.embed).register_forward_hook(lambda *a: forwards.append(1))
    try:
        out = tmp_path / "var.h5"
        capture_dataset(lm, samples, ["embed", "blocks.2.hook_resid_post"], out, positions="all", progress=False)
        assert len(forwards) == len(samples)
        r = CacheReader(out)
        got = r.acts("blocks.2.hook_resid_post")
        assert r.samples["complete"].all() and [g.shape[0] for g in got] == [
            build_inputs(lm, s.frames, s.question, s.options)[1].n_tokens for s in samples]
        for i, s in enumerate(samples):
            inp, lay = build_inputs(lm, s.frames, s.question, s.options)
            ref = capture(lm, inp, lay, ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
            np.testing.assert_array_equal(got[i], ref.numpy())
            assert r.layout(i)["n_tokens"] == lay.n_tokens
        with h5py.File(out, "r+") as f:  # as if killed before sample 0's flag was set
            f["samples/complete"][0] = False
        forwards.clear()
        capture_dataset(lm, samples, ["embed", "blocks.2.hook_resid_post"], out, positions="all", progress=False)
        assert len(forwards) == 1 and CacheReader(out).samples["complete"].all()
        np.testing.assert_array_equal(CacheReader(out).acts("blocks.2.hook_resid_post", [0])[0], got[0])
    finally:
        hook.remove()
