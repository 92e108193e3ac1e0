"""The perturbation test of Li et al. (2025): does changing a high-FAI token
change the rest of the rollout more than changing a low-FAI token?

For one trace (prompt + the model's response) and the FAI of each response
token: the eligible positions are response tokens with a defined FAI and at
least ``min_tail`` tokens after them. The ``pairs`` highest- and lowest-FAI
positions are each replaced, separately, by the model's own most likely
other token there (the runner-up of the logits that predicted it: a change
the model itself finds plausible, not noise), and the response is
regenerated greedily from that point for as many tokens as the original
had after it. The change of a rollout is the fraction of those tail
positions whose token differs from the original (a shorter rollout differs
at every missing position). The paper reports that the high-FAI change
alters the rollout more in 87.14% of trials.
"""
from __future__ import annotations

import numpy as np
import torch

COLUMNS = ["high_position", "low_position", "high_change", "low_change", "high_token", "low_token"]


def eligible(fai_t: np.ndarray, rows: np.ndarray, min_tail: int) -> np.ndarray:
    """Response positions with a defined FAI and >= min_tail tokens after them."""
    T = len(rows)
    pos = np.flatnonzero(rows & ~np.isnan(fai_t))
    return pos[pos <= T - 1 - min_tail]


def _rollout(model, ids: list[int], n: int, eos: int | None, pad: int | None) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                       eos_token_id=eos, pad_token_id=pad if pad is not None else eos)
    return g[0, len(ids):].tolist()


def change(original: list[int], new: list[int]) -> float:
    """Fraction of the original tail's positions whose token differs (missing ones differ)."""
    if not original:
        return float("nan")
    return float(np.mean([i >= len(new) or new[i] != t for i, t in enumerate(original)]))


@torch.no_grad()
def perturb(lm, tokens: np.ndarray, logits: torch.Tensor, fai_t: np.ndarray, rows: np.ndarray, pairs: int = 1,
            min_tail: int = 5) -> np.ndarray:
    """-> float32 [pairs, 6] (``COLUMNS``); NaN rows when the trace has too few
    eligible positions. ``logits`` [T, V] are the model's own over ``tokens``."""
    out = np.full((pairs, len(COLUMNS)), np.nan, np.float32)
    pos = eligible(fai_t, rows, min_tail)
    if len(pos) < 2 * pairs:
        return out
    order = pos[np.argsort(fai_t[pos], kind="stable")]
    tok = lm.tokenizer
    toks = [int(t) for t in tokens]
    model = lm.model
    for n in range(pairs):
        row = []
        for p in (order[-1 - n], order[n]):  # high, then low
            pred = logits[p - 1].clone()
            pred[toks[p]] = -torch.inf
            alt = int(pred.argmax())
            tail = toks[p + 1:]
            new = _rollout(model, toks[:p] + [alt], len(tail), tok.eos_token_id, tok.pad_token_id)
            row.append((p, change(tail, new), alt))
        (ph, ch, ah), (pl, cl, al) = row
        out[n] = [ph, pl, ch, cl, ah, al]
    return out


def summary(trials: np.ndarray) -> dict:
    """Pooled trials [N, 6] -> how often the high-FAI change alters the rollout
    more (strictly), as much, or less; mean changes; and ``p_value``, a
    two-sided sign test of "more" against "less" over the trials that are not
    ties (is the high-FAI change more disruptive than a coin would make it?)."""
    from scipy.stats import binomtest

    t = trials[~np.isnan(trials[:, 2]) & ~np.isnan(trials[:, 3])]
    if not len(t):
        return {"n": 0, "high_more": float("nan"), "tie": float("nan"), "low_more": float("nan"),
                "high_change": float("nan"), "low_change": float("nan"), "p_value": float("nan")}
    h, lo = t[:, 2], t[:, 3]
    more, less = int((h > lo).sum()), int((h < lo).sum())
    return {"n": int(len(t)), "high_more": more / len(t), "tie": (len(t) - more - less) / len(t),
            "low_more": less / len(t), "high_change": float(h.mean()), "low_change": float(lo.mean()),
            "p_value": float(binomtest(more, more + less).pvalue) if more + less else 1.0}
