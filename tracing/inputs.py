"""Frames + question + options -> model inputs and a TokenLayout.

The prompt is tokenized piece by piece (system, video, question, each
option, trailing text) so that every span is exact; the prompt ends right
before the option letter (Map the Flow's ``Best option:(``).
"""
from __future__ import annotations

import numpy as np
import torch

from tasks.types import LETTERS

from .families import Family, tokens_per_frame
from .layout import Span, TokenLayout
from .preprocess import pixel_values, qwen_patches
from .registry import LoadedModel


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids if text else []


def video_token_id(config) -> int:
    for attr in ("video_token_id", "video_token_index"):
        v = getattr(config, attr, None)
        if v is not None:
            return int(v)
    raise ValueError(f"{type(config).__name__} has no video token id")


def option_letter_ids(tok, n: int, prefix: str) -> list[int]:
    """Vocabulary id of each option letter as it follows ``prefix``.

    SentencePiece tokenizers merge a letter with what precedes it differently
    from a bare letter, so the id is read off ``prefix + letter``."""
    base = _ids(tok, prefix)
    out = []
    for letter in LETTERS[:n]:
        full = _ids(tok, prefix + letter)
        if full[: len(base)] == base and len(full) == len(base) + 1:
            out.append(full[-1])
        else:
            out.append(tok.convert_tokens_to_ids(letter))
    if len(set(out)) != n or tok.unk_token_id in out:
        raise ValueError(f"option letters {LETTERS[:n]} do not map to distinct tokens in this tokenizer: {out}")
    return out


def _video_block(lm: LoadedModel, frames: np.ndarray):
    """-> (token ids of the video block, frame spans relative to it, grid, model kwargs)."""
    fam: Family = lm.family
    T = frames.shape[0]
    vid = video_token_id(lm.config)
    dtype = lm.dtype
    if fam.frame_tokens in ("pooled_grid", "onevision"):
        n, grid = tokens_per_frame(fam, lm.config)
        ids = [vid] * (T * n + (1 if fam.frame_tokens == "onevision" else 0))
        spans = [Span(i * n, (i + 1) * n) for i in range(T)]
        pv = torch.from_numpy(pixel_values(frames, lm.recipe))[None].to(dtype)  # [1, T, 3, S, S]
        extra = {"newline": T * n} if fam.frame_tokens == "onevision" else {}
        return ids, spans, grid, {"pixel_values_videos": pv}, 1, extra
    if fam.frame_tokens == "qwen":
        patches, (gt, gh, gw) = qwen_patches(frames, lm.recipe)
        m = lm.recipe.merge
        n = gh * gw // (m * m)
        tp = lm.recipe.temporal_patch
        ids = [vid] * (gt * n)
        # Frames 2t and 2t+1 share temporal patch t (a padded last frame has no span of its own).
        spans = [Span((i // tp) * n, (i // tp + 1) * n) for i in range(T)]
        kw = {"pixel_values_videos": torch.from_numpy(patches).to(dtype), "video_grid_thw": torch.tensor([[gt, gh, gw]])}
        if fam.name == "qwen2_5_vl":
            kw["second_per_grid_ts"] = torch.tensor([tp / 2.0])  # its processor's default of 2 fps
        return ids, spans, (gh // m, gw // m), kw, tp, {}
    raise ValueError(f"family {fam.name} takes no video")


def build_inputs(
    lm: LoadedModel,
    frames: np.ndarray | None,
    question: str,
    options: list[str],
    answer: int | None = None,
    context: str | None = None,
) -> tuple[dict[str, torch.Tensor], TokenLayout]:
    """One prompt -> (model kwargs with batch size 1, TokenLayout).

    frames:  uint8 [T, H, W, 3] or None for a text-only prompt.
    context: text shown in place of the video (e.g. per-frame captions, the
             T3 text form); its span is recorded as ``extra['context']``.
    """
    if frames is not None and frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, 3]; got shape {frames.shape}")
    if frames is not None and frames.shape[0] < 1:
        raise ValueError("frames: need at least one frame")
    if not options:
        raise ValueError("a multiple-choice prompt needs options")
    tok, fam = lm.tokenizer, lm.family
    p = fam.prompt
    ids: list[int] = []
    bos = tok.bos_token_id
    if bos is not None and getattr(tok, "add_bos_token", False):
        ids.append(bos)
    ids += _ids(tok, p.system)
    system = Span(0, len(ids))
    kwargs: dict[str, torch.Tensor] = {}
    frame_spans: list[Span] = []
    grid, per_group, extra = (0, 0), 1, {}
    v0 = len(ids)
    if frames is not None:
        if fam.frame_tokens is None:
            raise ValueError(f"model {lm.name!r} ({fam.name}) is text-only: pass context=... instead of frames")
        block, spans, grid, kwargs, per_group, extra = _video_block(lm, frames)
        ids += _ids(tok, p.video_open)
        off = len(ids)
        ids += block
        frame_spans = [Span(s.start + off, s.end + off) for s in spans]
        extra = {k: v + off for k, v in extra.items()}
        ids += _ids(tok, p.video_close)
    video = Span(v0, len(ids))
    if context is not None:
        c0 = len(ids)
        ids += _ids(tok, context)
        extra["context"] = [c0, len(ids)]
    ids += _ids(tok, p.after_video)
    q0 = len(ids)
    ids += _ids(tok, question.strip() + "\n")
    question_text = Span(q0, len(ids))
    opt_spans = []
    for i, text in enumerate(options):
        s = len(ids)
        ids += _ids(tok, p.option.format(letter=LETTERS[i], text=text))
        opt_spans.append(Span(s, len(ids)))
    question_span = Span(q0, len(ids))
    t0 = len(ids)
    ids += _ids(tok, p.trailing)
    layout = TokenLayout(
        n_tokens=len(ids),
        system=system,
        video=video,
        frames=frame_spans,
        frame_grid=tuple(grid),
        question=question_span,
        question_text=question_text,
        options=opt_spans,
        trailing=Span(t0, len(ids)),
        last=len(ids) - 1,
        option_ids=option_letter_ids(tok, len(options), p.trailing),
        frames_per_group=per_group,
        answer=answer,
        extra=extra,
    )
    input_ids = torch.tensor([ids], dtype=torch.long)
    kwargs["input_ids"] = input_ids
    kwargs["attention_mask"] = torch.ones_like(input_ids)
    if fam.frame_tokens == "qwen":
        # M-RoPE needs to know which positions are video (2) and which text (0).
        kwargs["mm_token_type_ids"] = (input_ids == video_token_id(lm.config)).long() * 2
    return {k: v.to(lm.device) for k, v in kwargs.items()}, layout


def build_sample_inputs(lm: LoadedModel, sample, frames: np.ndarray | None = None, context: str | None = None):
    """A ``tasks.types.Sample`` -> (inputs, layout). With ``context`` (e.g. the
    sample's caption text, the T3 text form) the video is left out."""
    if context is not None:
        return build_inputs(lm, None, sample.question, sample.options, sample.answer, context=context)
    f = sample.frames if frames is None else frames
    if f is None:
        raise ValueError(f"sample {sample.id!r} has no decoded frames (video {sample.video_path!r})")
    return build_inputs(lm, f, sample.question, sample.options, sample.answer)
