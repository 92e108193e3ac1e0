"""What the model is fed, against what Hugging Face would feed it: the start
token as the tokenizer adds it, the projector hook as the rows the LLM reads,
Qwen's video pixel budget and time positions, and capture without the
full-vocabulary unembedding. Real tokenizers and the published geometry are
in tests/test_published.py."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers
from tokenizers import processors

from tasks.video import load_frames, sampled_fps, write_video
from tracing.capture import capture
from tracing.families import recipe
from tracing.inputs import build_inputs, video_token_id
from tracing.preprocess import smart_resize
from tracing.registry import TINY_MODELS, load_model

torch.set_num_threads(1)
FRAMES = np.random.default_rng(1).integers(0, 256, (4, 64, 80, 3), dtype=np.uint8)
_MODELS: dict = {}


def model(name, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _MODELS:
        _MODELS[key] = load_model(name, **kw)
    return _MODELS[key]


def test_start_token_follows_what_the_tokenizer_does_not_its_attribute():
    """A tokenizer whose post-processor adds <s> while ``add_bos_token`` reads
    False (transformers 5 loading a Llama tokenizer.json): the prompt starts with <s>."""
    lm = model("tiny-llava-next")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=lm.tokenizer.backend_tokenizer.__class__.from_str(
        lm.tokenizer.backend_tokenizer.to_str()), **{k: getattr(lm.tokenizer, k) for k in
                                                     ("bos_token", "eos_token", "unk_token", "pad_token")},
        additional_special_tokens=list(lm.family.special_tokens))
    bos = tok.bos_token_id
    tok.add_bos_token = False  # first: setting it rebuilds the post-processor
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    assert tok("left").input_ids[0] == bos and not tok.add_bos_token
    with_bos = dataclasses.replace(lm, tokenizer=tok)
    inp, lay = build_inputs(with_bos, FRAMES, "Which way?", ["left", "right"])
    plain, plain_lay = build_inputs(lm, FRAMES, "Which way?", ["left", "right"])
    ids = inp["input_ids"][0].tolist()
    assert ids[0] == bos and ids[1:] == plain["input_ids"][0].tolist()
    assert lay.system.start == 0 and len(lay.system) == len(plain_lay.system) + 1
    assert lay.frames[0].start == plain_lay.frames[0].start + 1 and lay.last == plain_lay.last + 1


def _llm_input(lm, inp):
    with torch.no_grad():
        return lm.model(**inp, output_hidden_states=True).hidden_states[0][0]


@pytest.mark.parametrize("name", TINY_MODELS)
def test_projector_hook_is_what_the_llm_reads_at_the_video_positions(name):
    lm = model(name)
    inp, lay = build_inputs(lm, FRAMES, "Which way?", ["left", "right"])
    h0 = _llm_input(lm, inp)
    vid = torch.nonzero(inp["input_ids"][0] == video_token_id(lm.config)).flatten()
    got = capture(lm, inp, lay, ["projector.hook_out"], positions="all")["projector.hook_out"]
    torch.testing.assert_close(got, h0[vid], rtol=0, atol=0)
    per = capture(lm, inp, lay, ["projector.hook_out"], positions="frames")["projector.hook_out"]
    rows, cols = lay.frame_grid
    assert per.shape == (len(lay.frame_groups), rows * cols, h0.shape[-1])
    torch.testing.assert_close(per, torch.stack([h0[s.start:s.end] for s in lay.frame_groups]), rtol=0, atol=0)
    if lm.family.frame_tokens == "onevision":  # pooled rows per frame, then the one newline row
        assert got.shape[0] == len(FRAMES) * rows * cols + 1
    with pytest.raises(ValueError, match="not defined"):
        capture(lm, inp, lay, ["projector.hook_out"], positions="last")


def test_onevision_vision_hook_keeps_the_grid_before_pooling():
    lm = model("tiny-llava-onevision")
    inp, lay = build_inputs(lm, FRAMES, "Which way?", ["left", "right"])
    vis = capture(lm, inp, lay, ["vision.hook_out"], positions="frames")["vision.hook_out"]
    vc = lm.config.vision_config
    assert vis.shape[:2] == (len(FRAMES), (vc.image_size // vc.patch_size) ** 2)
    # Projected and pooled the model's way, frame by frame, they are the LLM's rows.
    with torch.no_grad():
        pooled = lm.model.model.apply_pooling(lm.model.model.multi_modal_projector(vis))
    h0 = _llm_input(lm, inp)
    torch.testing.assert_close(pooled, torch.stack([h0[s.start:s.end] for s in lay.frames]), rtol=1e-5, atol=1e-5)


def _hf_qwen_video_size() -> dict:
    """Qwen2VLVideoProcessor's class default ``size``, read from transformers'
    source (the class itself needs torchvision, which cannot be installed here)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("transformers.models.qwen2_vl")
    tree = ast.parse((Path(spec.origin).parent / "video_processing_qwen2_vl.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    node = next(n for n in cls.body if isinstance(n, ast.Assign) and n.targets[0].id == "size")
    return eval(compile(ast.Expression(node.value), "size", "eval"))  # arithmetic on literals only


def test_qwen_video_budget_follows_the_video_processor():
    """Without a video_preprocessor_config.json the frames are sized by Hugging
    Face's video defaults (a 720p frame pair -> 720 tokens, 2,880 for 8 frames),
    not by the image processor's budget; a shipped video config or the user's
    ``video_pixels`` wins."""
    lm = model("tiny-qwen2-vl")
    image_budget = {"min_pixels": 3136, "max_pixels": 12845056}  # what preprocessor_config.json holds
    r = recipe(lm.family, lm.config, image_budget)
    ref = _hf_qwen_video_size()
    assert (r.min_pixels, r.max_pixels) == (ref["shortest_edge"], ref["longest_edge"])
    h, w = smart_resize(720, 1280, 28, r.min_pixels, r.max_pixels)
    assert 8 // 2 * (h // 28) * (w // 28) == 2880
    shipped = recipe(lm.family, lm.config, image_budget, {"size": {"shortest_edge": 3136, "longest_edge": 50176}})
    assert (shipped.min_pixels, shipped.max_pixels) == (3136, 50176)
    small = load_model("tiny-qwen2-vl", video_pixels=(56 * 56, 56 * 56))
    inp, lay = build_inputs(small, FRAMES, "Which way?", ["left", "right"])
    h, w = smart_resize(64, 80, 28, 56 * 56, 56 * 56)
    assert inp["video_grid_thw"].tolist() == [[2, h // 14, w // 14]] and len(lay.frame_groups[0]) == h * w // 28 ** 2
    with pytest.raises(ValueError, match="pixel budget"):
        recipe(lm.family, lm.config, video_config={"min_pixels": 10, "max_pixels": 5})


def test_qwen25_time_positions_come_from_the_sampling(tmp_path):
    """second_per_grid_ts = temporal patch / sampled fps, as Qwen2.5-VL's
    processor computes it from the video's metadata; it moves the M-RoPE
    time positions of the video tokens."""
    video = write_video(tmp_path / "v.mp4", np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), np.uint8), fps=8)
    frames = load_frames(video, 8)
    fps = sampled_fps(video, len(frames))
    meta = transformers.video_utils.VideoMetadata(total_num_frames=24, fps=8.0, frames_indices=list(range(8)))
    assert fps == pytest.approx(meta.sampled_fps) == pytest.approx(8 / 3)
    assert sampled_fps(video, 8, bound=(1.0, 2.0)) == pytest.approx(8.0)
    lm = model("tiny-qwen2.5-vl")
    inp, _ = build_inputs(lm, frames[:, ::8, ::8], "Which way?", ["left", "right"], sampled_fps=fps)
    assert inp["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])
    default, _ = build_inputs(lm, frames[:, ::8, ::8], "Which way?", ["left", "right"])
    assert default["second_per_grid_ts"].tolist() == [1.0]  # Qwen's own 2 fps when nobody recorded the rate
    pos = [lm.model.model.get_rope_index(**{k: i[k] for k in ("input_ids", "mm_token_type_ids", "video_grid_thw",
                                                               "second_per_grid_ts", "attention_mask")
                                              if k in i})[0] for i in (inp, default)]
    assert not torch.equal(pos[0], pos[1])


def test_capture_does_not_unembed_every_position():
    lm = model("tiny-llava-next")
    inp, lay = build_inputs(lm, FRAMES[:2], "Which way?", ["left", "right"])
    rows = []
    hook = lm.model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[1]))
    try:
        acts = capture(lm, inp, lay, ["ln_final"], positions="last")
    finally:
        hook.remove()
    assert rows == [1]
    with torch.no_grad():
        ref = lm.model(**inp, output_hidden_states=True).hidden_states[-1][0, lay.last]
    torch.testing.assert_close(acts["ln_final.hook_normalized"], ref, rtol=0, atol=0)
