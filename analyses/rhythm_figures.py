"""Figures of the preplan-and-anchor rhythm (PAPERS.md section 4), drawn from
plain numpy arrays (``analyses.rhythm_metrics`` computes them; no model, no
h5py): one trace's tokens coloured by WAAD and FAI, the histogram of head
spans with the local/global cuts, per-frame FAI by layer, frame x frame
attention mass per head group, and observed-vs-baseline coupling rates.

Every function returns the matplotlib Figure; given ``path`` (a stem without
suffix) it also writes path.png and path.pdf through ``analyses.plots.save``
(which closes the figure). Sized for one column of a two-column paper
(``width`` = 3.3 in). Colours: WAAD on Blues, FAI on Oranges, attention mass
on Greens; undefined values (NaN) grey.

    from analyses import rhythm_figures as rf
    rf.head_span_histogram(d, loc, glob, path="figures/head_spans")
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from analyses.plots import COLORS, STYLE, save

WAAD_LABEL = "windowed average attention distance (WAAD)"
FAI_LABEL = "future attention influence (FAI)"
WAAD_CMAP, FAI_CMAP, MASS_CMAP = "Blues", "Oranges", "Greens"
UNDEFINED = "0.72"  # grey for NaN cells
OUTLINE_COLORS = ["black", COLORS[0], COLORS[2], COLORS[4], COLORS[5]]
OUTLINE_STYLES = ["-", "--", ":", "-."]


def _limits(x, floor_zero: bool = False) -> tuple[float, float]:
    """(vmin, vmax) covering the finite values of x (0..1 when there are none;
    widened by 1 when they are all equal); vmin = 0 when ``floor_zero`` and
    no value is negative."""
    v = np.asarray(x, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if floor_zero and lo >= 0:
        lo = 0.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _cmap(name: str):
    return plt.get_cmap(name).with_extremes(bad=UNDEFINED)


def _figure(width: float, height: float):
    plt.rcParams.update(STYLE)
    return plt.figure(figsize=(width, height), layout="constrained")


def _finish(fig, path):
    if path is not None:
        save(fig, path)
    return fig


def _show(token: str) -> str:
    """A token as drawn: line breaks and tabs as visible glyphs, outer spaces dropped."""
    return token.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u21e5").strip(" ")


def token_strip(tokens: list[str], waad: np.ndarray, fai: np.ndarray, preplan: np.ndarray, anchor: np.ndarray,
                path=None, title: str | None = None, per_row: int = 24, width: float = 3.3,
                preplan_frac: float = 0.4, anchor_frac: float = 0.4):
    """One trace's tokens laid out as text, ``per_row`` tokens a row, in two
    panels: background by WAAD (top) and by FAI (bottom, NaN grey), each with
    its colorbar. In both panels preplan tokens carry a triangle below them and
    anchor tokens a black box. The fractions only word the legend."""
    T = len(tokens)
    waad, fai = np.asarray(waad, dtype=float), np.asarray(fai, dtype=float)
    preplan, anchor = np.asarray(preplan, dtype=bool), np.asarray(anchor, dtype=bool)
    for name, a in (("waad", waad), ("fai", fai), ("preplan", preplan), ("anchor", anchor)):
        if a.shape != (T,):
            raise ValueError(f"{name} must have shape ({T},), got {a.shape}")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    shown = [_show(t) for t in tokens]
    lens = np.array([max(1, len(s)) for s in shown], dtype=float)
    gap = 0.7  # characters between two tokens
    rows = [np.arange(i, min(i + per_row, T)) for i in range(0, T, per_row)] or [np.arange(0)]
    x0 = np.zeros(T)
    for r in rows:
        if len(r):
            x0[r] = np.concatenate([[0.0], np.cumsum(lens[r] + gap)[:-1]])
    span = max([float(x0[r[-1]] + lens[r[-1]]) for r in rows if len(r)] + [1.0])
    fs = min(7.0, (width - 0.12) / span * 72 / 0.6)  # monospace: a character is 0.6 em wide
    row_in = max(0.14, 3.3 * fs / 72)
    panel_in = len(rows) * row_in
    fig = _figure(width, 2 * panel_in + 1.55 + (0.2 if title else 0))
    gs = fig.add_gridspec(4, 1, height_ratios=[panel_in, 0.07, panel_in, 0.07])
    panels = [(WAAD_LABEL, "local heads: WAAD", waad, WAAD_CMAP), (FAI_LABEL, "global heads: FAI", fai, FAI_CMAP)]
    for i, (label, head, values, cname) in enumerate(panels):
        ax, cax = fig.add_subplot(gs[2 * i]), fig.add_subplot(gs[2 * i + 1])
        norm, cmap = Normalize(*_limits(values)), _cmap(cname)
        for t in range(T):
            r = t // per_row
            v = values[t]
            face = cmap(norm(v)) if np.isfinite(v) else UNDEFINED
            ax.add_patch(Rectangle((x0[t] - 0.15, r + 0.04), lens[t] + 0.3, 0.62, facecolor=face,
                                   edgecolor="black" if anchor[t] else "none", lw=0.6))
            dark = np.isfinite(v) and norm(v) > 0.62
            ax.text(x0[t] + lens[t] / 2, r + 0.36, shown[t], ha="center", va="center", family="monospace",
                    fontsize=fs, color="white" if dark else "black")
        pre = np.flatnonzero(preplan)
        ax.plot(x0[pre] + lens[pre] / 2, pre // per_row + 0.84, "^", color="black", ms=max(1.8, 0.5 * fs),
                mew=0, ls="none")
        ax.set_xlim(-0.3, span + 0.3)
        ax.set_ylim(len(rows), 0)
        ax.set_axis_off()
        ax.set_title(head, fontsize=7, loc="left")
        fig.colorbar(ScalarMappable(norm, cmap), cax=cax, orientation="horizontal")
        cax.set_xlabel(label, fontsize=7)
        cax.tick_params(labelsize=6)
    handles = [Line2D([], [], marker="^", color="black", ls="none", ms=4,
                      label=f"preplan token (top {preplan_frac:.0%} of |\u0394WAAD|)"),
               Patch(facecolor="none", edgecolor="black", lw=0.8, label=f"anchor token (top {anchor_frac:.0%} of FAI)"),
               Patch(facecolor=UNDEFINED, label="FAI undefined (no later token in its horizon)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=1, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return _finish(fig, path)


def head_span_histogram(d: np.ndarray, local_mask: np.ndarray, global_mask: np.ndarray, path=None,
                        local_frac: float = 0.3, global_frac: float = 0.3, width: float = 3.3, bins: int | None = None):
    """Histogram of the span d of every head (stacked: local, global, other
    heads) with the two cuts as vertical lines: the largest span of a local
    head and the smallest span of a global head."""
    d = np.asarray(d, dtype=float)
    loc, glob = np.asarray(local_mask, dtype=bool), np.asarray(global_mask, dtype=bool)
    if loc.shape != d.shape or glob.shape != d.shape:
        raise ValueError(f"masks must have the shape of d {d.shape}, got {loc.shape} and {glob.shape}")
    flat = d[np.isfinite(d)]
    edges = np.histogram_bin_edges(flat if flat.size else [0.0, 1.0],
                                   bins=bins or int(np.clip(2 * np.sqrt(max(flat.size, 1)), 8, 40)))
    fig = _figure(width, 2.3)
    ax = fig.add_subplot()
    other = ~(loc | glob)
    groups = [(d[loc], "local heads", COLORS[0]), (d[other], "other heads", "0.7"), (d[glob], "global heads", COLORS[1])]
    ax.hist([g[np.isfinite(g)] for g, _, _ in groups], bins=edges, stacked=True, color=[c for _, _, c in groups],
            label=[lab for _, lab, _ in groups])
    if loc.any():
        cut = float(np.max(d[loc]))
        ax.axvline(cut, color=COLORS[0], ls="--", lw=1.1, label=f"local: bottom {local_frac:.0%} (d \u2264 {cut:.3g})")
    if glob.any():
        cut = float(np.min(d[glob]))
        ax.axvline(cut, color=COLORS[1], ls="--", lw=1.1, label=f"global: top {global_frac:.0%} (d \u2265 {cut:.3g})")
    ax.set_xlabel("head span d (tokens)")
    ax.set_ylabel("heads")
    ax.legend(fontsize=7, loc="upper right")
    return _finish(fig, path)


def _frame_ticks(ax, n: int, axis: str, most: int = 8):
    step = max(1, int(np.ceil(n / most)))
    getattr(ax, f"set_{axis}ticks")(np.arange(0, n, step))
    ax.tick_params(labelsize=7)


def frame_fai(fai_by_frame: np.ndarray, layers: list[int], path=None, marks: dict[str, list[int]] | None = None,
              width: float = 3.3):
    """FAI summed over each frame's tokens, per layer: a heatmap with layers as
    rows (lowest at the bottom) and frames as columns; the frames named in
    ``marks`` (name -> frame indices) outlined, one outline style per name."""
    a = np.asarray(fai_by_frame, dtype=float)
    if a.ndim != 2 or a.shape[0] != len(layers):
        raise ValueError(f"fai_by_frame must be [len(layers)={len(layers)}, F], got {a.shape}")
    L, F = a.shape
    fig = _figure(width, float(np.clip(0.14 * L + 1.3, 1.8, 4.5)))
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap=_cmap(FAI_CMAP), norm=Normalize(*_limits(a)), aspect="auto", origin="lower",
                   interpolation="nearest")
    ax.grid(False)
    handles = []
    for j, (name, frames) in enumerate((marks or {}).items()):
        style = dict(edgecolor=OUTLINE_COLORS[j % len(OUTLINE_COLORS)], ls=OUTLINE_STYLES[j % len(OUTLINE_STYLES)],
                     lw=1.3, facecolor="none")
        for f in frames:
            if not 0 <= f < F:
                raise ValueError(f"marks[{name!r}] has frame {f}, outside 0..{F - 1}")
            ax.add_patch(Rectangle((f - 0.5, -0.5), 1, L, clip_on=False, **style))
        handles.append(Patch(label=name, **style))
    if np.isnan(a).any():
        handles.append(Patch(facecolor=UNDEFINED, label="undefined (no later token in the horizon)"))
    _frame_ticks(ax, F, "x")
    step = max(1, int(np.ceil(L / 10)))
    ax.set_yticks(np.arange(0, L, step), [str(layers[i]) for i in range(0, L, step)], fontsize=7)
    ax.set_xlabel("frame")
    ax.set_ylabel("layer")
    cb = fig.colorbar(im, ax=ax, location="right", fraction=0.08, pad=0.02)
    cb.set_label("future attention influence (FAI)\nsummed over the frame's tokens", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2), fontsize=7)
    return _finish(fig, path)


def frame_mass(mass: np.ndarray, group_names: list[str], path=None, width: float = 3.3):
    """Attention mass from query frames (rows) to key frames (columns), one
    panel per head group, on one shared colour scale with one colorbar."""
    m = np.asarray(mass, dtype=float)
    if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[0] != len(group_names):
        raise ValueError(f"mass must be [len(group_names)={len(group_names)}, F, F], got {m.shape}")
    G, F = m.shape[0], m.shape[1]
    fig = _figure(width, (width - 0.9) / G + 0.8)
    axes = fig.subplots(1, G, squeeze=False, sharey=True)[0]
    norm, cmap = Normalize(*_limits(m, floor_zero=True)), _cmap(MASS_CMAP)
    for g, ax in enumerate(axes):
        im = ax.imshow(m[g], cmap=cmap, norm=norm, interpolation="nearest")
        ax.grid(False)
        ax.set_title(group_names[g], fontsize=7)
        _frame_ticks(ax, F, "x", most=4)
        _frame_ticks(ax, F, "y", most=4)
        ax.set_xlabel("key frame", fontsize=7)
    axes[0].set_ylabel("query frame", fontsize=7)
    cb = fig.colorbar(im, ax=list(axes), location="right", fraction=0.05, pad=0.02, shrink=0.8)
    cb.set_label("attention mass", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return _finish(fig, path)


def coupling_bars(rates: dict[str, tuple[float, float]], path=None, width: float = 3.3):
    """Observed rate against its random baseline for each named statistic
    (values are fractions in [0, 1], drawn in percent)."""
    names = list(rates)
    vals = np.array([rates[n] for n in names], dtype=float).reshape(len(names), 2)
    finite = vals[np.isfinite(vals)]
    if ((finite < 0) | (finite > 1)).any():
        raise ValueError("rates must be fractions in [0, 1] (they are drawn in percent)")
    fig = _figure(width, 2.5)
    ax = fig.add_subplot()
    x, w = np.arange(len(names)), 0.38
    ax.bar(x - w / 2, 100 * vals[:, 0], w, color=COLORS[0], label="observed")
    ax.bar(x + w / 2, 100 * vals[:, 1], w, color="0.65", label="random baseline")
    ax.set_xticks(x, [textwrap.fill(n, 16) for n in names], fontsize=6.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("rate (%)")
    ax.set_xlabel("statistic")
    ax.legend(fontsize=7, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return _finish(fig, path)
