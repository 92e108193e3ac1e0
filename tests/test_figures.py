"""Every analysis' figures (issue 15), drawn from small stored results (tiny
runs of the CLIs) at one column (3.3 in) and full width (7 in), checked for
what needs no eyes: the shaded bands and error bars lie inside the physical
range of their quantity, every panel's axes are labelled, the legend names
every line, the text stays readable at that width, and the PDF embeds its
fonts as TrueType (not Type 3)."""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

from analyses import plots  # noqa: E402

torch.set_num_threads(1)
WIDTHS = (plots.COLUMN, plots.FULL)
MIN_FONT = 4.5  # points, after the figure is placed at its own width


# ---------------------------------------------------------------- checks

def _axes(fig):
    """The figure's visible panels (no colorbars)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"
            and not hasattr(ax, "_colorbar")]


def _legend_texts(fig) -> set[str]:
    out = set()
    for leg in list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out |= {t.get_text() for t in leg.get_texts()}
    return out


def check_bands(fig, lo, hi, tol=1e-9):
    """Every shaded band (fill_between) and every error bar inside [lo, hi]."""
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    n = 0
    for ax in _axes(fig):
        for c in ax.collections:
            if isinstance(c, PolyCollection):
                for p in c.get_paths():
                    y = p.vertices[:, 1]
                    y = y[np.isfinite(y)]
                    assert (y >= lo - tol).all() and (y <= hi + tol).all(), (ax.get_title(), y.min(), y.max())
                    n += 1
            elif isinstance(c, LineCollection):  # error bars (not the chance hlines: constant y)
                for seg in c.get_segments():
                    y = np.asarray(seg)[:, 1]
                    assert (y >= lo - tol).all() and (y <= hi + tol).all(), (ax.get_title(), y)
    return n


def check_labels(fig):
    """Every panel has an x label; the first panel of each row a y label."""
    rows = {}
    for ax in _axes(fig):
        assert ax.get_xlabel().strip(), f"panel {ax.get_title()!r} has no x label"
        spec = ax.get_subplotspec()
        rows.setdefault(spec.rowspan.start if spec else id(ax), []).append(ax)
    for row in rows.values():
        assert any(ax.get_ylabel().strip() for ax in row), f"row of {row[0].get_title()!r} has no y label"


def check_legend(fig):
    """Every labelled line, band and bar group is named in a legend; every
    unlabelled line is a zero line, an error bar's cap or empty."""
    names = _legend_texts(fig)
    for ax in _axes(fig):
        for line in ax.lines:
            lab = line.get_label()
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if lab.startswith("_"):
                assert (len(x) == 0 or line.get_linestyle() in ("None", "none", "") or (y == 0).all()
                        or (x == 0).all()), f"unnamed line in {ax.get_title()!r}"
            else:
                assert lab in names, f"line {lab!r} of {ax.get_title()!r} not in the legend {sorted(names)}"
        for cont in ax.containers:
            lab = cont.get_label()
            if lab and not lab.startswith("_"):
                assert lab in names, f"{lab!r} not in the legend"
    assert not any("_" in n and "->" not in n for n in names if not n.startswith("CF=")), names


def check_words(fig):
    """Titles and tick labels name tasks and edges in words, not identifiers."""
    for ax in _axes(fig):
        for t in [ax.get_title()] + [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]:
            assert not any(w in t for w in ("order3", "size_change", "static_color", "video_question",
                                            "cross_frame")), t


def check_fonts(fig, width):
    assert fig.get_figwidth() == pytest.approx(width)
    for t in fig.findobj(matplotlib.text.Text):
        if t.get_visible() and t.get_text().strip():
            assert t.get_fontsize() >= MIN_FONT, (t.get_text(), t.get_fontsize())


def check_pdf(fig, tmp_path):
    path = tmp_path / "f.pdf"
    fig.savefig(path)
    data = path.read_bytes()
    assert b"/FontType3" not in data.replace(b" ", b"") and b"/Subtype/Type3" not in data.replace(b" ", b"")
    assert b"TrueType" in data or b"CIDFontType2" in data


def check(fig, tmp_path, width, limits=None, bands=True):
    check_labels(fig)
    check_legend(fig)
    check_words(fig)
    check_fonts(fig, width)
    if limits is not None:
        n = check_bands(fig, *limits)
        if bands:
            assert n, "no band drawn"
    check_pdf(fig, tmp_path)
    plt.close(fig)


# ---------------------------------------------------------------- shared pieces

def test_interval_is_a_clipped_bootstrap_of_the_mean():
    x = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, np.nan]])
    m, lo, hi, n = plots.interval(x, limits=(0, 1))
    assert n.tolist() == [4, 3] and m.tolist() == [0.5, 1.0]
    assert 0 <= lo[0] < 0.5 < hi[0] <= 1 and lo[1] == hi[1] == 1.0
    # a normal interval on few samples leaves the range; the bootstrap's stays in it
    pct = np.array([-100.0, -100.0, -100.0, 20.0])
    se = pct.std(ddof=1) / 2
    assert pct.mean() - 1.96 * se < -100
    for method in ("bootstrap", "t"):
        m, lo, hi, _ = plots.interval(pct, limits=(-100, None), method=method)
        assert lo >= -100 and hi > m
    again = plots.interval(pct, limits=(-100, None))
    assert again[1] == plots.interval(pct, limits=(-100, None))[1]  # seeded: the same figure each time


def test_words_and_style():
    assert plots.words("order3") == "order of three" and plots.words("size_change") == "size change"
    assert plots.words("static_color") == "static colour" and plots.words("video_question") == "video -/-> question"
    assert plots.words("cross_frame") == "cross-frame" and plots.words("video->trailing") == "video -/-> trailing"
    assert plots.words("action_antonym") == "action antonym"
    assert plots.STYLE["pdf.fonttype"] == 42
    assert len(set(plots.COLORS)) == len(plots.COLORS) >= 7


# ---------------------------------------------------------------- flow and lens

@pytest.fixture(scope="module")
def flow_file(flow_tiny_run):
    """test_flow's tiny run (conftest.py), read only."""
    return flow_tiny_run[1]


@pytest.mark.parametrize("width", WIDTHS)
def test_flow_figures(flow_file, tmp_path, width):
    from analyses import flow, flow_figures as F

    res = flow.load_results(flow_file)
    for metric in ("flow", "flow_answer"):
        fig = F.plot_flow(res, metric, width=width)
        axes = _axes(fig)
        assert all(ax.get_ylim() == axes[0].get_ylim() for ax in axes)  # one y-axis for one quantity
        assert all("(n=" in ax.get_title() for ax in axes)
        caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
        assert "95% bootstrap interval of the mean" in caption
        check(fig, tmp_path, width, F.PCT_CHANGE)
    fig = F.plot_accuracy(res, width=width)
    assert "chance" in _legend_texts(fig)
    check(fig, tmp_path, width, F.UNIT)
    check(F.plot_layerwise(res, width=width), tmp_path, width, F.UNIT)
    fig = F.plot_pathways(res, width=width)
    assert "chance" in _legend_texts(fig)
    check(fig, tmp_path, width, F.UNIT, bands=False)
    # the edges and tasks in words
    assert "video -/-> last" in _legend_texts(F.plot_flow(res, width=width))
    plt.close("all")


@pytest.mark.parametrize("width", WIDTHS)
def test_lens_figures(flow_file, tmp_path, width):
    from analyses import lens, lens_figures as F

    res = lens.load_results(flow_file)
    check(F.plot_words(res, width=width), tmp_path, width)
    for r in res["readouts"]:
        check(F.plot_top_tokens(res, r, width=width), tmp_path, width)


# ---------------------------------------------------------------- TOMATO

@pytest.fixture(scope="module")
def tomato_file(tmp_path_factory):
    from analyses import tomato as T
    from analyses import tomato_metrics as M
    from test_tomato import TINY

    out = tmp_path_factory.mktemp("figtomato") / "tomato-tiny.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        T.main(["--model", TINY, "--dataset", "synthetic", "--tasks", "direction,order3,static_color", "--limit",
                "3", "--frames", "4", "--shuffle-seeds", "2", "--bootstrap", "50", "--no-progress", "--no-figures",
                "--threads", "1", "--out", str(out)])
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_tomato_figures(tomato_file, tmp_path, width):
    from analyses import tomato as T
    from analyses import tomato_figures as F
    from analyses import tomato_metrics as M

    ab = T.load_results(tomato_file)
    fig = F.curve_figure(ab, width=width)
    axes = _axes(fig)
    assert all(ax.get_ylim() == axes[0].get_ylim() for ax in axes)
    assert "chance" in _legend_texts(fig) and any(ax.get_title().startswith("order of three") for ax in axes)
    check(fig, tmp_path, width, (0, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        rows = M.metric_rows([ab], "task", n_boot=50)
    check(F.metrics_figure(rows, width=width), tmp_path, width)
    fig = F.layers_figure(ab, width=width)
    cos = _axes(fig)[:-1]
    assert len(cos) == 2 and cos[0].get_ylim() == cos[1].get_ylim()  # shuffled and reversed: one y-axis
    check(fig, tmp_path, width, (0, 2))


def test_tomato_palette_has_no_light_dark_pairs():
    from analyses.tomato_figures import _palette

    pal = _palette(16)
    assert len(set(pal)) == 16
    assert all(c in plots.COLORS for c, _, _ in pal)  # colour-blind-safe hues only; styles tell the rest apart


# ---------------------------------------------------------------- T3

@pytest.fixture(scope="module")
def t3_file(tmp_path_factory):
    from analyses import t3
    from test_t3 import TINY

    out = tmp_path_factory.mktemp("figt3") / "t3-tiny.h5"
    t3.main(["--model", TINY, "--tasks", "order3,size_change", "--samples", "8", "--frames", "3", "--C", "1.0",
             "--probe-seeds", "2", "--no-progress", "--out", str(out)])
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_t3_figures(t3_file, tmp_path, width):
    from analyses import t3
    from analyses import t3_figures as F

    res = t3.load_results(t3_file)
    fig = F.plot_layers(res, width=width)
    axes = _axes(fig)
    assert all(ax.get_ylim() == axes[0].get_ylim() for ax in axes)
    assert "chance" in _legend_texts(fig)
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["order of three", "size change"]
    # lines that coincide stay visible: the two probe curves carry markers and are offset
    probe = [l for l in axes[0].lines if l.get_label().startswith("probe")]
    assert all(l.get_marker() not in (None, "None", "") for l in probe)
    assert len({float(np.asarray(l.get_xdata())[-1]) for l in probe}) == 2
    check(fig, tmp_path, width, (0, 100))
    fig = F.plot_aspects(res, width=width)
    assert "chance" in _legend_texts(fig)
    check(fig, tmp_path, width, (0, 100), bands=False)
