"""Compare chronolens' inputs with Hugging Face's own on a real checkpoint.

    python -m tracing.check --model llava-next            (a machine with network)
    python -m tracing.check --model /path/to/checkpoint --video clip.mp4

chronolens builds ``input_ids`` and ``pixel_values_videos`` itself (the video
processors need torchvision, which has no CPU build). This check builds the
same prompt the family's way: the checkpoint's chat template and tokenizer for
the ids (video placeholder expanded as its processor does), and its video
processor for the pixels when torchvision is importable, else its per-frame
``*ImageProcessorPil`` (the recipe each family's video processor applies frame
by frame). It prints every difference and exits 1 if there is one.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .families import ANSWER_PREFIX, INSTRUCTION
from .inputs import build_inputs, video_token_id
from .registry import available, load_model, pixel_budget

OPTION = "({letter}) {text}\n"


def hf_prompt_text(chat_template: str, tok, question: str, options: list[str], video: bool = True) -> str:
    """The prompt as the checkpoint's chat template writes it, ending in Map the
    Flow's answer prefix, with ONE video placeholder (the processor expands it)."""
    from tasks.types import LETTERS

    text = question.strip() + "\n" + "".join(OPTION.format(letter=LETTERS[i], text=t) for i, t in enumerate(options))
    content = ([{"type": "video"}] if video else []) + [{"type": "text", "text": text + INSTRUCTION}]
    rendered = tok.apply_chat_template([{"role": "user", "content": content}], chat_template=chat_template,
                                       add_generation_prompt=True, tokenize=False)
    # "ASSISTANT:" is followed by a space before the answer; "assistant\n" is not.
    return rendered + (" " if rendered.endswith(":") else "") + ANSWER_PREFIX


def hf_input_ids(lm, chat_template: str, question: str, options: list[str], n_video_tokens: int) -> list[int]:
    """Ids as the family's processor gives them: the placeholder repeated once per
    video feature in the text, then the whole text tokenized with the tokenizer's
    own special tokens."""
    tok = lm.tokenizer
    text = hf_prompt_text(chat_template, tok, question, options)
    placeholder = tok.convert_ids_to_tokens(video_token_id(lm.config))
    if text.count(placeholder) != 1:
        raise ValueError(f"the chat template wrote the video placeholder {placeholder!r} {text.count(placeholder)} "
                         f"times; expected once")
    return tok(text.replace(placeholder, placeholder * n_video_tokens)).input_ids


def _chat_template(lm) -> str:
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            f = cached_file(lm.source, name, local_files_only=True, _raise_exceptions_for_missing_entries=False)
        except OSError:
            f = None
        if f:
            text = open(f).read()
            return __import__("json").loads(text)["chat_template"] if name.endswith(".json") else text
    if getattr(lm.tokenizer, "chat_template", None):
        return lm.tokenizer.chat_template
    raise ValueError(f"checkpoint {lm.source} ships no chat template: nothing to compare the prompt with")


def hf_pixels(lm, frames: np.ndarray) -> tuple[np.ndarray, str]:
    """(pixel values as the family's Hugging Face processor gives them, which processor)."""
    import transformers

    try:
        import torchvision  # noqa: F401

        proc = transformers.AutoVideoProcessor.from_pretrained(lm.source)
        out = proc(videos=[frames], return_tensors="np", do_sample_frames=False)
        return np.asarray(out["pixel_values_videos"]), type(proc).__name__
    except ImportError:
        pass
    fam, r = lm.family, lm.recipe
    if fam.recipe_kind == "smart_resize":
        ref = transformers.Qwen2VLImageProcessorPil(min_pixels=r.min_pixels, max_pixels=r.max_pixels,
                                                    patch_size=r.patch, merge_size=r.merge,
                                                    temporal_patch_size=r.temporal_patch,
                                                    image_mean=list(r.mean), image_std=list(r.std))
        # The image processor repeats one image over the temporal patch ([C, tp, p, p] per row);
        # a video fills slot k of patch t with frame tp*t + k (the last frame repeated to fill).
        per = [ref(images=[f], return_tensors="np")["pixel_values"] for f in frames]
        n, tp = len(frames), r.temporal_patch
        rows = []
        for t in range(0, n, tp):
            slots = [per[min(t + k, n - 1)].reshape(len(per[0]), 3, tp, -1)[:, :, k: k + 1] for k in range(tp)]
            rows.append(np.concatenate(slots, axis=2).reshape(len(per[0]), -1))
        return np.concatenate(rows), "Qwen2VLImageProcessorPil per frame (no torchvision)"
    size = {"shortest_edge": r.size} if r.kind == "shortest_edge_crop" else {"height": r.size, "width": r.size}
    ref = transformers.CLIPImageProcessorPil(size=size, crop_size={"height": r.size, "width": r.size},
                                             do_center_crop=r.kind == "shortest_edge_crop",
                                             image_mean=list(r.mean), image_std=list(r.std))
    pv = np.stack([ref(images=[f], return_tensors="np")["pixel_values"][0] for f in frames])
    return pv[None], "CLIPImageProcessorPil per frame (no torchvision)"


def compare(lm, frames: np.ndarray, question: str, options: list[str], chat_template: str | None = None) -> list[str]:
    """Differences between chronolens' inputs and Hugging Face's for one prompt (empty: none)."""
    inputs, layout = build_inputs(lm, frames, question, options)
    ours = inputs["input_ids"][0].tolist()
    n_video = sum(1 for i in ours if i == video_token_id(lm.config))
    theirs = hf_input_ids(lm, chat_template or _chat_template(lm), question, options, n_video)
    problems = []
    if ours != theirs:
        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        tok = lm.tokenizer
        problems.append(f"input_ids differ from position {k} ({len(ours)} vs {len(theirs)} tokens): "
                        f"chronolens {tok.convert_ids_to_tokens(ours[k:k + 6])} vs "
                        f"Hugging Face {tok.convert_ids_to_tokens(theirs[k:k + 6])}")
    pv, how = hf_pixels(lm, frames)
    mine = inputs["pixel_values_videos"].float().cpu().numpy()
    if mine.shape != pv.shape:
        problems.append(f"pixel values: shape {mine.shape} vs {pv.shape} ({how})")
    elif np.abs(mine - pv).max() > 1e-4:
        problems.append(f"pixel values differ by up to {np.abs(mine - pv).max():.3g} ({how})")
    return problems


def main(argv=None) -> int:
    from analyses.cli import HelpFormatter, user_model, user_path

    ap = argparse.ArgumentParser(prog="python -m tracing.check", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", default="llava-next", type=user_model,
                    help=f"registry name ({', '.join(available())}), hub id or folder")
    ap.add_argument("--video", default=None, type=user_path,
                    help="a video file to sample frames from (default: a rendered synthetic clip)")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled from the video")
    ap.add_argument("--video-pixels", default=None, type=pixel_budget, metavar="MIN,MAX",
                    help="Qwen families: pixels per frame (as for the analyses)")
    a = ap.parse_args(argv)
    from tasks.synthetic import render
    from tasks.video import load_frames

    lm = load_model(a.model, video_pixels=a.video_pixels)
    if lm.family.frame_tokens is None:
        ap.error(f"--model {a.model}: a text model has no video inputs to check")
    s = render("direction", seed=0, n_frames=a.frames)
    frames = load_frames(a.video, a.frames) if a.video else s.frames
    problems = compare(lm, frames, s.question, s.options)
    for p in problems:
        print(f"DIFFERENT  {p}")
    if not problems:
        print(f"same: input_ids and pixel values of {a.model} ({lm.source}) equal Hugging Face's")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
