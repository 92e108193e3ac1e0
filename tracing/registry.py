"""Model names -> loaded models.

``--model`` takes a registry name (``llava-next``, ``organism``, ...), a
``tiny-<family>`` random model, a hub id, or a local folder; all go through
``from_pretrained`` except the tiny models, which are built from a config.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from .families import Family, family_for, recipe
from .preprocess import Recipe

ORGANISM_DIR = Path(__file__).resolve().parent.parent / "organism" / "checkpoint"
# Models trained here and committed with the repository: name -> (folder, how to restore or retrain it).
LOCAL_MODELS: dict[str, tuple[Path, str]] = {
    "organism": (ORGANISM_DIR, "python -m organism.train"),
    "reasoner": (ORGANISM_DIR.parent / "reasoner" / "checkpoint", "python -m organism.reasoner.train"),
}

# Short names of real checkpoints. A new one is one line here.
HUB_MODELS: dict[str, str] = {
    "llava-next": "llava-hf/LLaVA-NeXT-Video-7B-hf",
    "llava-next-34b": "llava-hf/LLaVA-NeXT-Video-34B-hf",
    "llava-onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
}
TINY_MODELS = ("tiny-llava-next", "tiny-llava-onevision", "tiny-qwen2-vl", "tiny-qwen2.5-vl")  # video models
TINY_TEXT_MODELS = ("tiny-llama",)  # text-only (causal_lm): kept apart, tests over TINY_MODELS feed frames
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFoundError(RuntimeError):
    """A model name that is neither known, local, nor downloadable."""


@dataclass
class LoadedModel:
    """A model ready for chronolens: the HF module, its tokenizer, its family
    table and preprocessing recipe."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    family: Family
    recipe: Recipe | None
    source: str
    fingerprint: str
    processor_config: dict = field(default_factory=dict)  # preprocessor_config.json, when shipped
    video_config: dict = field(default_factory=dict)  # video_preprocessor_config.json, when shipped

    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return getattr(self.model.config, "text_config", self.model.config)

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def module(self, path: str) -> torch.nn.Module:
        m = self.model
        for part in path.split("."):
            m = m[int(part)] if part.isdigit() else getattr(m, part)
        return m

    @property
    def layers(self):
        return self.module(self.family.layers)


def available() -> list[str]:
    return [*LOCAL_MODELS, *HUB_MODELS, *TINY_MODELS, *TINY_TEXT_MODELS]


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the config and a sample of every weight tensor (cheap even for 7B)."""
    h = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _not_found(name: str, repo: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} ({repo}) is not on this machine: looked for a local folder {repo!r} and in the "
        f"Hugging Face cache {_hf_cache_dir()} ({why}).\n"
        f"On a machine with network, fetch it with:\n"
        f"    hf download {repo}\n"
        f"then copy the cache folder here (or set HF_HOME), or pass --model /path/to/the/downloaded/folder.\n"
        f"Models that need no download: {', '.join((*LOCAL_MODELS, *TINY_MODELS, *TINY_TEXT_MODELS))}."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that an offline machine fails at once instead of
    after the hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(name: str) -> tuple[str, str]:
    """name -> (kind, source) with kind in 'tiny', 'local', 'hub'."""
    if name in TINY_MODELS or name in TINY_TEXT_MODELS:
        return "tiny", name
    if name in LOCAL_MODELS:
        return "local", str(LOCAL_MODELS[name][0])
    if name in HUB_MODELS:
        return "hub", HUB_MODELS[name]
    if os.path.isdir(name):
        return "local", name
    if name.startswith("tiny-"):
        tiny = ", ".join(TINY_MODELS + TINY_TEXT_MODELS)
        raise ModelNotFoundError(f"unknown tiny model {name!r}; tiny models: {tiny}")
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return "hub", name
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a registry name ({', '.join(available())}), "
        f"not a local folder, and not a hub id of the form owner/name"
    )


def pixel_budget(text: str) -> tuple[int, int]:
    """'MIN,MAX' -> (min, max) pixels per frame: the type of every CLI's --video-pixels."""
    from argparse import ArgumentTypeError

    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ArgumentTypeError(f"expected MIN,MAX pixels per frame (two integers), got {text!r}") from None
    if not 0 < lo <= hi:
        raise ArgumentTypeError(f"need 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def load_model(
    name: str = "organism",
    device: str = "cpu",
    dtype: str = "float32",
    attn: str = "eager",
    device_map: str | None = None,
    video_pixels: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load a model by name. ``attn`` sets the LLM's attention implementation
    ('eager' gives attention probabilities; knockouts work under both).
    ``device_map='auto'`` spreads a large model over the visible GPUs.
    ``video_pixels`` (min, max pixels per frame) sets the Qwen families' video
    budget; by default it is the checkpoint's video processor's (or, when it
    ships none, Hugging Face's video defaults)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    kind, source = resolve(name)
    if kind == "tiny":
        from .tiny import build_tiny

        model, tok, pconf, vconf = build_tiny(name)
    else:
        model, tok, pconf, vconf = _from_pretrained(name, kind, source, DTYPES[dtype], device_map)
    fam = family_for(model.config.model_type)
    # Only the language model changes implementation: vision towers keep their own.
    if hasattr(model.config, "text_config"):
        model.set_attn_implementation({"text_config": attn})
    else:
        model.set_attn_implementation(attn)
    model = model.to(DTYPES[dtype])
    if device_map is None:
        model = model.to(device)
    model.eval()
    rec = recipe(fam, model.config, pconf, vconf, video_pixels) if fam.frame_tokens else None
    return LoadedModel(name, model, tok, fam, rec, source, fingerprint(model), pconf, vconf)


def _from_pretrained(name, kind, source, dtype, device_map):
    local_only = os.environ.get("HF_HUB_OFFLINE") == "1"
    if kind == "local" and not (Path(source) / "config.json").exists():
        if name in LOCAL_MODELS:
            folder, retrain = LOCAL_MODELS[name]
            rel = folder.relative_to(ORGANISM_DIR.parent.parent)
            raise ModelNotFoundError(
                f"the {name} checkpoint is missing at {source}: it is committed with the repository; "
                f"restore it with `git checkout {rel}` or retrain with `{retrain}`"
            )
        raise ModelNotFoundError(f"local folder {source!r} has no config.json: not a Hugging Face checkpoint")
    if kind == "local":  # a folder here: its own problems, never "download it"
        return _from_folder(source, dtype, device_map)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError:
        if local_only:
            raise _not_found(name, source, "offline") from None
        if not _hub_reachable():
            raise _not_found(name, source, "the hub is unreachable from this machine") from None
        try:  # a machine with network: let the hub download it
            config = transformers.AutoConfig.from_pretrained(source)
        except Exception as e2:  # noqa: BLE001 - any hub failure gets the same clear message
            raise _not_found(name, source, f"download failed: {type(e2).__name__}") from None
    fam = family_for(config.model_type)
    cls = getattr(transformers, fam.model_class)
    kw = dict(dtype=dtype, device_map=device_map)
    try:
        model = cls.from_pretrained(source, local_files_only=True, **kw)
    except OSError:
        if local_only:
            raise _not_found(name, source, "weights missing") from None
        model = cls.from_pretrained(source, **kw)
    tok = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    return model, tok, _shipped_json(source, "preprocessor_config.json"), \
        _shipped_json(source, "video_preprocessor_config.json")


def _from_folder(folder: str, dtype, device_map):
    """A local checkpoint folder: errors that say what is wrong with it."""
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:  # unreadable JSON, an unknown model_type, ...
        raise ModelNotFoundError(f"{folder}/config.json cannot be read as a Hugging Face config: "
                                 f"{str(e).splitlines()[0][:300]}") from None
    fam = family_for(config.model_type)
    weights = [p.name for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelNotFoundError(f"local folder {folder!r} has a config.json but no weights "
                                 f"(*.safetensors or *.bin): an incomplete copy?")
    try:
        model = getattr(transformers, fam.model_class).from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                                       device_map=device_map)
        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as e:
        raise ModelNotFoundError(f"local folder {folder!r}: {str(e).splitlines()[0][:300]}") from None
    return model, tok, _shipped_json(folder, "preprocessor_config.json"), \
        _shipped_json(folder, "video_preprocessor_config.json")


def _shipped_json(source: str, filename: str) -> dict:
    """A processor file of the checkpoint, or {} when it ships none."""
    from transformers.utils import cached_file

    try:
        f = cached_file(source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return {}
    return json.loads(Path(f).read_text()) if f else {}
