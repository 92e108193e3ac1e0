"""One declarative table per model family: where things are, how frames become tokens.

To add a family, add one ``Family`` entry to ``FAMILIES``. Module paths are
dotted attribute paths from the ``*ForConditionalGeneration`` (or
``*ForCausalLM``) object; a hook point is ``(path, 'input' | 'output')``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Recipe

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
QWEN_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
# Map the Flow's prompt ending: the next token is the option letter.
ANSWER_PREFIX = "Best option:("


@dataclass(frozen=True)
class PromptFormat:
    """The text around the video and the question; the prompt ends right
    before the option letter."""

    system: str
    video_open: str = ""  # text token(s) right before the video tokens (inside the video span)
    video_close: str = ""
    after_video: str = "\n"
    option: str = "({letter}) {text}\n"
    trailing: str = INSTRUCTION + " ASSISTANT: " + ANSWER_PREFIX


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    model_class: str
    layers: str
    embed: str
    final_norm: str
    unembed: str
    rotary: str
    prompt: PromptFormat
    frame_tokens: str | None  # 'pooled_grid' | 'onevision' | 'qwen' | None (text-only)
    vision_out: tuple[str, str] | None = None  # (module path, 'input' | 'output'): features entering the projector
    video_token: str | None = None  # text of the placeholder token
    video_token_attr: str | None = None  # config attribute holding its id
    recipe_kind: str | None = None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    notes: str = ""
    special_tokens: tuple[str, ...] = field(default_factory=tuple)
    # Qwen2.5-VL: M-RoPE time positions in seconds (second_per_grid_ts), and a vision
    # tower that works in windows and hands the merger its rows in window order.
    absolute_time: bool = False
    vision_window_order: bool = False


FAMILIES: dict[str, Family] = {
    "llava_next_video": Family(
        name="llava_next_video",
        model_types=("llava_next_video",),
        model_class="LlavaNextVideoForConditionalGeneration",
        layers="model.language_model.layers",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        rotary="model.language_model.rotary_emb",
        # The projector's input is the pooled per-frame grid (one row per video token).
        vision_out=("model.multi_modal_projector", "input"),
        video_token="<video>",
        video_token_attr="video_token_id",
        frame_tokens="pooled_grid",
        recipe_kind="shortest_edge_crop",
        prompt=PromptFormat(system="USER: "),
        special_tokens=("<video>", "<image>"),
        notes="CLIP patch grid per frame, CLS dropped, pooled by spatial_pool_stride (2): 336 px/14 -> 24x24 -> 144 tokens; frames contiguous, no separators.",
    ),
    "llava_onevision": Family(
        name="llava_onevision",
        model_types=("llava_onevision",),
        model_class="LlavaOnevisionForConditionalGeneration",
        layers="model.language_model.layers",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        rotary="model.language_model.rotary_emb",
        # OneVision projects before pooling, so the projector's input has the full grid.
        vision_out=("model.multi_modal_projector", "input"),
        video_token="<video>",
        video_token_attr="video_token_id",
        frame_tokens="onevision",
        recipe_kind="square",
        # Its chat template: no system turn, "user" then a space, the video, "\n" + text,
        # and no newline between the user's <|im_end|> and the assistant's turn.
        prompt=PromptFormat(system="<|im_start|>user ",
                            trailing=INSTRUCTION + "<|im_end|><|im_start|>assistant\n" + ANSWER_PREFIX),
        special_tokens=("<video>", "<image>", "<|im_start|>", "<|im_end|>"),
        notes="SigLIP grid per frame, bilinear-pooled to ceil(n/2)^2 tokens, then ONE newline token after the whole video.",
    ),
    "qwen2_vl": Family(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        model_class="Qwen2VLForConditionalGeneration",
        layers="model.language_model.layers",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        rotary="model.language_model.rotary_emb",
        vision_out=("model.visual.merger", "input"),
        video_token="<|video_pad|>",
        video_token_attr="video_token_id",
        frame_tokens="qwen",
        recipe_kind="smart_resize",
        prompt=PromptFormat(
            system=QWEN_SYSTEM,
            video_open="<|vision_start|>",
            video_close="<|vision_end|>",
            after_video="",
            trailing=INSTRUCTION + QWEN_ASSISTANT + ANSWER_PREFIX,
        ),
        special_tokens=("<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>", "<|im_start|>", "<|im_end|>"),
        notes="2 frames per temporal patch; t/2*gh*gw/4 tokens between vision start/end; M-RoPE positions; needs mm_token_type_ids (2 = video).",
    ),
    # Text-only LLMs (the T3 text comparison, WAAD/FAI): any *ForCausalLM with a Llama-like stack.
    "causal_lm": Family(
        name="causal_lm",
        model_types=("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"),
        model_class="AutoModelForCausalLM",
        layers="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        unembed="lm_head",
        rotary="model.rotary_emb",
        frame_tokens=None,
        prompt=PromptFormat(system=""),
    ),
}


# Qwen2.5-VL reads and tokenizes video exactly as Qwen2-VL does.
FAMILIES["qwen2_5_vl"] = replace(
    FAMILIES["qwen2_vl"],
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    model_class="Qwen2_5_VLForConditionalGeneration",
    notes="As Qwen2-VL, with window attention in the vision tower and absolute time in M-RoPE (second_per_grid_ts).",
    absolute_time=True,
    vision_window_order=True,
)


def family_for(model_type: str) -> Family:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(f"no family table for model_type {model_type!r}; known: {', '.join(known)}. Add one to tracing/families.py")


# Qwen's video processor sizes frames within its own pixel budget (the
# Qwen2VLVideoProcessor defaults, as qwen-vl-utils), not the image processor's
# 3136 / 12,845,056 that preprocessor_config.json holds: a 720p video gives
# 2,880 tokens for 8 frames, not 4,784.
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28


def recipe(fam: Family, config, processor_config: dict | None = None, video_config: dict | None = None,
           pixels: tuple[int, int] | None = None) -> Recipe:
    """The preprocessing recipe for a loaded model, from its config and the
    processor files the checkpoint ships: ``video_config`` is its
    video_preprocessor_config.json, ``processor_config`` its
    preprocessor_config.json (used for the pixel budget only when there is no
    video config: the image budget does not apply to video). ``pixels``
    (min, max per frame) overrides the Qwen budget."""
    vconf = video_config or {}
    pc = {**(processor_config or {}), **vconf}
    mean = tuple(pc.get("image_mean", fam.mean))
    std = tuple(pc.get("image_std", fam.std))
    vc = config.vision_config
    if fam.recipe_kind in ("shortest_edge_crop", "square"):
        return Recipe(fam.recipe_kind, size=vc.image_size, mean=mean, std=std, patch=vc.patch_size)
    if fam.recipe_kind == "smart_resize":
        if pixels is not None:
            lo, hi = pixels
        elif vconf:
            size = vconf.get("size", {})
            lo = vconf.get("min_pixels", size.get("shortest_edge", QWEN_VIDEO_MIN_PIXELS))
            hi = vconf.get("max_pixels", size.get("longest_edge", QWEN_VIDEO_MAX_PIXELS))
        else:
            lo, hi = QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS
        if not 0 < lo <= hi:
            raise ValueError(f"video pixel budget: need 0 < min <= max pixels per frame, got {lo}, {hi}")
        return Recipe(
            "smart_resize",
            size=0,
            mean=mean,
            std=std,
            patch=vc.patch_size,
            merge=vc.spatial_merge_size,
            temporal_patch=vc.temporal_patch_size,
            min_pixels=int(lo),
            max_pixels=int(hi),
        )
    raise ValueError(f"family {fam.name} takes no frames")


def tokens_per_frame(fam: Family, config) -> tuple[int, tuple[int, int]]:
    """(video tokens per frame, (rows, cols)) for the LLaVA families; the
    Qwen count depends on the frame size and is computed from its grid."""
    vc = config.vision_config
    grid = vc.image_size // vc.patch_size
    if fam.frame_tokens == "pooled_grid":
        side = grid // getattr(config, "spatial_pool_stride", 2)  # AvgPool2d floors an odd grid
        return side * side, (side, side)
    if fam.frame_tokens == "onevision":
        side = math.ceil(grid / 2)
        return side * side, (side, side)
    raise ValueError(f"tokens_per_frame: family {fam.name} has frame-size-dependent tokens")
