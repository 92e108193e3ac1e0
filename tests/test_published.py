"""Every family at its published geometry (real image size, patch, pooling and
merge sizes, window attention, vision feature layer, special token ids, chat
template and tokenizer vocabulary; tiny widths, 2 decoder layers, random
weights; tracing/published.py), checked against Hugging Face's own route:

- the prompt ids equal what the checkpoint's chat template and tokenizer give
  for the same text (the placeholder expanded as its processor does), and the
  pixels what its image processor gives frame by frame;
- tokens per frame as published, and as many video rows as the model's vision
  side produces;
- every vision-side hook row-aligned with the LLM's video positions;
- capture equal to output_hidden_states, and a knockout equal to a
  hand-masked eager forward.
"""
import numpy as np
import pytest
import torch

from test_knockout import hand_blocks, hand_mask, reference_logits
from tracing.capture import capture
from tracing.check import compare, hf_prompt_text
from tracing.inputs import build_inputs, video_token_id
from tracing.edges import edges
from tracing.knockout import KnockoutRunner
from tracing.published import CHAT_TEMPLATES, build_checkpoint
from tracing.registry import load_model

torch.set_num_threads(1)
FAMILIES = ["llava_next_video", "llava_onevision", "qwen2_vl", "qwen2_5_vl"]
QUESTION = "Which way does the red square move? Think of the frames in order."
OPTIONS = ["left to right", "right to left", "it does not move"]
# (frame size, video tokens per frame) as published: 336/14 = 24 -> pooled 12x12;
# SigLIP 384/14 = 27 -> bilinear 14x14; Qwen 336 px -> 12x12 merged tokens per 2 frames.
GEOMETRY = {"llava_next_video": (336, 144), "llava_onevision": (384, 196), "qwen2_vl": (336, 72),
            "qwen2_5_vl": (336, 72)}
N_FRAMES = 4

_LOADED: dict = {}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    fam = request.param
    if fam not in _LOADED:
        folder = build_checkpoint(fam, tmp_path_factory.mktemp(fam) / "ckpt", width="tiny", text_layers=2)
        _LOADED[fam] = load_model(str(folder), attn="eager")
    return fam, _LOADED[fam]


def frames(size, n=N_FRAMES, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_prompt_ids_and_pixels_equal_hugging_faces(family):
    fam, lm = family
    size, _ = GEOMETRY[fam]
    assert compare(lm, frames(size), QUESTION, OPTIONS, CHAT_TEMPLATES[fam]) == []
    # A frame size the processor must resize (and, for LLaVA-NeXT-Video, crop).
    wide = np.random.default_rng(1).integers(0, 256, (N_FRAMES, 240, 427, 3), dtype=np.uint8)
    assert compare(lm, wide, QUESTION, OPTIONS, CHAT_TEMPLATES[fam]) == []


def test_llama_prompt_starts_with_bos_and_is_not_the_piecewise_tokenization():
    """LLaVA-NeXT-Video's Llama tokenizer: <s> although ``add_bos_token`` may
    read False, and whole-text ids that piece-by-piece tokenization gets wrong."""
    lm = _LOADED.get("llava_next_video") or load_model(str(build_checkpoint(
        "llava_next_video", __import__("tempfile").mkdtemp() + "/ckpt")), attn="eager")
    tok = lm.tokenizer
    inp, lay = build_inputs(lm, frames(336), QUESTION, OPTIONS)
    ids = inp["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id == 1
    text = hf_prompt_text(CHAT_TEMPLATES["llava_next_video"], tok, QUESTION, OPTIONS).replace("<video>", "")
    pieces = [tok(t, add_special_tokens=False).input_ids for t in text.split("\n")]
    piecewise = [i for p in pieces for i in p]
    whole = [i for i in ids if i != video_token_id(lm.config)][1:]
    assert piecewise != [i for i in whole if i != 13]  # 13 = "\n": the difference is in the words, not the breaks
    # Spans hold the text they name.
    assert tok.decode(ids[lay.question_text.start:lay.question_text.end]).strip() == QUESTION
    for span, opt in zip(lay.options, OPTIONS):
        assert opt in tok.decode(ids[span.start:span.end])
    assert tok.decode(ids[lay.last:]).endswith("(")  # Llama merges "Best option:(" into ... ":("


def test_tokens_per_frame_as_published_and_as_the_vision_side_produces(family):
    fam, lm = family
    size, per_frame = GEOMETRY[fam]
    inp, lay = build_inputs(lm, frames(size), QUESTION, OPTIONS)
    n_video = int((inp["input_ids"][0] == video_token_id(lm.config)).sum())
    groups = lay.frame_groups
    assert all(len(s) == per_frame * lay.frames_per_group for s in groups)
    newline = 1 if fam == "llava_onevision" else 0
    assert n_video == len(groups) * len(groups[0]) + newline
    rows = capture(lm, inp, lay, ["projector.hook_out"], positions="all")["projector.hook_out"]
    assert rows.shape[0] == n_video  # the model's forward also refuses a count that does not match


def _vision_to_llm_rows(fam, lm, vision, n_frames):
    """The model's own modules from the vision-side rows to the rows the LLM reads."""
    m = lm.model.model
    with torch.no_grad():
        if fam == "llava_next_video":
            return m.multi_modal_projector(vision)
        if fam == "llava_onevision":
            pooled = m.apply_pooling(m.multi_modal_projector(vision.reshape(n_frames, -1, vision.shape[-1])))
            return torch.cat([pooled.reshape(-1, pooled.shape[-1]), m.image_newline[None]])
        return m.visual.merger(vision)


def test_vision_side_hooks_are_row_aligned_with_the_video_positions(family):
    fam, lm = family
    size, _ = GEOMETRY[fam]
    inp, lay = build_inputs(lm, frames(size, seed=2), QUESTION, OPTIONS)
    acts = capture(lm, inp, lay, ["vision.hook_out", "projector.hook_out"], positions="all")
    with torch.no_grad():
        h0 = lm.model(**inp, output_hidden_states=True).hidden_states[0][0]
    at_video = h0[inp["input_ids"][0] == video_token_id(lm.config)]
    torch.testing.assert_close(acts["projector.hook_out"], at_video, rtol=0, atol=0)
    mapped = _vision_to_llm_rows(fam, lm, acts["vision.hook_out"], N_FRAMES)
    torch.testing.assert_close(mapped, at_video, rtol=1e-5, atol=1e-5)
    # Frame by frame: the rows of frame group k sit in group k's span.
    per = capture(lm, inp, lay, ["vision.hook_out"], positions="frames")["vision.hook_out"]
    assert per.shape[0] == len(lay.frame_groups)


def test_capture_and_knockout_against_plain_forwards(family):
    fam, lm = family
    size, _ = GEOMETRY[fam]
    inp, lay = build_inputs(lm, frames(size, seed=3), QUESTION, OPTIONS, answer=0)
    with torch.no_grad():
        hs = lm.model(**inp, output_hidden_states=True).hidden_states
    acts = capture(lm, inp, lay, ["resid_pre", "ln_final"], positions="all")
    for l in range(lm.n_layers):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_pre"], hs[l][0], rtol=0, atol=0)
    torch.testing.assert_close(acts["ln_final.hook_normalized"], hs[-1][0], rtol=0, atol=0)
    runner = KnockoutRunner(lm, inp, lay)
    kinds = ("cross_frame", "video_question", "video_last")
    layers = range(lm.n_layers)
    fast = runner.logits([(edges(kind, lay), layers) for kind in kinds]).softmax(-1)
    for i, kind in enumerate(kinds):
        ref = reference_logits(lm, inp, hand_mask(lay.n_tokens, hand_blocks(lay, kind)), layers, lay.last).softmax(-1)
        assert (fast[i] - ref).abs().max() < 1e-5, kind


def test_check_cli_on_a_published_folder(family, capsys):
    """python -m tracing.check on a checkpoint folder: the chat template it ships,
    the Pil image processors per frame (no torchvision here) -> no difference."""
    from tracing.check import main

    fam, lm = family
    assert main(["--model", lm.source, "--frames", "4"]) == 0
    assert "same: input_ids and pixel values" in capsys.readouterr().out
