"""Paired tests of the sensitive per-unit measures: the gold choice's log-likelihood margin
per example and the mean NLL per token per perplexity window, between two models scored on
the same examples / windows. Both are :func:`layerif.stats.paired_t` (with its power) on the
paired differences."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._config import check
from .parametric import paired_t
from .result import TestResult, pair

__all__ = ["paired_margin", "paired_nll"]


def _column(values, column: str, name: str):
    """``values[column]`` of a frame; a Series or an array as given."""
    if isinstance(values, pd.DataFrame):
        check(column in values.columns, name, f"a frame with columns {list(values.columns)}",
              f"a frame with a {column!r} column")
        return values[column]
    return values


def _aligned(a, b, column: str, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``column`` of two frames (or two Series / arrays), paired: Series by their index."""
    xa, xb = _column(a, column, names[0]), _column(b, column, names[1])
    if isinstance(xa, pd.Series) and isinstance(xb, pd.Series):
        same = xa.index.is_unique and len(xa) == len(xb) and xa.index.isin(xb.index).all()
        check(bool(same), names[1], f"{len(xb)} rows indexed otherwise",
              f"the index of {names[0]} ({len(xa)} rows: the same examples or windows)")
        xb = xb.reindex(xa.index)
    return pair(np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64), names)


def paired_margin(a, b, level: float = 0.95, effect: float | None = None) -> TestResult:
    """Paired t test of the gold choice's log-likelihood margin over the best other choice,
    ``margin_a - margin_b``, on the same examples (nats; positive: ``a`` prefers the gold
    answer more).

    Args:
        a, b: per-example frames with a ``margin`` column (``Evaluation.examples`` of
            :mod:`layerif.evaluate.suite`), paired by index; or margin Series (paired by
            index) or arrays (paired by position).
        effect: a margin difference in nats, for ``n_needed`` (examples).
    """
    x, y = _aligned(a, b, "margin", ("a", "b"))
    return dataclasses.replace(paired_t(x, y, level=level, effect=effect), name="paired_margin")


def paired_nll(a_windows, b_windows, level: float = 0.95, effect: float | None = None) -> TestResult:
    """Paired t test over perplexity windows of the mean NLL per token, ``a - b`` (nats per
    token; negative: ``a`` predicts the text better).

    Args:
        a_windows, b_windows: per-window frames with ``nll_sum`` and ``n_tokens``
            (``Evaluation.windows`` of :mod:`layerif.evaluate.suite`) over the same windows,
            paired by index.
        effect: a difference in mean NLL per token, for ``n_needed`` (windows).

    Returns:
        estimate = the mean over windows of ``nll_sum_a / n_tokens - nll_sum_b / n_tokens``,
        with :func:`~layerif.stats.paired_t`'s interval, p-value, MDE and n needed.
    """
    names = ("a_windows", "b_windows")
    for name, frame in zip(names, (a_windows, b_windows)):
        check(isinstance(frame, pd.DataFrame), name, type(frame).__name__,
              "a per-window frame with nll_sum and n_tokens")
    nll_a, nll_b = _aligned(a_windows, b_windows, "nll_sum", names)
    tok_a, tok_b = _aligned(a_windows, b_windows, "n_tokens", names)
    check(bool(np.all(tok_a == tok_b)) and bool(np.all(tok_a > 0)), "b_windows",
          "windows with other token counts", "the token counts of a_windows (the same windows)")
    res = paired_t(nll_a / tok_a, nll_b / tok_b, level=level, effect=effect)
    return dataclasses.replace(res, name="paired_nll", note=f"windows={tok_a.size}, tokens={int(tok_a.sum())}")
