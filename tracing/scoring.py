"""Multiple-choice scoring from the option-letter probabilities at the last position,
and greedy generation for analyses that read a free-text answer (``generate``).

Scoring needs no generation: the prompt ends right before the option letter, so
one forward pass gives every option's probability. Prompts of different lengths
are right-padded into one batch (causal attention: padding after a row's last
position cannot change it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layout import TokenLayout


def collate(lm, items: list[tuple[dict, TokenLayout]]) -> dict[str, torch.Tensor]:
    """Right-pad single-prompt inputs from ``build_inputs`` into one batch.

    Videos must have the same frame count and size (LLaVA stacks them);
    Qwen's flattened patches are concatenated with their grids."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    T = max(inp["input_ids"].shape[1] for inp, _ in items)
    B = len(items)
    dev = items[0][0]["input_ids"].device
    ids = torch.full((B, T), pad, dtype=torch.long, device=dev)
    mask = torch.zeros((B, T), dtype=torch.long, device=dev)
    types = torch.zeros((B, T), dtype=torch.long, device=dev)
    for i, (inp, _) in enumerate(items):
        n = inp["input_ids"].shape[1]
        ids[i, :n] = inp["input_ids"][0]
        mask[i, :n] = 1
        if "mm_token_type_ids" in inp:
            types[i, :n] = inp["mm_token_type_ids"][0]
    batch = {"input_ids": ids, "attention_mask": mask}
    first = items[0][0]
    if "pixel_values_videos" in first:
        if "video_grid_thw" in first:  # Qwen: patches of all videos, one after another
            batch["pixel_values_videos"] = torch.cat([inp["pixel_values_videos"] for inp, _ in items])
            batch["video_grid_thw"] = torch.cat([inp["video_grid_thw"] for inp, _ in items])
            batch["mm_token_type_ids"] = types
            if "second_per_grid_ts" in first:
                batch["second_per_grid_ts"] = torch.cat([inp["second_per_grid_ts"] for inp, _ in items])
        else:
            shapes = {tuple(inp["pixel_values_videos"].shape) for inp, _ in items}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch videos of different shapes {sorted(shapes)}; group by frame count")
            batch["pixel_values_videos"] = torch.cat([inp["pixel_values_videos"] for inp, _ in items])
    return batch


@dataclass
class Scores:
    """probs: [B, max_options] option-letter probabilities (full-vocabulary
    softmax, NaN past a row's option count); pred: [B] argmax option."""

    probs: np.ndarray
    pred: np.ndarray

    def correct(self, answers) -> np.ndarray:
        return self.pred == np.asarray(answers)


@torch.no_grad()
def score(lm, items: list[tuple[dict, TokenLayout]], batch_size: int = 16) -> Scores:
    """Option-letter probabilities for prompts built by ``build_inputs``."""
    k = max(len(lay.option_ids) for _, lay in items)
    probs = np.full((len(items), k), np.nan)
    for b0 in range(0, len(items), batch_size):
        chunk = items[b0 : b0 + batch_size]
        batch = collate(lm, chunk)
        # Unembed the last positions only: full logits of a long video prompt
        # at a 32k-152k vocabulary would cost gigabytes.
        h = lm.model.model(**batch).last_hidden_state  # after the final norm
        last = torch.tensor([lay.last for _, lay in chunk], device=h.device)
        logits = lm.module(lm.family.unembed)(h[torch.arange(len(chunk), device=h.device), last])
        p = logits.float().softmax(-1)
        for i, (_, lay) in enumerate(chunk):
            probs[b0 + i, : len(lay.option_ids)] = p[i, lay.option_ids].cpu().numpy()
    pred = np.nanargmax(probs, axis=1)
    return Scores(probs, pred)


@torch.no_grad()
def generate(lm, inputs: dict, max_new_tokens: int) -> str:
    """Greedy free-text answer to one prompt built by ``build_inputs`` (batch
    size 1): the decoded new tokens, special tokens left out."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    g = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tok.decode(g[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
