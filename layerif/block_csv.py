"""Read a per-block CSV (``layerif allocate ... --out``): the one reader behind
``layerif moe --allocation`` (experts per block) and ``layerif prune --allocation`` (sparsity
per block). Every failure is one line naming the file and, for a bad value, the row."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

__all__ = ["read_block_column"]


def read_block_column(path: str | Path, column: str, valid: Callable[[float], bool],
                      expected: str, command: str) -> pd.Series:
    """``column`` of the CSV at ``path`` as numbers, indexed by block (``layer``), sorted.

    The first column is the block index; the values come from ``column`` or, when the table
    has a single other column, from that one (read with ``pd.to_numeric``: text is NaN).

    Args:
        valid: called with each numeric value (NaN for text); False names the row.
        expected: what a valid value is, for the message (e.g. "a whole number >= 1").
        command: the command that writes such a file, for the message.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, no such column, no rows, a non-integer block index, or an
            invalid value (the row and value named).
    """
    path = Path(path)
    what = f"--allocation {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{what} does not exist: expected a CSV of {column} per block "
                                f"(as `{command} --out FILE` writes)")
    try:
        frame = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} is not a readable CSV ({str(err).splitlines()[0]}): "
                         f"expected columns layer,{column}") from None
    if column not in frame.columns and frame.shape[1] != 1:
        raise ValueError(f"{what} has columns {[frame.index.name] + list(frame.columns)}: "
                         f"expected the block index first, then a '{column}' column (or a "
                         "single column)")
    if len(frame) == 0:
        raise ValueError(f"{what} has no rows: expected one value per block")
    if not pd.api.types.is_integer_dtype(frame.index.dtype):
        raise ValueError(f"{what} is indexed by {list(frame.index)[:6]}: expected block "
                         "indices 0..L-1 in the first column")
    raw = frame[column if column in frame.columns else frame.columns[0]]
    values = pd.to_numeric(raw, errors="coerce")
    for layer, written, value in zip(frame.index, raw, values):
        if not valid(float(value)):
            raise ValueError(f"{what} row {layer} has {column} {written!r}: expected {expected}")
    index = pd.Index(frame.index.astype(int), name="layer")
    return pd.Series(values.to_numpy(), index=index, name=column).sort_index()
