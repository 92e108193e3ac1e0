"""Frame preprocessing of each family, reproduced without torchvision.

Hugging Face's video processors all need torchvision (no CPU build here), so
the recipes are rebuilt from PIL + numpy. The tests compare each recipe with
the family's ``*ImageProcessorPil`` on the same frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Recipe:
    """How one family turns a uint8 RGB frame into pixel values.

    kind: 'shortest_edge_crop' (resize the short side, centre-crop a square: CLIP /
          LLaVA-NeXT-Video), 'square' (resize to size x size: OneVision) or
          'smart_resize' (Qwen2-VL: both sides to multiples of patch*merge within a
          pixel budget, then flattened into temporal patches).
    """

    kind: str
    size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    # Same path as transformers' np_resize: PIL bicubic on uint8.
    return np.asarray(Image.fromarray(frame).resize((w, h), resample=Image.BICUBIC))


def _normalise(frames: np.ndarray, r: Recipe) -> np.ndarray:
    x = frames.astype(np.float32) * np.float32(1 / 255)
    mean = np.asarray(r.mean, dtype=np.float32)
    std = np.asarray(r.std, dtype=np.float32)
    return ((x - mean) / std).transpose(0, 3, 1, 2)  # [T, 3, H, W]


def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's size rule: multiples of ``factor``, area within [min, max] pixels."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"aspect ratio of {h}x{w} frames is over 200, which Qwen2-VL refuses")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def resize_frames(frames: np.ndarray, r: Recipe) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3] as the family's processor resizes and crops."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 array [T, H, W, 3]; got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    if r.kind == "shortest_edge_crop":
        short, long = (H, W) if H <= W else (W, H)
        new_long = int(r.size * long / short)
        h, w = (r.size, new_long) if H <= W else (new_long, r.size)
        out = np.stack([_resize(f, h, w) for f in frames]) if (h, w) != (H, W) else frames
        top, left = int((h - r.size) / 2), int((w - r.size) / 2)
        return out[:, top : top + r.size, left : left + r.size]
    if r.kind == "square":
        return np.stack([_resize(f, r.size, r.size) for f in frames]) if (H, W) != (r.size, r.size) else frames
    if r.kind == "smart_resize":
        h, w = smart_resize(H, W, r.patch * r.merge, r.min_pixels, r.max_pixels)
        return np.stack([_resize(f, h, w) for f in frames]) if (h, w) != (H, W) else frames
    raise ValueError(f"unknown preprocessing recipe {r.kind!r}")


def pixel_values(frames: np.ndarray, r: Recipe) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, S, S] (LLaVA families)."""
    return _normalise(resize_frames(frames, r), r)


def qwen_patches(frames: np.ndarray, r: Recipe) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 [T, H, W, 3] -> (float32 [t*gh*gw, 3*tp*p*p], (t, gh, gw)).

    Qwen2-VL flattens 3D patches of ``temporal_patch`` frames; an odd frame
    count is padded by repeating the last frame, as its processor does. Patch
    order inside a frame groups each ``merge x merge`` block together, so the
    merger's 4 neighbours are consecutive rows.
    """
    x = _normalise(resize_frames(frames, r), r)  # [T, C, H, W]
    tp, p, m = r.temporal_patch, r.patch, r.merge
    if x.shape[0] % tp:
        x = np.concatenate([x, np.repeat(x[-1:], tp - x.shape[0] % tp, axis=0)])
    T, C, H, W = x.shape
    gt, gh, gw = T // tp, H // p, W // p
    x = x.reshape(gt, tp, C, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, C * tp * p * p)), (gt, gh, gw)
