"""Figure builders for the study: one function per figure kind, each returning a Figure.

Every function builds a fresh ``matplotlib.figure.Figure`` through the object API: no
pyplot state is created or touched, nothing is shown, and the figures render under any
backend (Agg included) with ``fig.savefig(...)``. In a notebook, ``display(fig)`` (or the
figure as a cell's last expression with the inline backend) shows it. Inputs are pandas
objects whose labels become the tick labels; bad input raises a one-line ``ValueError``.

The book's look is set once, here: :data:`STYLE` (font sizes, resolution) is in force while a
builder draws (``matplotlib.rc_context``, so the global rcParams are never changed), default
figure widths are at most :data:`MAX_WIDTH_IN` (the book's content column at :data:`DPI`, so a
figure is shown at its own size and its fonts at their point sizes), no text is smaller than
:data:`MIN_FONT_PT`, tick labels that would overlap are thinned to every k-th, and a heatmap's
annotations are black or white by the luminance of their cell.
"""
from __future__ import annotations

import functools

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._config import check

__all__ = ["DPI", "MAX_WIDTH_IN", "MIN_FONT_PT", "STYLE", "contrast_ratio", "correlation",
           "grouped_bars", "heatmap", "layer_lines", "luminance", "overlapping_ticks", "scatter",
           "text_colour"]

#: Resolution of the book's figures (inline PNGs are drawn at the figure's dpi).
DPI = 100
#: The book's content column (sphinx-book-theme, measured at a 1400 px window) in inches at DPI.
MAX_WIDTH_IN = 7.2
#: No text of a figure is smaller than this (points).
MIN_FONT_PT = 8.0
#: The rcParams every builder draws under.
STYLE = {"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 10.0, "axes.titlesize": 11.0,
         "axes.labelsize": 10.0, "xtick.labelsize": 9.0, "ytick.labelsize": 9.0,
         "legend.fontsize": 9.0, "figure.titlesize": 11.0}
ANNOTATION_PT = MIN_FONT_PT
LINE_KINDS = ("line", "bar", "step")


def luminance(rgba) -> float:
    """Relative luminance (WCAG 2) of an sRGB colour given as floats in [0, 1]."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(a, b) -> float:
    """WCAG contrast ratio (1 to 21) between two colours (anything matplotlib reads)."""
    la, lb = (luminance(matplotlib.colors.to_rgba(c)) for c in (a, b))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def text_colour(background) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with ``background``."""
    return "black" if contrast_ratio("black", background) >= contrast_ratio("white", background) \
        else "white"


def _canvas(fig: Figure) -> FigureCanvasAgg:
    return fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)


def _overlaps(axis, renderer, gap: float = 3.0) -> list[str]:
    """Neighbouring visible tick labels of ``axis`` whose drawn boxes are closer than ``gap``
    pixels (overlapping or touching)."""
    boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(1.0, 1.0).padded(gap / 2))
             for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    return [f"{a} / {b}" for (a, ba), (b, bb) in zip(boxes, boxes[1:]) if ba.overlaps(bb)]


def overlapping_ticks(fig: Figure) -> list[str]:
    """Pairs of neighbouring tick labels whose drawn boxes overlap, as ``"a / b"`` (none: [])."""
    renderer = _canvas(fig).get_renderer()
    fig.draw_without_rendering()
    return [pair for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for pair in _overlaps(axis, renderer)]


def _declutter(fig: Figure, axis) -> None:
    """Make ``axis``'s tick labels not overlap: text labels on the x axis are turned 45 degrees
    first; then all but every k-th label is blanked, for the smallest k that is enough."""
    renderer = _canvas(fig).get_renderer()
    fig.draw_without_rendering()
    if not _overlaps(axis, renderer):
        return
    texts = [t.get_text() for t in axis.get_ticklabels()]
    numeric = all(t.lstrip("-").replace(".", "", 1).isdigit() for t in texts if t)
    if axis.axis_name == "x" and not numeric:
        axis.set_tick_params(labelrotation=45)
        for label in axis.get_ticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        fig.draw_without_rendering()
    for step in range(2, len(texts) + 1):
        if not _overlaps(axis, renderer):
            return
        axis.set_ticks(axis.get_ticklocs(), [t if i % step == 0 else ""
                                             for i, t in enumerate(texts)])
        fig.draw_without_rendering()


def _styled(builder):
    """Run ``builder`` under :data:`STYLE`, then fix every axis's tick font size (ticks made
    later, at draw time, keep it) and declutter overlapping tick labels."""
    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            fig = builder(*args, **kwargs)
            for ax in fig.axes:
                ax.tick_params(labelsize=STYLE["xtick.labelsize"])
                for axis in (ax.xaxis, ax.yaxis):
                    _declutter(fig, axis)
        return fig
    return wrapper


def _numeric_frame(frame, name: str = "frame") -> pd.DataFrame:
    """A non-empty DataFrame of floats (a Series becomes one column)."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame(name=frame.name if frame.name is not None else "value")
    check(isinstance(frame, pd.DataFrame), name, type(frame).__name__, "a pandas DataFrame or Series")
    check(frame.size > 0, name, f"frame of shape {frame.shape}", "a non-empty frame")
    try:
        return frame.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}=frame with non-numeric columns is invalid: expected numbers") from None


def _figure(figsize, default: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure of ``figsize``, else of ``default`` with its width capped at :data:`MAX_WIDTH_IN`."""
    size = figsize or (min(float(default[0]), MAX_WIDTH_IN), float(default[1]))
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _labels(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _matrix(fig: Figure, ax: Axes, frame: pd.DataFrame, cmap: str, vmin, vmax, annotate: bool, fmt: str,
            cbar_label: str) -> None:
    """Draw ``frame`` cell by cell (row i, column j at (j, i)) with tick labels and a colour bar."""
    values = frame.to_numpy()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    columns = [str(c) for c in frame.columns]
    ax.set_xticks(range(frame.shape[1]), columns,
                  rotation=90 if max(map(len, columns)) > 3 and frame.shape[1] > 6 else 0)
    ax.set_yticks(range(frame.shape[0]), [str(r) for r in frame.index])
    fig.colorbar(image, ax=ax, label=cbar_label)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=ANNOTATION_PT,
                        color=text_colour(image.cmap(image.norm(v))))


@_styled
def heatmap(frame: pd.DataFrame, title: str = "", cbar_label: str = "", cmap: str = "viridis",
            center: float | None = None, annotate: bool = False, fmt: str = ".0f",
            xlabel: str = "layer", ylabel: str = "", figsize=None) -> Figure:
    """Rows × columns as coloured cells (e.g. task × layer).

    Args:
        frame: values; its index labels the rows, its columns (e.g. layer indices) the columns.
            ``nan`` cells are left blank.
        center: if given, the colour limits are symmetric around it (use a diverging ``cmap``
            such as ``"RdBu_r"``).
        annotate: write each value in its cell with ``fmt``.

    Returns:
        A Figure whose one image holds exactly ``frame``'s values, row ``i`` drawn at y = i.
    """
    data = _numeric_frame(frame)
    vmin = vmax = None
    if center is not None:
        finite = data.to_numpy()[np.isfinite(data.to_numpy())]
        half = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        vmin, vmax = center - (half or 1.0), center + (half or 1.0)
    fig, ax = _figure(figsize, (max(6.0, 0.3 * data.shape[1] + 3), max(2.5, 0.45 * data.shape[0] + 1.5)))
    _matrix(fig, ax, data, cmap, vmin, vmax, annotate, fmt, cbar_label)
    _labels(ax, title, xlabel, ylabel)
    return fig


@_styled
def correlation(frame: pd.DataFrame, title: str = "", cmap: str = "RdBu_r", figsize=None) -> Figure:
    """A square correlation matrix, annotated to two decimals, coloured on the fixed scale -1..1."""
    data = _numeric_frame(frame)
    check(data.shape[0] == data.shape[1], "frame", f"frame of shape {data.shape}", "a square matrix")
    finite = data.to_numpy()[np.isfinite(data.to_numpy())]
    check(bool(np.all(np.abs(finite) <= 1 + 1e-9)), "frame", f"values up to {np.abs(finite).max():.3g}",
          "correlations in [-1, 1]")
    side = max(4.0, 0.6 * data.shape[0] + 2)
    fig, ax = _figure(figsize, (side + 1, side))
    _matrix(fig, ax, data, cmap, -1.0, 1.0, True, ".2f", "correlation")
    ax.tick_params(axis="x", labelrotation=45)
    _labels(ax, title, "", "")
    return fig


@_styled
def layer_lines(frame: pd.DataFrame, title: str = "", ylabel: str = "", kind: str = "line",
                xlabel: str = "layer", figsize=None) -> Figure:
    """One line, step curve or bar group per column over the index (e.g. allocations by layer).

    Args:
        frame: index = layer, one column per series (a Series is one series).
        kind: ``"line"`` (markers on a line), ``"step"`` (a step curve centred on each layer)
            or ``"bar"`` (bars of each layer side by side, one colour per column).
    """
    check(kind in LINE_KINDS, "kind", kind, f"one of {LINE_KINDS}")
    data = _numeric_frame(frame)
    fig, ax = _figure(figsize, (max(6.0, 0.25 * data.shape[0] + 3), 3.5))
    x = np.arange(data.shape[0])
    width = 0.8 / data.shape[1]
    for k, column in enumerate(data.columns):
        y = data[column].to_numpy()
        if kind == "line":
            ax.plot(x, y, marker="o", markersize=3, label=str(column))
        elif kind == "step":
            ax.step(x, y, where="mid", label=str(column))
        else:
            ax.bar(x - 0.4 + width * (k + 0.5), y, width=width, label=str(column))
    ax.set_xticks(x, [str(i) for i in data.index])
    ax.legend()
    _labels(ax, title, xlabel, ylabel)
    return fig


def _error_bars(means: pd.DataFrame, errors) -> np.ndarray | None:
    """``errors`` as interval bounds ``[2, groups, series]`` (low, high)."""
    if errors is None:
        return None
    if isinstance(errors, tuple):
        check(len(errors) == 2, "errors", f"tuple of {len(errors)}", "a (low, high) pair of frames")
        return np.stack([_aligned(e, means, "errors") for e in errors])
    half = _aligned(errors, means, "errors")
    check(bool(np.all(half[np.isfinite(half)] >= 0)), "errors", "negative half-widths", "half-widths >= 0")
    return np.stack([means.to_numpy() - half, means.to_numpy() + half])


def _aligned(frame, means: pd.DataFrame, name: str) -> np.ndarray:
    data = _numeric_frame(frame, name)
    same = data.shape == means.shape and data.index.equals(means.index) and data.columns.equals(means.columns)
    check(same, name, f"frame of shape {data.shape}", f"the shape and labels of means {means.shape}")
    return data.to_numpy()


@_styled
def grouped_bars(means: pd.DataFrame, errors=None, title: str = "", ylabel: str = "", reference=None,
                 xlabel: str = "", figsize=None) -> Figure:
    """Bars of each group (index) side by side, one colour per series (column).

    Args:
        means: bar heights; a Series is one series.
        errors: ``None``; a frame like ``means`` of symmetric half-widths; or a pair
            ``(low, high)`` of frames like ``means`` holding the interval bounds themselves
            (e.g. ``ci_low``/``ci_high`` from :mod:`layerif.stats`).
        reference: ``None``, a number, or ``(value, label)``: a dashed horizontal line
            (e.g. chance level), labelled in the legend (default label "reference").
    """
    data = _numeric_frame(means, "means")
    bounds = _error_bars(data, errors)
    if reference is not None and not isinstance(reference, tuple):
        reference = (reference, "reference")
    check(reference is None or (len(reference) == 2 and np.isfinite(float(reference[0]))), "reference",
          reference, "a number or a (value, label) pair")
    fig, ax = _figure(figsize, (max(5.0, 0.9 * data.shape[0] * max(1, data.shape[1] / 2) + 2), 3.8))
    x = np.arange(data.shape[0])
    width = 0.8 / data.shape[1]
    for k, column in enumerate(data.columns):
        at = x - 0.4 + width * (k + 0.5)
        ax.bar(at, data[column].to_numpy(), width=width, label=str(column))
        if bounds is not None:  # from low to high: a bootstrap interval need not hold its estimate
            low, high = bounds[:, :, k]
            ax.errorbar(at, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="k", capsize=3,
                        label="_nolegend_")
    if reference is not None:
        ax.axhline(float(reference[0]), color="0.3", linestyle="--", linewidth=1, label=str(reference[1]))
    ax.set_xticks(x, [str(g) for g in data.index])
    ax.legend()
    _labels(ax, title, xlabel, ylabel)
    return fig


@_styled
def scatter(x, y, labels=None, title: str = "", xlabel: str = "", ylabel: str = "", diagonal: bool = False,
            figsize=None) -> Figure:
    """Points ``(x[i], y[i])``, optionally annotated with ``labels[i]`` and the line y = x.

    Args:
        x, y: equal-length 1-D numbers (e.g. paper vs ours).
        labels: one text per point, or ``None``.
        diagonal: draw y = x across the range covering both axes' data.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    check(xs.ndim == 1 and xs.size > 0, "x", f"array of shape {xs.shape}", "a non-empty 1-D array")
    check(ys.shape == xs.shape, "y", f"array of shape {ys.shape}", f"the shape of x {xs.shape}")
    if labels is not None:
        labels = [str(t) for t in labels]
        check(len(labels) == xs.size, "labels", f"{len(labels)} labels", f"{xs.size} (one per point)")
    fig, ax = _figure(figsize, (5.0, 4.5))
    ax.scatter(xs, ys, s=25)
    for text, px, py in zip(labels or [], xs, ys):
        ax.annotate(text, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=ANNOTATION_PT)
    if diagonal:
        both = np.concatenate([xs, ys])
        both = both[np.isfinite(both)]
        if both.size:
            ax.plot([both.min(), both.max()], [both.min(), both.max()], color="0.5", linestyle="--",
                    linewidth=1, label="y = x")
            ax.legend()
    _labels(ax, title, xlabel, ylabel)
    return fig
