"""The organism's architecture and tokenizer: a small LLaVA-NeXT-Video.

The vision encoder sees one frame at a time, so any answer that needs the
order of frames must be computed inside the LLM: a ground truth for the
analyses.
"""
from __future__ import annotations

import torch
import transformers

from tasks.synthetic import vocabulary
from tasks.types import LETTERS
from tracing.families import FAMILIES
from tracing.tokenizer import word_tokenizer

FAMILY = FAMILIES["llava_next_video"]

# Sizes (see the model card for what was tried). 32 px frames, patch 8 ->
# 4x4 grid, pooled 2x2 -> 4 tokens per frame; a 6-layer LLM so that layer
# sweeps have layers to sweep.
ARCH = dict(
    image_size=32,
    patch_size=8,
    vision_hidden=64,
    vision_layers=2,
    vision_heads=4,
    text_hidden=128,
    text_layers=6,
    text_heads=4,
    text_kv_heads=4,
    text_intermediate=384,
    initializer_range=0.08,
    vision_pos_std=1.0,
    vision_patch_std=0.1,
)


def build_tokenizer():
    p = FAMILY.prompt
    texts = [*vocabulary(), p.system, p.trailing, " ".join(f"({l})" for l in LETTERS)]
    return word_tokenizer(texts, extra_special=FAMILY.special_tokens)


def build_config(tok, arch: dict = ARCH) -> transformers.LlavaNextVideoConfig:
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<video>", "<image>", "<s>", "</s>", "<pad>")}
    a = arch
    return transformers.LlavaNextVideoConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            image_size=a["image_size"],
            patch_size=a["patch_size"],
            hidden_size=a["vision_hidden"],
            intermediate_size=4 * a["vision_hidden"],
            num_hidden_layers=a["vision_layers"],
            num_attention_heads=a["vision_heads"],
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=a["text_hidden"],
            intermediate_size=a["text_intermediate"],
            num_hidden_layers=a["text_layers"],
            num_attention_heads=a["text_heads"],
            num_key_value_heads=a["text_kv_heads"],
            max_position_embeddings=1024,
            initializer_range=a["initializer_range"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        # -2 (the default) would leave the last encoder layer unused and untrained.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[a["image_size"], a["image_size"]]],
        video_token_index=ids["<video>"],
        image_token_index=ids["<image>"],
        pad_token_id=ids["<pad>"],
    )


def build_model(config, seed: int, arch: dict = ARCH):
    """Random initialisation, deterministic in ``seed``.

    With CLIP's position embedding at its default std 0.02, nothing that needs
    the object's position (left/right, hence direction) was learnt in 1,000+
    steps; redrawn at std 1.0 it was (see the model card)."""
    torch.manual_seed(seed)
    model = transformers.LlavaNextVideoForConditionalGeneration(config)
    with torch.no_grad():
        emb = model.model.vision_tower.embeddings
        emb.position_embedding.weight.normal_(0.0, arch["vision_pos_std"])
        # At CLIP's default 0.02 the pixel content is ~5% of the position signal
        # and colour was not learnt in 600 steps; at 0.1 the two are comparable.
        emb.patch_embedding.weight.normal_(0.0, arch["vision_patch_std"])
    return model
