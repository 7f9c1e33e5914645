"""layerif.plots: figures render, carry the data they were given, and touch no pyplot state."""
from io import BytesIO

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from layerif import plots  # noqa: E402


@pytest.fixture
def task_by_layer():
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.integers(1, 9, size=(3, 6)).astype(float), index=["mrpc", "sst2", "csqa"],
                        columns=pd.Index(range(6), name="layer"))


@pytest.fixture
def means():
    return pd.DataFrame({"uniform": [0.55, 0.60], "layerif": [0.58, 0.66]}, index=["wanda", "sparsegpt"])


def render(fig) -> np.ndarray:
    buf = BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getbuffer().nbytes > 1000
    buf.seek(0)
    image = mpimg.imread(buf, format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    flat = image.reshape(-1, image.shape[-1])
    assert len(np.unique(flat, axis=0)) > 10  # not a single colour
    return image


def ticks(labels) -> list[str]:
    return [t.get_text() for t in labels]


def test_heatmap_holds_the_frame(task_by_layer):
    fig = plots.heatmap(task_by_layer, title="experts", cbar_label="experts", annotate=True)
    render(fig)
    ax = fig.axes[0]
    assert np.array_equal(np.asarray(ax.images[0].get_array()), task_by_layer.to_numpy())
    assert ticks(ax.get_xticklabels()) == [str(c) for c in range(6)]
    assert ticks(ax.get_yticklabels()) == ["mrpc", "sst2", "csqa"]
    assert ax.get_title() == "experts"
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(f"{v:.0f}" for v in task_by_layer.to_numpy().ravel())


def test_heatmap_center_makes_symmetric_limits(task_by_layer):
    fig = plots.heatmap(task_by_layer, center=2.0, cmap="RdBu_r")
    lo, hi = fig.axes[0].images[0].get_clim()
    vals = task_by_layer.to_numpy()
    half = max(vals.max() - 2.0, 2.0 - vals.min())
    assert (lo, hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))


def test_correlation_fixed_scale_and_annotated():
    corr = pd.DataFrame([[1.0, -0.22], [-0.22, 1.0]], index=["a", "b"], columns=["a", "b"])
    fig = plots.correlation(corr, title="agreement")
    render(fig)
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    assert sorted(t.get_text() for t in ax.texts) == ["-0.22", "-0.22", "1.00", "1.00"]
    with pytest.raises(ValueError, match="^frame="):
        plots.correlation(corr.iloc[:1])
    with pytest.raises(ValueError, match="^frame="):
        plots.correlation(corr * 2)


@pytest.mark.parametrize("kind", ["line", "step", "bar"])
def test_layer_lines_one_series_per_column(kind):
    frame = pd.DataFrame({"layerif": [1.0, 3.0, 2.0, 4.0], "alphalora": [2.0, 2.0, 3.0, 3.0]},
                         index=pd.Index(range(4), name="layer"))
    fig = plots.layer_lines(frame, title="alloc", ylabel="experts", kind=kind)
    render(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["layerif", "alphalora"]
    if kind == "bar":
        heights = [p.get_height() for p in ax.patches]
        assert heights == frame["layerif"].tolist() + frame["alphalora"].tolist()
    else:
        assert [list(line.get_ydata()) for line in ax.lines] == [frame[c].tolist() for c in frame]
    assert ticks(ax.get_xticklabels()) == ["0", "1", "2", "3"]


def test_grouped_bars_heights_errors_and_reference(means):
    half = means * 0 + 0.02
    fig = plots.grouped_bars(means, errors=half, ylabel="accuracy", reference=(0.5, "chance"))
    render(fig)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == means["uniform"].tolist() + means["layerif"].tolist()
    assert "chance" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in ax.lines)
    assert ticks(ax.get_xticklabels()) == ["wanda", "sparsegpt"]
    # (low, high) bounds give the same bars as the equivalent half-widths
    bounds = plots.grouped_bars(means, errors=(means - 0.02, means + 0.02))
    segs = [c.get_segments() for c in bounds.axes[0].collections]
    ref = [c.get_segments() for c in ax.collections]
    assert all(np.allclose(s, r) for s, r in zip(segs, ref)) and len(segs) == len(ref) == 2


def test_grouped_bars_draw_an_interval_that_excludes_its_bar(means):
    # A percentile bootstrap interval need not hold its estimate (notebook 06 on random
    # weights: Spearman -0.95, interval [-0.86, 0.74]); matplotlib refused it as a negative yerr.
    low, high = means + 0.05, means + 0.1
    fig = plots.grouped_bars(means, errors=(low, high))
    render(fig)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == means["uniform"].tolist() + means["layerif"].tolist()
    for collection, column in zip(ax.collections, means.columns):
        ends = [sorted(seg[:, 1]) for seg in collection.get_segments()]
        assert np.allclose(ends, np.stack([low[column], high[column]], axis=1))


def test_grouped_bars_rejects_mismatched_errors(means):
    with pytest.raises(ValueError, match="^errors="):
        plots.grouped_bars(means, errors=means.iloc[:1])
    with pytest.raises(ValueError, match="^errors="):
        plots.grouped_bars(means, errors=means.rename(columns={"uniform": "owl"}))
    with pytest.raises(ValueError, match="^means="):
        plots.grouped_bars(pd.DataFrame())


def test_scatter_points_labels_and_diagonal():
    fig = plots.scatter([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], labels=["a", "b", "c"], xlabel="paper",
                        ylabel="ours", diagonal=True)
    render(fig)
    ax = fig.axes[0]
    assert np.allclose(ax.collections[0].get_offsets(), [[1.0, 1.5], [2.0, 2.5], [3.0, 2.0]])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert list(ax.lines[0].get_xdata()) == [1.0, 3.0]
    assert ax.get_xlabel() == "paper" and ax.get_ylabel() == "ours"
    with pytest.raises(ValueError, match="^y="):
        plots.scatter([1, 2], [1, 2, 3])


def test_empty_and_bad_inputs():
    with pytest.raises(ValueError, match="^frame="):
        plots.heatmap(pd.DataFrame())
    with pytest.raises(ValueError, match="^kind="):
        plots.layer_lines(pd.DataFrame({"a": [1.0]}), kind="area")
    with pytest.raises(ValueError, match="^frame="):
        plots.heatmap([[1, 2]])


def test_no_pyplot_figures(task_by_layer, means):
    before = plt.get_fignums()
    plots.heatmap(task_by_layer)
    plots.layer_lines(task_by_layer.T)
    plots.grouped_bars(means)
    plots.scatter([1, 2], [2, 1])
    plots.correlation(pd.DataFrame(np.eye(2)))
    assert plt.get_fignums() == before == []


# ------------------------------------------------------------- readable at the book's width
def _book_sized_figures():
    rng = np.random.default_rng(1)
    blocks = pd.DataFrame(rng.integers(1, 11, size=(9, 30)).astype(float),
                          index=[f"LayerIF +ve · task{i}" for i in range(9)],
                          columns=pd.Index(range(30), name="layer"))
    corr = pd.DataFrame(np.eye(9), index=[f"task {i}" for i in range(9)],
                        columns=[f"task {i}" for i in range(9)])
    strip = pd.DataFrame({"ours": rng.normal(size=96)}, index=[f"block {i}" for i in range(96)])
    return {"heatmap": plots.heatmap(blocks, annotate=True, title="experts per block"),
            "correlation": plots.correlation(corr, title="Spearman"),
            "layer_lines": plots.layer_lines(blocks.T, kind="step", ylabel="experts"),
            "grouped_bars": plots.grouped_bars(strip, errors=strip.abs() * 0 + 0.1),
            "scatter": plots.scatter(rng.normal(size=5), rng.normal(size=5), labels=list("abcde"))}


def _text_sizes(fig) -> list[float]:
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_visible() and t.get_text()]
    return [t.get_fontsize() for t in texts]


def _overlapping(fig) -> list[tuple[str, str]]:
    """Neighbouring visible tick labels closer than 2 px (checked independently
    of the package: from the Agg renderer's extents after a full draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    found = []
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            shown = [t for t in labels if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer).padded(1.0) for t in shown]  # >= 2 px apart
            found += [(a.get_text(), b.get_text()) for a, b, ba, bb in
                      zip(shown, shown[1:], boxes, boxes[1:])
                      if min(ba.x1, bb.x1) > max(ba.x0, bb.x0) and min(ba.y1, bb.y1) > max(ba.y0, bb.y0)]
    return found


@pytest.fixture(scope="module")
def book_sized_figures():
    """:func:`_book_sized_figures`, built once (each test below reads a different one)."""
    return _book_sized_figures()


@pytest.mark.parametrize("name", ["heatmap", "correlation", "layer_lines", "grouped_bars", "scatter"])
def test_figures_fit_the_book_and_their_text_is_legible(name, book_sized_figures):
    fig = book_sized_figures[name]
    image = render(fig)
    # shown at its own size in the book's content column: no down-scaling of its fonts
    assert image.shape[1] <= plots.MAX_WIDTH_IN * plots.DPI + 1
    assert fig.get_dpi() == plots.DPI
    sizes = _text_sizes(fig)
    assert sizes and min(sizes) >= plots.MIN_FONT_PT, sorted(set(sizes))
    assert _overlapping(fig) == []


def test_style_does_not_leak_into_global_rcparams(task_by_layer):
    before = dict(matplotlib.rcParams)
    plots.heatmap(task_by_layer)
    assert dict(matplotlib.rcParams) == before


def test_contrast_ratio_matches_wcag_reference_values():
    # WCAG 2 reference values: black on white 21:1, #777777 on white 4.48:1, equal colours 1:1
    assert plots.contrast_ratio("black", "white") == pytest.approx(21.0)
    assert plots.contrast_ratio("#777777", "white") == pytest.approx(4.48, abs=0.01)
    assert plots.contrast_ratio("#123456", "#123456") == pytest.approx(1.0)


@pytest.mark.parametrize("cmap", ["viridis", "magma", "RdBu_r"])
def test_heatmap_annotations_contrast_with_their_cells(cmap):
    values = pd.DataFrame(np.linspace(0.0, 1.0, 24).reshape(3, 8))
    fig = plots.heatmap(values, annotate=True, fmt=".2f", cmap=cmap)
    ax = fig.axes[0]
    image = ax.images[0]
    for text in ax.texts:
        j, i = (int(round(c)) for c in text.get_position())
        cell = image.cmap(image.norm(values.iat[i, j]))
        other = "white" if text.get_color() == "black" else "black"
        # the chosen colour is the better of black and white, and readable (WCAG AA large text)
        assert plots.contrast_ratio(text.get_color(), cell) >= plots.contrast_ratio(other, cell)
        assert plots.contrast_ratio(text.get_color(), cell) >= 3.0
    # hand-checked ends: viridis and magma are darkest at their low end, lightest at the top
    if cmap != "RdBu_r":
        assert [ax.texts[0].get_color(), ax.texts[-1].get_color()] == ["white", "black"]
