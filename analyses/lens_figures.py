"""The logit lens' figures and table, drawn from ``analyses.lens.load_results``
(no model needed): the word-category counts per layer bin and the top tokens
read at the video positions.

    from analyses import lens, lens_figures
    res = lens.load_results("cache/lens-organism-synthetic.h5")
    print(lens_figures.table(res)); lens_figures.plot_words(res)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses.lens import READOUT_LABELS, top_tokens

def bin_labels(bins) -> list[str]:
    return [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in np.asarray(bins)]


def plot_words(res: dict, width: float | None = None):
    """Heatmap per readout: rows = word lists, columns = layer bins, colour and
    text = the row-normalised share of the list's top-1 hits in that bin."""
    from analyses.plots import panels, words

    rs = res["readouts"]
    W = len(next(iter(res["word"].values()))["lists"])
    B = len(next(iter(res["word"].values()))["bins"])
    each = max(2.2, 0.4 * B + 1.3)  # inches a panel needs
    width = width or min(7.0, each * len(rs))
    fig, axes = panels(len(rs), width=width, height=0.4 * W + 1.3, ncols=max(1, min(len(rs), int(width // each))))
    for ax, r in zip(axes, rs):
        c = res["word"][r]
        ax.imshow(c["shares"], cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.grid(False)
        for w in range(W):
            for b in range(B):
                v = c["shares"][w, b]
                ax.text(b, w, f"{v:.2f}" if c["hits"][w] else "-", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 else "black")
        ax.set_xticks(range(B), bin_labels(c["bins"]), rotation=45 if B > 6 else 0, fontsize=7)
        ax.set_yticks(range(W), [f"{words(n)} (n={h})" for n, h in zip(c["lists"], c["hits"])], fontsize=7)
        ax.set_xlabel("layers applied (bin)")
        ax.set_ylabel("word list (top-1 hits)")
        ax.set_title(READOUT_LABELS[r], fontsize=8)
    import textwrap

    fig.suptitle(textwrap.fill(f"Logit lens on video tokens: top-1 in word list, row-normalised "
                               f"({res.get('model', '')})", int(width * 14)), fontsize=8)
    fig.tight_layout()
    return fig


def plot_top_tokens(res: dict, readout: str = "embed", width: float | None = None):
    """The most frequent top-1 token per layer entry (rows) and frame group
    (columns, plus 'all'), over samples and the group's tokens; colour = its share."""
    import matplotlib.pyplot as plt

    from analyses.plots import STYLE

    plt.rcParams.update(STYLE)
    top1 = res["topk_ids"][readout][..., 0]  # [N, E, G, P]
    E, G = top1.shape[1], top1.shape[2]
    per_frame = top_tokens(top1, 1, (1, 2))  # [E, G]
    overall = top_tokens(top1, 1, (1,))  # [E]
    vocab = res["vocab"]
    share = np.zeros((E, G + 1))
    text = np.empty((E, G + 1), dtype=object)
    for e in range(E):
        for g in range(G + 1):
            cell = overall[e] if g == G else per_frame[e, g]
            i, s = cell[0] if cell else (-1, 0.0)
            share[e, g] = s
            text[e, g] = (vocab[i] if 0 <= i < len(vocab) else "") + f"\n{s:.0%}"
    width = width or min(7.0, 0.75 * (G + 1) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 0.32 * E + 1.2))
    ax.imshow(share, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.grid(False)
    for e in range(E):
        for g in range(G + 1):
            ax.text(g, e, text[e, g], ha="center", va="center", fontsize=5.5 if width / (G + 1) >= 0.45 else 4.5,
                    color="white" if share[e, g] > 0.65 else "black")
    ax.set_xticks(range(G + 1), [f"f{g}" for g in range(G)] + ["all"], fontsize=7)
    ax.set_yticks(range(E), [str(e) for e in range(E)], fontsize=7)
    ax.set_xlabel("frame (group)")
    ax.set_ylabel("layers applied")
    ax.set_title(f"Most frequent top-1 token, {READOUT_LABELS[readout]}\n({res.get('model', '')})", fontsize=8)
    fig.tight_layout()
    return fig


def save_figures(res: dict, folder, prefix: str = "lens") -> list[str]:
    """<folder>/<prefix>_words and <prefix>_top_<readout>, PNG and PDF."""
    from analyses.plots import save

    folder = Path(folder)
    paths = save(plot_words(res), folder / f"{prefix}_words")
    for r in res["readouts"]:
        paths += save(plot_top_tokens(res, r), folder / f"{prefix}_top_{r}")
    return paths


def table(res: dict, n: int = 3) -> str:
    """Per readout: the word-list shares per bin, and the n most frequent
    top-1 tokens at each layer entry (with their share of the video tokens)."""
    vocab, rows = res["vocab"], []
    for r in res["readouts"]:
        c = res["word"][r]
        labels = bin_labels(c["bins"])
        rows.append(f"== {r}: {READOUT_LABELS[r]}")
        rows.append(f"{'list (hits)':<22}" + "".join(f"{x:>8}" for x in labels) + "   row-normalised share")
        for w, name in enumerate(c["lists"]):
            head = f"{name} ({c['hits'][w]})"
            rows.append(f"{head:<22}" + "".join(f"{v:8.2f}" for v in c["shares"][w]))
        rows.append(f"{'share of all tokens':<22}" + "".join(f"{v:8.2f}" for v in c["rates"].sum(0)))
        tt = top_tokens(res["topk_ids"][r][..., 0], n, (1,))
        for e, cell in enumerate(tt):
            rows.append(f"  after {e:>2} layers: " + ", ".join(f"{vocab[i]!s} {s:.0%}" for i, s in cell))
    return "\n".join(rows)


