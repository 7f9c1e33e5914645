"""AlphaLoRA's experts per layer from block PL_Alpha_Hill (Qing et al., 2024)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..allocate import largest_remainder
from ..layer_series import as_layer_series

__all__ = ["alphalora"]

_ROUNDINGS = ("largest_remainder", "reference")


def _reference_rounding(alpha: np.ndarray, total: int, beta: float) -> np.ndarray:
    # AlphaLoRA's exponential_scaling, kept for reproducing its published allocations.
    scaled = alpha ** beta
    n = np.round(scaled / scaled.sum() * total).astype(np.int64)
    while n.sum() != total:
        if n.sum() < total:
            n[np.argmin(scaled - n)] += 1
        else:
            n[np.argmax(scaled - n)] -= 1
    return n


def _min_one_rounding(alpha: np.ndarray, total: int, beta: float) -> np.ndarray:
    w = (alpha / alpha.max()) ** beta  # same ratios as alpha**beta, never overflows
    fixed = np.zeros(len(w), dtype=bool)
    while True:
        free = ~fixed
        quota = w / w[free].sum() * (total - fixed.sum())
        short = free & (quota < 1)
        if not short.any():
            break
        fixed |= short
    n = np.ones(len(w), dtype=np.int64)
    n[free] = largest_remainder(quota[free], total - int(fixed.sum()))
    return n


def alphalora(alpha, total: int, beta: float = 2.5,
              rounding: str = "largest_remainder") -> pd.Series:
    """Experts per layer proportional to ``alpha**beta`` (AlphaLoRA; defaults T=160, 2.5).

    Heavier-tailed (lower alpha, better trained) blocks get fewer experts.

    ``rounding="reference"`` reproduces AlphaLoRA's ``exponential_scaling``: round
    ``alpha**beta / sum * total`` half-to-even, then while the sum is off by one, add an
    expert at ``argmin(alpha**beta - n)`` (or remove one at the argmax). Its quirk: that
    compares the *unnormalised* ``alpha**beta`` with expert counts, so the correction goes
    to the block with the smallest alpha rather than to the largest rounding deficit; and a
    block may receive 0 experts.

    ``rounding="largest_remainder"`` (our default) apportions exactly: blocks whose share
    ``alpha**beta / sum * total`` is below one get one expert; the others split the
    remaining experts in proportion to ``alpha**beta`` (recomputed until no share is
    below one), rounded by largest remainder with ties to the lower index.

    Invariants: ``sum(n) == total``; "largest_remainder" also guarantees ``n >= 1``,
    ``n`` non-decreasing in alpha and ``|n - share| < 1`` for blocks with a share
    ``>= 1``.

    Args:
        alpha: PL_Alpha_Hill per block (``> 0``), e.g. :func:`alpha_hill`.
        total: total experts, an integer ``>= L``.
        beta: exponent ``> 0``.
        rounding: "largest_remainder" or "reference".

    Returns:
        ``pd.Series[int]`` named "experts", indexed like ``alpha``.

    Raises:
        ValueError: non-positive or non-finite alpha, bad ``total``/``beta``/``rounding``.
    """
    a = as_layer_series(alpha, "alpha")
    if (a <= 0).any():
        raise ValueError(f"alpha={list(a)} is invalid: expected values > 0")
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < len(a):
        raise ValueError(f"total={total!r} is invalid: expected an integer >= the number of "
                         f"layers ({len(a)})")
    if not (isinstance(beta, (int, float, np.floating)) and np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta={beta!r} is invalid: expected a finite float > 0")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is invalid: expected one of {_ROUNDINGS}")
    rule = _reference_rounding if rounding == "reference" else _min_one_rounding
    return pd.Series(rule(a.to_numpy(), int(total), float(beta)), index=a.index,
                     name="experts")
