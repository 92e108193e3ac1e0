"""Frames + question + options -> model inputs and a TokenLayout.

The prompt is the family's own text (its chat template's, see
``families.PromptFormat``), rendered as one string and tokenized whole, as
the family's processor does: a Llama tokenizer gives other ids to a piece
tokenized alone (``▁Which``) than to the same text inside the prompt. The
TokenLayout spans are then read off the tokenizer's offset mapping. The video
placeholder is expanded to one token per video feature after tokenization;
a special token splits the text around it, so this equals tokenizing the
expanded text. The prompt ends right before the option letter (Map the
Flow's ``Best option:(``).
"""
from __future__ import annotations

import numpy as np
import torch

from tasks.types import LETTERS

from .families import Family, tokens_per_frame
from .layout import Span, TokenLayout
from .preprocess import pixel_values, qwen_patches
from .registry import LoadedModel

# Qwen's processors sample video at 2 fps: the frame rate assumed for frames
# whose sampling rate nobody recorded (synthetic videos).
DEFAULT_SAMPLED_FPS = 2.0


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids if text else []


def video_token_id(config) -> int:
    for attr in ("video_token_id", "video_token_index"):
        v = getattr(config, attr, None)
        if v is not None:
            return int(v)
    raise ValueError(f"{type(config).__name__} has no video token id")


def special_prefix(tok) -> list[int]:
    """The ids the tokenizer itself puts before a text (``<s>`` for Llama, none for Qwen).

    Asked of the tokenizer by tokenizing a probe string: the ``add_bos_token``
    attribute is not to be trusted (transformers 5 reports False for a Llama
    tokenizer loaded from tokenizer.json whose post-processor adds ``<s>``).
    Ids it would add after a text (an end-of-sequence token) are left out: the
    prompt goes on with the answer."""
    cached = getattr(tok, "_chronolens_prefix", None)
    if cached is not None:
        return cached
    with_sp = tok("a").input_ids
    plain = tok("a", add_special_tokens=False).input_ids
    k = next((i for i in range(len(with_sp) - len(plain) + 1) if with_sp[i: i + len(plain)] == plain), None)
    if k is None:
        raise ValueError(f"tokenizer {type(tok).__name__}: adding special tokens changes the text's own ids "
                         f"({with_sp} vs {plain}); chronolens cannot tell where the prompt starts")
    prefix = list(with_sp[:k])
    try:
        tok._chronolens_prefix = prefix
    except AttributeError:
        pass
    return prefix


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


def _video_block(lm: LoadedModel, frames: np.ndarray, sampled_fps: float | None):
    """-> (token ids of the video block, frame spans relative to it, grid, model kwargs,
    frames per span, extra positions relative to it)."""
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
        if fam.absolute_time:
            # Seconds per temporal patch, as Qwen2.5-VL's processor computes it from the
            # sampling (frames kept / video duration): it sets the M-RoPE time positions.
            fps = sampled_fps or DEFAULT_SAMPLED_FPS
            if fps <= 0:
                raise ValueError(f"sampled_fps must be positive, got {sampled_fps}")
            kw["second_per_grid_ts"] = torch.tensor([tp / fps])
        return ids, spans, (gh // m, gw // m), kw, tp, {}
    raise ValueError(f"family {fam.name} takes no video")


def _tokenize(tok, pieces: list[tuple[str, str]]) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """Tokenize the concatenated text of ``pieces`` (name, text) once -> (ids,
    {name: (first token, end token)}), spans read off the offset mapping.

    A token belongs to the piece holding its first non-space character (a
    SentencePiece ``▁word`` carries the space before it)."""
    text = "".join(t for _, t in pieces)
    owner = np.empty(len(text), dtype=np.int64)
    pos = 0
    for k, (_, t) in enumerate(pieces):
        owner[pos: pos + len(t)] = k
        pos += len(t)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc.input_ids)
    piece_of = []
    for s, e in enc["offset_mapping"]:
        chars = text[s:e]
        lead = len(chars) - len(chars.lstrip())
        piece_of.append(int(owner[min(s + lead, e - 1)]) if e > s else (piece_of[-1] if piece_of else 0))
    piece_of = np.asarray(piece_of, dtype=np.int64)
    if np.any(np.diff(piece_of) < 0):
        raise ValueError("the prompt's tokens do not follow its parts in order: a token spans two parts")
    spans = {name: (int(np.searchsorted(piece_of, k, "left")), int(np.searchsorted(piece_of, k, "right")))
             for k, (name, _) in enumerate(pieces)}
    return ids, spans


def build_inputs(
    lm: LoadedModel,
    frames: np.ndarray | None,
    question: str,
    options: list[str],
    answer: int | None = None,
    context: str | None = None,
    sampled_fps: float | None = None,
) -> tuple[dict[str, torch.Tensor], TokenLayout]:
    """One prompt -> (model kwargs with batch size 1, TokenLayout).

    frames:      uint8 [T, H, W, 3] or None for a text-only prompt.
    context:     text shown in place of the video (e.g. per-frame captions, the
                 T3 text form); its span is recorded as ``extra['context']``.
    sampled_fps: frames per second of video time at which ``frames`` were
                 sampled (frames kept / seconds they cover). Qwen2.5-VL places
                 frames in time with it; unknown -> 2 fps, Qwen's own sampling rate.
    """
    if frames is not None and frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, 3]; got shape {frames.shape}")
    if frames is not None and frames.shape[0] < 1:
        raise ValueError("frames: need at least one frame")
    if not options:
        raise ValueError("a multiple-choice prompt needs options")
    tok, fam = lm.tokenizer, lm.family
    p = fam.prompt
    block = None
    if frames is not None:
        if fam.frame_tokens is None:
            raise ValueError(f"model {lm.name!r} ({fam.name}) is text-only: pass context=... instead of frames")
        block, rel_spans, grid, kwargs, per_group, rel_extra = _video_block(lm, frames, sampled_fps)
    else:
        rel_spans, grid, kwargs, per_group, rel_extra = [], (0, 0), {}, 1, {}
    pieces = [("system", p.system)]
    if block is not None:
        pieces += [("video_open", p.video_open), ("placeholder", fam.video_token), ("video_close", p.video_close)]
    if context is not None:
        pieces.append(("context", context))
    pieces += [("after_video", p.after_video), ("question_text", question.strip() + "\n")]
    pieces += [(f"option:{i}", p.option.format(letter=LETTERS[i], text=t)) for i, t in enumerate(options)]
    pieces.append(("trailing", p.trailing))
    ids, at = _tokenize(tok, pieces)

    prefix = special_prefix(tok)
    shift = {name: len(prefix) for name in at}
    if block is not None:
        m0, m1 = at["placeholder"]
        vid = video_token_id(lm.config)
        if m1 - m0 != 1 or ids[m0] != vid:
            raise ValueError(f"the tokenizer does not keep the video placeholder {fam.video_token!r} as the one "
                             f"token {vid}: is it a special token of this checkpoint?")
        ids = ids[:m0] + block + ids[m1:]
        names = [n for n, _ in pieces]
        for name in names[names.index("placeholder") + 1:]:
            shift[name] += len(block) - 1
    ids = prefix + ids

    def span(name: str) -> Span:
        a, b = at[name]
        d = shift[name]
        return Span(a + (d if a or name != "system" else 0), b + d)

    system = span("system")
    frame_spans: list[Span] = []
    extra: dict = {}
    if block is not None:
        video = Span(span("video_open").start, span("video_close").end)
        off = at["placeholder"][0] + len(prefix)
        frame_spans = [Span(s.start + off, s.end + off) for s in rel_spans]
        extra = {k: v + off for k, v in rel_extra.items()}
    else:
        video = Span(system.end, system.end)
    if context is not None:
        c = span("context")
        extra["context"] = [c.start, c.end]
    opt_spans = [span(f"option:{i}") for i in range(len(options))]
    question_text = span("question_text")
    trailing = span("trailing")
    layout = TokenLayout(
        n_tokens=len(ids),
        system=system,
        video=video,
        frames=frame_spans,
        frame_grid=tuple(grid),
        question=Span(question_text.start, opt_spans[-1].end),
        question_text=question_text,
        options=opt_spans,
        trailing=trailing,
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
    sample's caption text, the T3 text form) the video is left out. The
    sampling rate a loader recorded (``meta['sampled_fps']``) is passed on."""
    if context is not None:
        return build_inputs(lm, None, sample.question, sample.options, sample.answer, context=context)
    f = sample.frames if frames is None else frames
    if f is None:
        raise ValueError(f"sample {sample.id!r} has no decoded frames (video {sample.video_path!r})")
    return build_inputs(lm, f, sample.question, sample.options, sample.answer,
                        sampled_fps=sample.meta.get("sampled_fps"))
