"""Logit lens on video tokens (Map the Flow, Kim, Kim, Han; ICLR 2026, arXiv
2510.13251): what vocabulary word does the residual stream at each video token
look like, layer by layer? The stream is scored against the input-embedding
matrix, softmax(h @ E^T) with no norm (the paper's readout, 'embed'), and, as
second readouts, against the unembedding without ('unembed') and with
('unembed_norm') the final norm. The top-1 token is matched to word lists
(spatial vs temporal words, ...) and counted in layer bins, row-normalised:
the paper finds spatial words peak early and temporal words in middle layers.

    python -m analyses.lens --model organism --dataset synthetic --limit 4

    res = run(lm, samples, "cache/lens.h5", parse_words("synthetic"))  # on the run engine
    lens_figures.save_figures(load_results("cache/lens.h5"), folder)   # analyses/lens_figures.py

Layer entries: entry l (0 <= l <= L) is the residual stream after l layers:
entry l < L is blocks.{l}.hook_resid_pre (entry 0 = what the LLM reads at the
video positions), entry L is the last layer's output before the final norm.
Video positions: each frame group (tracing.layout.TokenLayout.frame_groups; on
Qwen two frames share one group) and its tokens; pool='frame_mean' averages
each group's tokens before the readout (P = 1). Separators outside the frame
spans (OneVision's newline) are left out.

The file (analyses/run.py's engine; one unit per sample, G and P up to the
largest sample's):

    /acts/topk_ids@<readout>     int32 [N, L+1, G, P, k] vocabulary ids, best first
    /acts/topk_probs@<readout>   float32 [N, L+1, G, P, k] their softmax probabilities
    /acts/pred                   int [N, 1] the option the model answers
    /results/lens/vocab          str [V] token string of each id (attrs: readouts, k, pool, bin width, lists)
    /results/lens/words/<list>   str [n] the words kept (attrs: ids, dropped words)

``load_results`` pads the samples together (ids -1, probabilities NaN) and
counts the top-1 readouts of each word list per layer bin (``word_counts``:
counts, row-normalised shares, rates). ``python -m analyses.flow --lens``
stores the same arrays under /results/lens/ of its own file.

A vocabulary token matches a list word when it equals it case-insensitively
once a leading-space marker ('▁', 'Ġ') is stripped; list words no single
token spells are dropped and reported.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

READOUTS = ("embed", "unembed", "unembed_norm")
READOUT_LABELS = {"embed": "input embedding (no norm)", "unembed": "unembedding, no final norm",
                  "unembed_norm": "unembedding after the final norm"}
POOLS = ("token", "frame_mean")

# Word lists. On the organism (tasks/synthetic.py): 'spatial' holds where an
# object is in a frame (the captions' row and column words), 'temporal' what
# happens across frames (order, events, motion, change; up/down are motion
# answers only, as the paper also counts them as temporal); 'colour' and
# 'appearance' are what one frame shows. 'middle' is left out (a row word and a
# time segment alike). Every word is one token of the organism's vocabulary
# (no 'before', 'after', 'flashes' there); words missing from another
# model's vocabulary are dropped with a warning.
SYNTHETIC_WORDS = {
    "spatial": ["left", "right", "top", "bottom", "upper", "lower", "centre", "far", "where"],
    "temporal": ["first", "then", "order", "when", "beginning", "end", "appears", "appear", "flash", "times",
                 "move", "up", "down", "clockwise", "counterclockwise", "fast", "slow", "brighter", "darker",
                 "larger", "smaller"],
    "colour": ["red", "green", "blue", "yellow"],
    "appearance": ["square", "circle", "object", "small", "medium", "large", "bright", "dim", "dark"],
    # The caption form numbers the frames ("Frame 1: ... Frame 8: ..."): a video
    # token reading as its frame's number carries its position in time.
    "frame_number": [str(i) for i in range(1, 17)],
}
# The words PAPERS.md quotes from Map the Flow's lists (their lists are longer).
PAPER_WORDS = {
    "spatial": ["bag", "bed", "box", "camera", "person"],
    "temporal": ["eat", "close", "drink", "hold", "open", "put", "sit", "throw", "take", "up", "down"],
}
PRESETS = {"synthetic": SYNTHETIC_WORDS, "paper": PAPER_WORDS}


def default_bin_width(n_layers: int) -> int:
    """5 on a 32-layer model (the paper), scaled to depth: max(1, L // 6)."""
    return max(1, int(n_layers) // 6)


# ---------------------------------------------------------------- readouts

def readout_weights(lm, readout: str):
    """The vocabulary matrix a readout scores against, in float32 ->
    (W [V, d], bias [V] or None, norm module or None)."""
    fam = lm.family
    if readout == "embed":
        return lm.module(fam.embed).weight.detach().float(), None, None
    if readout in ("unembed", "unembed_norm"):
        head = lm.module(fam.unembed)
        bias = getattr(head, "bias", None)
        norm = lm.module(fam.final_norm) if readout == "unembed_norm" else None
        return head.weight.detach().float(), None if bias is None else bias.detach().float(), norm
    raise ValueError(f"readout {readout!r}: choose from {', '.join(READOUTS)}")


def lens_topk(h, weights, k: int, chunk: int = 256):
    """Top-k of softmax(norm(h) @ W^T + b) over the full vocabulary.

    h: [..., d] residual stream (model dtype); weights from readout_weights.
    -> (ids int64 [..., k], probs float32 [..., k]) as torch tensors."""
    import torch

    W, b, norm = weights
    flat = h.reshape(-1, h.shape[-1])
    ids, probs = [], []
    with torch.no_grad():
        for r0 in range(0, flat.shape[0], chunk):  # bounds the [rows, V] logits of a large vocabulary
            x = flat[r0 : r0 + chunk]
            if norm is not None:
                x = norm(x.to(next(norm.parameters()).device))
            logits = x.float().to(W.device) @ W.T
            if b is not None:
                logits = logits + b
            # top-k of the logits, not of the probabilities: far-off tokens underflow to
            # probability 0 and would tie in an arbitrary order
            top, i = logits.topk(min(k, W.shape[0]), -1)
            ids.append(i)
            probs.append(torch.exp(top - torch.logsumexp(logits, -1, keepdim=True)))
    shape = (*h.shape[:-1], -1)
    return torch.cat(ids).reshape(shape), torch.cat(probs).reshape(shape)


def sample_lens(lm, inputs: dict, layout, k: int = 5, readouts=("embed",), pool: str = "token",
                cache: dict | None = None) -> dict:
    """The lens on one prompt (one forward through tracing.capture).

    -> {'topk_ids': {readout: int [L+1, G, P, k]}, 'topk_probs': {readout:
    float [L+1, G, P, k]}, 'pred': the option the model answers (final norm +
    unembedding at the last position)}. G frame groups, P tokens per group
    (1 with pool='frame_mean'). ``cache`` keeps readout weights between calls."""
    import torch

    from tracing.capture import capture

    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: choose from {', '.join(POOLS)}")
    if not layout.frames:
        raise ValueError("the lens on video tokens needs a prompt with video")
    L = lm.n_layers
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    acts = capture(lm, inputs, layout, hooks, positions="all")  # {hook: [T, d]}
    groups, dev = layout.frame_groups, lm.device  # with device_map='auto' layers sit on several devices
    h = torch.stack([torch.stack([acts[n][s.start : s.end].to(dev) for s in groups]) for n in hooks])  # [L+1,G,P,d]
    if pool == "frame_mean":
        h = h.float().mean(2, keepdim=True).to(h.dtype)
    cache = {} if cache is None else cache
    out = {"topk_ids": {}, "topk_probs": {}}
    for r in readouts:
        if r not in cache:
            cache[r] = readout_weights(lm, r)
        i, p = lens_topk(h, cache[r], k)
        out["topk_ids"][r] = i.cpu().numpy().astype(np.int32)
        out["topk_probs"][r] = p.cpu().numpy().astype(np.float32)
    # the model's answer, from the same forward: final norm + unembedding at the last position
    with torch.no_grad():
        last = lm.module(lm.family.final_norm)(acts[hooks[-1]][layout.last])
        if "unembed" not in cache:
            cache["unembed"] = readout_weights(lm, "unembed")
        W, b, _ = cache["unembed"]
        logits = last.float().to(W.device) @ W.T + (0 if b is None else b)
    out["pred"] = int(logits[list(layout.option_ids)].argmax())
    return out


def video_lens(lm, samples, k: int = 5, readouts=("embed",), pool: str = "token", progress: bool = True) -> dict:
    """The logit lens at the video tokens of every sample.

    -> dict with (N samples, L layers, G frame groups, P tokens per group,
    padded to the largest sample with id -1 and probability NaN):
      topk_ids {readout: int32 [N, L+1, G, P, k]}, topk_probs {readout: float32
      [N, L+1, G, P, k]}, n_groups [N], tokens_per_group [N], pred [N] (the
      model's option), label [N], readouts, k, pool, n_layers.
    Entry l of the layer axis is the residual stream after l layers (see the
    module docstring)."""
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs

    readouts = list(readouts)
    if not samples:
        raise ValueError("video_lens: no samples")
    for r in readouts:
        if r not in READOUTS:
            raise ValueError(f"readout {r!r}: choose from {', '.join(READOUTS)}")
    per, cache = [], {}
    for s in tqdm(samples, desc="video lens", unit="sample", disable=not progress):
        inputs, layout = build_sample_inputs(lm, s)
        per.append(sample_lens(lm, inputs, layout, k, readouts, pool, cache))
    N, E = len(per), lm.n_layers + 1
    shapes = [next(iter(x["topk_ids"].values())).shape for x in per]
    G, P, kk = max(s[1] for s in shapes), max(s[2] for s in shapes), shapes[0][3]
    ids = {r: np.full((N, E, G, P, kk), -1, np.int32) for r in readouts}
    probs = {r: np.full((N, E, G, P, kk), np.nan, np.float32) for r in readouts}
    for i, (x, sh) in enumerate(zip(per, shapes)):
        for r in readouts:
            ids[r][i, :, : sh[1], : sh[2]] = x["topk_ids"][r]
            probs[r][i, :, : sh[1], : sh[2]] = x["topk_probs"][r]
    return {"topk_ids": ids, "topk_probs": probs, "n_groups": np.array([s[1] for s in shapes]),
            "tokens_per_group": np.array([s[2] for s in shapes]), "pred": np.array([x["pred"] for x in per]),
            "label": np.array([int(s.answer) for s in samples]), "readouts": readouts, "k": kk, "pool": pool,
            "n_layers": lm.n_layers}


# ---------------------------------------------------------------- word lists

def _norm_token(t: str | None) -> str | None:
    """A vocabulary entry as a word: SentencePiece's '▁' and byte-level BPE's
    'Ġ' (a leading space) stripped, lower case."""
    if t is None:
        return None
    return t.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


def vocab_tokens(tokenizer, size: int) -> list[str]:
    """Token string of every id below ``size`` (the embedding's row count;
    rows past the tokenizer's vocabulary read as '<id N>')."""
    toks = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    toks = [t if t is not None else f"<id {i}>" for i, t in enumerate(toks)]
    return toks + [f"<id {i}>" for i in range(len(toks), size)]


def resolve_words(tokenizer, word_lists: dict[str, list[str]], vocab: list[str] | None = None,
                  warn: bool = True) -> tuple[dict[str, dict[str, list[int]]], dict[str, list[str]]]:
    """Words -> the vocabulary ids that spell them as one token.

    A token matches a word when it equals it case-insensitively once a
    leading-space marker ('▁', 'Ġ') is stripped, so 'left', '▁left' and 'Left'
    all count as 'left'. Words no single token spells (absent, or split into
    pieces) are dropped, listed in one UserWarning.
    -> ({list: {word: [ids]}} for the kept words, {list: [dropped words]})."""
    vocab = vocab if vocab is not None else vocab_tokens(tokenizer, len(tokenizer))
    index: dict[str, list[int]] = {}
    for i, t in enumerate(vocab):
        w = _norm_token(t)
        if w:
            index.setdefault(w, []).append(i)
    kept, dropped = {}, {}
    for name, words in word_lists.items():
        kept[name], dropped[name] = {}, []
        for w in words:
            ids = index.get(w.strip().lower())
            if ids:
                kept[name][w] = ids
            else:
                dropped[name].append(w)
    if warn and any(dropped.values()):
        what = "; ".join(f"{n}: {', '.join(d)}" for n, d in dropped.items() if d)
        warnings.warn(f"word-list words that are not single tokens of this vocabulary were dropped ({what})",
                      UserWarning, stacklevel=2)
    return kept, dropped


def parse_words(spec: str | dict | None, dataset: str = "synthetic") -> dict[str, list[str]]:
    """Word lists from a preset name ('synthetic', 'paper'; None or 'auto':
    'synthetic' on the synthetic dataset, else 'paper'), a spec
    'spatial=left,right;temporal=first,then', or a JSON file {list: [words]}."""
    if isinstance(spec, dict):
        return {str(k): [str(w) for w in v] for k, v in spec.items()}
    if spec in (None, "", "auto"):
        spec = "synthetic" if dataset == "synthetic" else "paper"
    if spec in PRESETS:
        return {k: list(v) for k, v in PRESETS[spec].items()}
    if "=" not in spec:
        p = Path(spec)
        if not p.is_file():
            raise ValueError(f"--words {spec!r}: not a preset ({', '.join(PRESETS)}), not 'name=w1,w2;...', "
                             f"and no such JSON file")
        d = json.loads(p.read_text())
        if not isinstance(d, dict) or not all(isinstance(v, list) for v in d.values()):
            raise ValueError(f"--words {spec}: the JSON file must hold {{list name: [words]}}")
        return parse_words(d)
    out: dict[str, list[str]] = {}
    for part in filter(None, (x.strip() for x in spec.split(";"))):
        name, _, words = part.partition("=")
        name = name.strip()
        if not name or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ValueError(f"--words: bad list name {name!r} in {part!r} (letters, digits, _ and - only)")
        out[name] = [w.strip() for w in words.split(",") if w.strip()]
    return out


def layer_bins(n_entries: int, bin_width: int) -> np.ndarray:
    """[B, 2] first and last entry (inclusive) of consecutive bins of
    ``bin_width`` layer entries; the last bin may be shorter."""
    if bin_width < 1:
        raise ValueError(f"bin width {bin_width}: must be >= 1")
    return np.array([(b, min(b + bin_width, n_entries) - 1) for b in range(0, n_entries, bin_width)])


def word_counts(top1: np.ndarray, word_ids: dict[str, list[int]] | dict[str, dict[str, list[int]]],
                bin_width: int) -> dict:
    """Counts of top-1 tokens in each word list per layer bin.

    top1: int [N, E, ...] top-1 ids with the layer entries on axis 1 (E = L+1);
    ids < 0 are padding and not counted. word_ids: {list: [ids]} or
    resolve_words' {list: {word: [ids]}}; a token in two lists counts in both.
    -> {'lists': names, 'bins' [B, 2], 'counts' int [W, B], 'totals' int [B]
    (all top-1 readouts in the bin), 'hits' int [W] (row sums), 'shares' [W, B]
    = counts / hits (row-normalised as in the paper; a list with no hit at all
    has shares 0, not NaN), 'rates' [W, B] = counts / totals (0 for an empty bin)}.
    """
    top1 = np.asarray(top1)
    bins = layer_bins(top1.shape[1], bin_width)
    names = list(word_ids)
    flat_ids = {n: sorted({i for v in (ids.values() if isinstance(ids, dict) else [ids]) for i in v})
                for n, ids in word_ids.items()}
    counts = np.zeros((len(names), len(bins)), np.int64)
    totals = np.zeros(len(bins), np.int64)
    for b, (lo, hi) in enumerate(bins):
        part = top1[:, lo : hi + 1]
        valid = part >= 0
        totals[b] = int(valid.sum())
        for w, n in enumerate(names):
            counts[w, b] = int((np.isin(part, flat_ids[n]) & valid).sum())
    hits = counts.sum(1)
    shares = np.divide(counts, hits[:, None], out=np.zeros(counts.shape), where=hits[:, None] > 0)
    rates = np.divide(counts, totals[None], out=np.zeros(counts.shape), where=totals[None] > 0)
    return {"lists": names, "bins": bins, "counts": counts, "totals": totals, "hits": hits, "shares": shares,
            "rates": rates}


def top_tokens(top1: np.ndarray, n: int = 3, axis_keep: tuple[int, ...] = (1,)) -> np.ndarray:
    """The most frequent top-1 ids over every axis but ``axis_keep``.

    top1: int [N, E, G, P]. -> object array shaped like the kept axes, each
    cell a list of (id, share) for the n most frequent ids (padding ignored)."""
    top1 = np.asarray(top1)
    rest = [a for a in range(top1.ndim) if a not in axis_keep]
    moved = np.moveaxis(top1, list(axis_keep), list(range(len(axis_keep))))
    kept_shape = moved.shape[: len(axis_keep)]
    flat = moved.reshape(*kept_shape, -1) if rest else moved[..., None]
    out = np.empty(kept_shape, dtype=object)
    for idx in np.ndindex(*kept_shape):
        v = flat[idx]
        v = v[v >= 0]
        c = Counter(v.tolist())
        out[idx] = [(i, m / max(len(v), 1)) for i, m in c.most_common(n)]
    return out


# ---------------------------------------------------------------- results file

def static_results(res: dict, attrs: dict, prefix: str = "lens") -> dict:
    """The results that need no sample: the vocabulary and the word lists kept
    -> {name: (array, attrs)}; the vocabulary's attrs describe the run."""
    out = {f"{prefix}/words/{n}": (np.array(list(ws), dtype=str),
                                   {"ids": {w: list(map(int, i)) for w, i in ws.items()},
                                    "dropped": list(res["dropped"].get(n, []))})
           for n, ws in res["words"].items()}
    out[f"{prefix}/vocab"] = (np.array(res["vocab"], dtype=str), attrs)
    return out


def _attrs(readouts, k: int, pool: str, n_layers: int, bin_width: int, lists) -> dict:
    return {"readouts": list(readouts), "k": k, "pool": pool, "n_layers": n_layers, "bin_width": int(bin_width),
            "lists": list(lists), "entries": f"entry l < {n_layers}: blocks.l.hook_resid_pre; "
                                              f"entry {n_layers}: blocks.{n_layers - 1}.hook_resid_post"}


def _unit_arrays(path, readouts: list[str]) -> dict:
    """The per-sample arrays of a run-engine file, padded into the [N, L+1, G, P, k]
    layout (ids -1 and probabilities NaN as padding)."""
    from analyses.run import stored
    from tracing.store import CacheReader

    ids = {x: stored(path, f"topk_ids@{x}", -1).astype(np.int32) for x in readouts}
    r = CacheReader(path)
    sizes = [np.shape(p) for p in r.acts(f"topk_ids@{readouts[0]}", complete_only=False)]
    out = {"topk_ids": ids, "topk_probs": {x: stored(path, f"topk_probs@{x}").astype(np.float32) for x in readouts},
           "n_groups": np.array([s[1] if len(s) > 1 else 0 for s in sizes]),
           "tokens_per_group": np.array([s[2] if len(s) > 2 else 0 for s in sizes])}
    if "pred" in r.hooks:  # the answer, stored per sample by the lens and by flow
        out["pred"] = stored(path, "pred", -1)[:, 0]
    return out


def load_results(path, prefix: str = "lens") -> dict:
    """The lens results of a ``python -m analyses.lens`` file or of a flow file
    run with --lens -> video_lens' dict plus 'words' {list: {word: [ids]}},
    'dropped', 'vocab', 'bin_width', 'word' {readout: word_counts dict} (counted
    here from the stored ids), 'task' [N], 'tasks', 'label' [N] and 'config'."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    names = r.results()
    if f"{prefix}/vocab" not in names:
        raise KeyError(f"{path}: no lens results under {prefix!r} (it holds {names}); run python -m analyses.lens")
    _, attrs = r.result(f"{prefix}/vocab")
    out = {"readouts": list(attrs["readouts"]), "k": attrs["k"], "pool": attrs["pool"], "n_layers": attrs["n_layers"],
           "bin_width": attrs["bin_width"], "config": r.config, "model": r.attrs.get("model"),
           "task": np.array(r.samples["task"]).astype(str), "label": np.array(r.samples["gold"]),
           "vocab": list(r.result(f"{prefix}/vocab")[0])}
    out["tasks"] = list(dict.fromkeys(out["task"].tolist()))
    out["words"], out["dropped"] = {}, {}
    for n in attrs["lists"]:
        w, wa = r.result(f"{prefix}/words/{n}")
        out["words"][n] = {str(x): wa["ids"][str(x)] for x in np.atleast_1d(w)}
        out["dropped"][n] = wa["dropped"]
    out.update(_unit_arrays(path, out["readouts"]))
    out["word"] = {x: word_counts(out["topk_ids"][x][..., 0], out["words"], out["bin_width"]) for x in out["readouts"]}
    return out


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from analyses.cli import common_parser

    ap = common_parser("python -m analyses.lens", __doc__.split("\n\n")[0].replace("\n", " "), limit=4)
    ap.add_argument("--k", type=int, default=5, help="top-k vocabulary tokens kept per token and layer")
    ap.add_argument("--readout", default=",".join(READOUTS),
                    help="comma-separated readouts: embed (softmax(h @ E^T), no norm: the paper), unembed "
                         "(lm head, no final norm), unembed_norm (final norm + lm head)")
    ap.add_argument("--pool", default="token", choices=POOLS,
                    help="read out every video token, or each frame's mean residual stream")
    ap.add_argument("--words", default="auto",
                    help="word lists: a preset (" + ", ".join(PRESETS) + "; auto = synthetic on the synthetic "
                         "dataset, else paper), 'spatial=left,right;temporal=first,then', or a JSON file "
                         "{list: [words]}; words that are not single tokens are dropped with a warning")
    ap.add_argument("--bin-width", type=int, default=None,
                    help="layer entries per bin of the word counts (default: max(1, L // 6), 5 on 32 layers)")
    return ap


class LensUnits:
    """The lens as per-sample arrays, for any declaration that wants it (this
    module's, and flow's ``--lens``): ``shapes`` of the arrays, ``static``
    results (vocabulary, word lists), ``config``, and ``arrays(inputs, layout)``
    for one sample: topk_ids@<readout> int32 [L+1, G, P, k], topk_probs@<readout>."""

    def __init__(self, lm, layouts, word_lists: dict[str, list[str]] | None = None, k: int = 5, readouts=READOUTS,
                 pool: str = "token", bin_width: int | None = None, warn: bool = True):
        self.readouts = list(readouts)
        bad = [r for r in self.readouts if r not in READOUTS]
        if bad or not self.readouts:
            raise ValueError(f"readouts {self.readouts}: choose from {', '.join(READOUTS)}")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}: choose from {', '.join(POOLS)}")
        if not layouts or not all(x.frames for x in layouts):
            raise ValueError("the lens on video tokens needs prompts with video")
        self.lm, self.k, self.pool = lm, k, pool
        vocab = vocab_tokens(lm.tokenizer, lm.module(lm.family.embed).weight.shape[0])
        words, dropped = resolve_words(lm.tokenizer, word_lists or SYNTHETIC_WORDS, vocab, warn=warn)
        bw = int(bin_width or default_bin_width(lm.n_layers))
        G = max(len(x.frame_groups) for x in layouts)  # the largest frame grid bounds the stored shapes
        P = 1 if pool == "frame_mean" else max(len(g) for x in layouts for g in x.frame_groups)
        E = lm.n_layers + 1
        self.shapes = {}
        for r in self.readouts:
            self.shapes[f"topk_ids@{r}"] = ((E, G, P, k), "int32")
            self.shapes[f"topk_probs@{r}"] = ((E, G, P, k), "float32")
        self.config = {"readout_list": self.readouts, "k": k, "pool": pool, "bin_width": bw, "word_lists": word_lists}
        self.static = static_results({"words": words, "dropped": dropped, "vocab": vocab},
                                     _attrs(self.readouts, k, pool, lm.n_layers, bw, words))
        self._cache: dict = {}

    def arrays(self, inputs: dict, layout) -> tuple[dict, int]:
        """-> ({name: array} of one sample, the option the model answers)."""
        x = sample_lens(self.lm, inputs, layout, self.k, self.readouts, self.pool, self._cache)
        out = {}
        for r in self.readouts:
            out[f"topk_ids@{r}"], out[f"topk_probs@{r}"] = x["topk_ids"][r], x["topk_probs"][r]
        return out, x["pred"]


def declare(lm, samples, word_lists: dict[str, list[str]] | None = None, k: int = 5, readouts=READOUTS,
            pool: str = "token", bin_width: int | None = None, config: dict | None = None, warn: bool = True):
    """The lens on every sample as a run-engine declaration: per sample the
    top-k ids and probabilities of every readout and the model's answer; the
    vocabulary and the word lists kept are stored with the file."""
    from analyses.run import Declaration, SkipUnit
    from tracing.inputs import build_sample_inputs
    from tracing.store import SampleMeta

    layouts = {}
    for i, s in enumerate(samples):  # no forward: the layouts bound the stored shapes
        try:
            layouts[i] = build_sample_inputs(lm, s)[1]
        except ValueError:
            pass
    if not layouts:
        raise ValueError("no sample could be prepared for the lens (no video?)")
    lens = LensUnits(lm, list(layouts.values()), word_lists, k, readouts, pool, bin_width, warn)

    def compute(i):
        if i not in layouts:
            raise SkipUnit(f"cannot build its prompt (frames {samples[i].n_frames})")
        inputs, layout = build_sample_inputs(lm, samples[i])
        arrays, pred = lens.arrays(inputs, layout)
        return {**arrays, "pred": np.array([pred])}, layout.to_dict(), {}

    units = [SampleMeta(s.id, s.task, int(s.answer), -1, {"question": s.question, "options": list(s.options)})
             for s in samples]
    return Declaration("lens", {**lens.config, **(config or {})}, units, compute,
                       shapes={**lens.shapes, "pred": ((1,), "int64")}, static=lens.static, describe="video lens")


def run(lm, samples, out, word_lists: dict[str, list[str]] | None = None, k: int = 5, readouts=READOUTS,
        pool: str = "token", bin_width: int | None = None, dataset: str = "synthetic", config: dict | None = None,
        overwrite: bool = False, progress: bool = True) -> dict:
    """The lens on every sample into the HDF5 file ``out`` (resumable; another
    configuration refused unless ``overwrite``) -> load_results(out)."""
    from analyses import run as engine

    decl = declare(lm, samples, word_lists, k, readouts, pool, bin_width, config, warn=False)
    done = engine.run(decl, out, lm.name, lm.fingerprint, dataset, overwrite=overwrite, progress=progress)
    return load_results(done.path)


def prepare(argv):
    """The CLI arguments -> run.Prepared (model, declaration, dataset), in the
    driver and in every Ray worker."""
    import torch

    from analyses.cli import load_data, load_from_args, preflight, run_config
    from analyses.run import Prepared, UsageError

    a = build_parser().parse_args(argv)
    readouts = [r.strip() for r in a.readout.split(",") if r.strip()]
    bad = [r for r in readouts if r not in READOUTS]
    if bad or not readouts:
        raise UsageError(f"--readout {a.readout!r}: choose from {', '.join(READOUTS)}")
    if a.k < 1:
        raise UsageError(f"--k {a.k}: must be >= 1")
    if a.bin_width is not None and a.bin_width < 1:
        raise UsageError(f"--bin-width {a.bin_width}: must be >= 1")
    try:
        word_lists = parse_words(a.words, a.dataset)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = preflight("lens", a)
    samples = load_data(a).samples
    lm = load_from_args(a)
    torch.manual_seed(a.seed)
    config = {k: v for k, v in run_config(a).items() if k not in ("readout", "words", "k", "pool", "bin_width")}
    decl = declare(lm, samples, word_lists, a.k, readouts, a.pool, a.bin_width, config, warn=False)
    return Prepared(lm, decl, a.dataset, a, out)


def main(argv=None) -> dict:
    from analyses import run as engine
    from analyses.cli import figures_dir
    from analyses.lens_figures import save_figures, table

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    engine.run(p.decl, p.out, p.lm.name, p.lm.fingerprint, p.dataset,
               **engine.engine_options(p.args, "analyses.lens", argv))
    res = load_results(p.out)
    if any(res["dropped"].values()):
        print("dropped word-list words that are not single tokens of this vocabulary: "
              + "; ".join(f"{n}: {', '.join(d)}" for n, d in res["dropped"].items() if d), file=sys.stderr)
    paths = save_figures(res, figures_dir(p.args, p.out))
    print(table(res))
    print(f"wrote {p.out}, {', '.join(paths)}", file=sys.stderr)
    return res


if __name__ == "__main__":
    from analyses.run import cli_boundary

    raise SystemExit(cli_boundary(main)())
