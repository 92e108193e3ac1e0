"""``tiny-<family>``: the real architecture classes at toy size, seeded random weights.

For tests and benchmarks without a hub. Same name -> same weights. The
weights are sharpened (q/k and unembedding scaled up) because at random
initialisation the output distribution is nearly uniform and a test
comparing probabilities would say nothing.
"""
from __future__ import annotations

import zlib

import torch
import transformers

from .families import FAMILIES, INSTRUCTION, ANSWER_PREFIX
from .tokenizer import word_tokenizer

# A small fixed vocabulary: the prompt scaffolding, option letters, digits and
# the words of common temporal questions; anything else becomes [UNK].
_WORDS = [
    "USER: ASSISTANT: system user assistant You are a helpful assistant .",
    INSTRUCTION,
    ANSWER_PREFIX,
    "( A ) ( B ) ( C ) ( D ) ( E ) ( F ) ( G ) 0 1 2 3 4 5 6 7 8 9",
    "Which way does the object move ? In what direction did it rotate ? How many times ? left right up down",
    "clockwise counterclockwise fast slow first second third red green blue yellow one two three four",
    "What colour appears when is the beginning middle end brighter darker larger smaller Frame a at",
]

# tiny-llama reads videos as per-frame captions (the T3 text form): their words too.
_CAPTION_WORDS = ("Frame 10 11 12 13 14 15 16 : an empty frame and far left centre right top upper middle lower bottom "
                  "small medium large dark dim bright red green blue yellow square circle flash")


def tiny_config(name: str, vocab_size: int, token_ids: dict[str, int]):
    specials = dict(bos_token_id=token_ids["<s>"], eos_token_id=token_ids["</s>"], pad_token_id=token_ids["<pad>"])
    if name == "tiny-llava-next":
        # 96 px / patch 4 -> 24x24 grid -> pooled 12x12 = 144 tokens per frame, as LLaVA-NeXT-Video-7B.
        return transformers.LlavaNextVideoConfig(
            vision_config=dict(model_type="clip_vision_model", image_size=96, patch_size=4, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=4096, **specials),
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            image_grid_pinpoints=[[96, 96]],
            video_token_index=token_ids["<video>"],
            image_token_index=token_ids["<image>"],
        )
    if name == "tiny-llava-onevision":
        # 48 px / patch 4 -> 12x12 grid -> bilinear-pooled 6x6 = 36 tokens per frame, plus one newline.
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", image_size=48, patch_size=4, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            text_config=dict(model_type="qwen2", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=4096, **specials),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_grid_pinpoints=[[48, 48]],
            video_token_id=token_ids["<video>"],
            image_token_id=token_ids["<image>"],
        )
    if name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl"):
        text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **specials,
                    # M-RoPE: the three sections must sum to head_dim / 2 = 8.
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
        ids = dict(video_token_id=token_ids["<|video_pad|>"], image_token_id=token_ids["<|image_pad|>"],
                   vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"])
        if name == "tiny-qwen2-vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2)
            return transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        return transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
    if name == "tiny-llama":
        # Text only (the causal_lm family): what the TransformerLens backend is tested on.
        # Grouped-query attention (4 heads, 2 kv heads) exercises TL's GQA path.
        return transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=2048, **specials)
    raise ValueError(f"unknown tiny model {name!r}")


_FAMILY_OF = {
    "tiny-llava-next": "llava_next_video",
    "tiny-llava-onevision": "llava_onevision",
    "tiny-qwen2-vl": "qwen2_vl",
    "tiny-qwen2.5-vl": "qwen2_5_vl",
    "tiny-llama": "causal_lm",
}
# causal_lm's model_class is an Auto class, which cannot be called on a config.
_TEXT_CLASS = {"tiny-llama": "LlamaForCausalLM"}


def build_tiny(name: str):
    """-> (model, tokenizer, processor_config, video_config). Deterministic in ``name``."""
    fam = FAMILIES[_FAMILY_OF[name]]
    words = _WORDS + [fam.prompt.system.replace("<|im_start|>", " ").replace("<|im_end|>", " ")]
    if name in _TEXT_CLASS:  # only there: the video models' vocabularies (and weights) stay as they were
        words.append(_CAPTION_WORDS)
    tok = word_tokenizer(words, extra_special=fam.special_tokens)
    ids = {t: tok.convert_tokens_to_ids(t) for t in (*fam.special_tokens, "<s>", "</s>", "<pad>")}
    config = tiny_config(name, len(tok), ids)
    cls = getattr(transformers, _TEXT_CLASS.get(name, fam.model_class))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        model = cls(config)
        with torch.no_grad():
            for mod_name, p in model.named_parameters():
                if mod_name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(4.0)
                elif mod_name == "lm_head.weight":
                    p.mul_(30.0)
    # Qwen's smart_resize: allow small frames (56 px -> a 4x4 patch grid).
    vconf = {"min_pixels": 56 * 56, "max_pixels": 112 * 112} if "qwen" in name else {}
    return model, tok, {}, vconf
