"""analyses/rhythm_figures.py: each figure drawn from small seeded synthetic
arrays into tmp_path, checked without eyes: PNG and PDF written and non-empty,
axis labels present, the legend or colorbar naming every marked element, the
colour scales covering the data (NaN excluded), the histogram's cuts at the
values the masks imply, bad shapes rejected.

The project saves PDFs with matplotlib's default font type (analyses/plots.py
sets no pdf.fonttype), so embedded TrueType fonts are not asserted here.
"""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from analyses import rhythm_figures as F
from analyses.rhythm_metrics import head_groups


def _written(stem) -> None:
    png, pdf = stem.parent / (stem.name + ".png"), stem.parent / (stem.name + ".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def _legend_texts(fig) -> list[str]:
    out = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    for ax in fig.axes:
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def _covers(lims, values) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = sorted(lims)
    assert lo <= v.min() + 1e-12 and hi >= v.max() - 1e-12


def _colorbar(fig, label: str):
    found = [ax for ax in fig.axes if label in ax.get_xlabel() or label in ax.get_ylabel()]
    assert len(found) == 1, [(a.get_xlabel(), a.get_ylabel()) for a in fig.axes]
    return found[0]


@pytest.fixture
def trace():
    rng = np.random.default_rng(0)
    T = 30
    tokens = [" " + w for w in rng.choice(["the", "clips", "48", "=", "Step", "answer", "\n", "so"], T)]
    waad = rng.gamma(2.0, 2.0, T)
    fai = rng.random(T)
    fai[-4:] = np.nan  # horizon past the end
    preplan, anchor = rng.random(T) < 0.4, rng.random(T) < 0.4
    return tokens, waad, fai, preplan, anchor


def test_token_strip(tmp_path, trace):
    tokens, waad, fai, preplan, anchor = trace
    fig = F.token_strip(tokens, waad, fai, preplan, anchor, path=tmp_path / "strip", title="trace 0", per_row=8)
    _written(tmp_path / "strip")
    _covers(_colorbar(fig, F.WAAD_LABEL).get_xlim(), waad)
    _covers(_colorbar(fig, F.FAI_LABEL).get_xlim(), fai)
    labels = _legend_texts(fig)
    assert "preplan token (top 40% of |\u0394WAAD|)" in labels
    assert "anchor token (top 40% of FAI)" in labels
    assert any("FAI undefined" in t for t in labels)
    text_axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in text_axes] == ["local heads: WAAD", "global heads: FAI"]
    for ax in text_axes:
        assert [t.get_text() for t in ax.texts] == [F._show(t) for t in tokens]
        assert max(ax.get_ylim()) == 4  # 30 tokens, 8 a row
        cells = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(cells) == len(tokens)
        boxed = [p.get_edgecolor()[3] > 0 for p in cells]
        assert boxed == list(anchor)
        (marks,) = ax.lines
        assert len(marks.get_xdata()) == preplan.sum() and marks.get_marker() == "^"
    grey = [np.allclose(p.get_facecolor()[:3], [float(F.UNDEFINED)] * 3) for p in text_axes[1].patches]
    assert grey == list(np.isnan(fai))
    fig = F.token_strip(tokens, waad, fai, preplan, anchor, preplan_frac=0.25, anchor_frac=0.1)
    assert {"preplan token (top 25% of |\u0394WAAD|)", "anchor token (top 10% of FAI)"} <= set(_legend_texts(fig))
    with pytest.raises(ValueError):
        F.token_strip(tokens, waad[:-1], fai, preplan, anchor)
    with pytest.raises(ValueError):
        F.token_strip(tokens, waad, fai, preplan, anchor, per_row=0)


def test_head_span_histogram(tmp_path):
    rng = np.random.default_rng(1)
    d = rng.gamma(2.0, 15.0, (6, 8))
    loc, glob = head_groups(d, 0.3, 0.3)
    fig = F.head_span_histogram(d, loc, glob, path=tmp_path / "spans")
    _written(tmp_path / "spans")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "head span d (tokens)" and ax.get_ylabel() == "heads"
    cuts = {ln.get_label().split(" (")[0]: ln.get_xdata()[0] for ln in ax.lines}
    assert cuts == {"local: bottom 30%": pytest.approx(d[loc].max()), "global: top 30%": pytest.approx(d[glob].min())}
    labels = _legend_texts(fig)
    assert {"local heads", "global heads", "other heads"} <= set(labels)
    assert all(ln.get_label() in labels for ln in ax.lines)
    assert sum(p.get_height() for p in ax.patches) == d.size  # every head counted once
    # hand-made masks and other fractions: the cuts follow the masks given
    loc2, glob2 = np.zeros_like(loc), np.zeros_like(glob)
    loc2.flat[[0, 5]], glob2.flat[[7, 9, 11]] = True, True
    ax = F.head_span_histogram(d, loc2, glob2, local_frac=0.1, global_frac=0.2).axes[0]
    cuts = {ln.get_label().split(" (")[0]: ln.get_xdata()[0] for ln in ax.lines}
    assert cuts == {"local: bottom 10%": pytest.approx(d.flat[[0, 5]].max()),
                    "global: top 20%": pytest.approx(d.flat[[7, 9, 11]].min())}
    with pytest.raises(ValueError):
        F.head_span_histogram(d, loc[:, :4], glob)


def test_frame_fai(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.random((5, 7)) * 3
    a[:, -1] = np.nan
    layers = [4, 6, 8, 10, 12]
    marks = {"informative frames": [1, 2], "answer frame": [5]}
    fig = F.frame_fai(a, layers, path=tmp_path / "ffai", marks=marks)
    _written(tmp_path / "ffai")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "frame" and ax.get_ylabel() == "layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(x) for x in layers]
    _covers(ax.images[0].get_clim(), a)
    cbar = _colorbar(fig, "future attention influence (FAI)")
    _covers(cbar.get_ylim(), a)
    labels = _legend_texts(fig)
    assert set(marks) <= set(labels) and any("undefined" in t for t in labels)
    outlined = sorted(p.get_x() + 0.5 for p in ax.patches)
    assert outlined == [1, 2, 5]
    fig = F.frame_fai(np.ones((2, 3)), [0, 1])  # no marks, no NaN, constant values
    assert _legend_texts(fig) == []
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo <= 1 <= hi and hi > lo
    with pytest.raises(ValueError):
        F.frame_fai(a, layers, marks={"x": [7]})
    with pytest.raises(ValueError):
        F.frame_fai(a, layers[:-1])


def test_frame_mass(tmp_path):
    rng = np.random.default_rng(3)
    m = rng.dirichlet(np.ones(6), (3, 6)) * np.tril(np.ones((6, 6)))
    m[2] *= 2.5  # the groups differ in scale: the shared scale must cover the largest
    names = ["local heads", "global heads", "all heads"]
    fig = F.frame_mass(m, names, path=tmp_path / "mass")
    _written(tmp_path / "mass")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == names
    assert all(ax.get_xlabel() == "key frame" for ax in panels) and panels[0].get_ylabel() == "query frame"
    clims = {ax.images[0].get_clim() for ax in panels}
    assert len(clims) == 1
    _covers(clims.pop(), m)
    _covers(_colorbar(fig, "attention mass").get_ylim(), m)
    with pytest.raises(ValueError):
        F.frame_mass(m, names[:2])


def test_coupling_bars(tmp_path):
    rates = {"anchor after a preplan token (k=1)": (0.5253, 0.3687), "entropy at WAAD peaks": (0.36, 0.24)}
    fig = F.coupling_bars(rates, path=tmp_path / "bars")
    _written(tmp_path / "bars")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "rate (%)" and ax.get_xlabel()
    assert ax.get_ylim() == (0, 100)
    assert set(_legend_texts(fig)) == {"observed", "random baseline"}
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([52.53, 36.0, 36.87, 24.0])
    with pytest.raises(ValueError):
        F.coupling_bars({"percent by mistake": (52.5, 36.9)})
