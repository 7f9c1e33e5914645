"""MoLA's fixed expert patterns: experts per layer by quarter of depth (Gao et al., 2024)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..layer_series import layer_index

__all__ = ["MOLA_PATTERNS", "mola"]

#: Experts per quarter of depth, shallow to deep, for the patterns the paper compares.
MOLA_PATTERNS: dict[str, tuple[int, int, int, int]] = {
    "2468": (2, 4, 6, 8),
    "5555": (5, 5, 5, 5),
    "8642": (8, 6, 4, 2),
    "1234": (1, 2, 3, 4),
    "46810": (4, 6, 8, 10),
}


def mola(pattern: str | Sequence[int], n_layers) -> pd.Series:
    """Experts per layer for a MoLA pattern, scaled to any depth.

    Block ``i`` of ``L`` belongs to quarter ``floor(4 i / L)`` and gets that quarter's
    count. For ``L`` divisible by 4 the quarters are equal (MoLA's 32-layer split:
    ``"2468"`` = 8 blocks each with 2, 4, 6, 8 experts, 160 in total); otherwise their
    sizes differ by at most one, and for ``L < 4`` some quarters are empty.

    Invariants: non-decreasing in depth for increasing patterns; ``n >= 1``; the total
    is ``sum(pattern[q] * size(q))`` (``L / 4 * sum(pattern)`` when ``4 | L``).

    Args:
        pattern: a key of :data:`MOLA_PATTERNS` ("2468", "5555", "8642", "1234",
            "46810") or four positive integers.
        n_layers: the number of blocks, or the block index to use.

    Returns:
        ``pd.Series[int]`` named "experts", indexed by layer.

    Raises:
        ValueError: unknown pattern, non-positive counts, bad ``n_layers``.
    """
    if isinstance(pattern, str):
        if pattern not in MOLA_PATTERNS:
            raise ValueError(f"pattern={pattern!r} is invalid: expected one of "
                             f"{sorted(MOLA_PATTERNS)} or four positive integers")
        counts = MOLA_PATTERNS[pattern]
    else:
        counts = tuple(pattern)
        if len(counts) != 4 or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1
                for c in counts):
            raise ValueError(f"pattern={pattern!r} is invalid: expected four integers >= 1")
    index = layer_index(n_layers)
    quarter = (4 * np.arange(len(index))) // len(index)
    return pd.Series(np.asarray(counts, dtype=np.int64)[quarter], index=index, name="experts")
