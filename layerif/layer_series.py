"""Per-block inputs checked once: values as a finite float Series indexed by block (index name
``"layer"``), parameter counts aligned to it, and a block index from a count
or an index.

The validation shared by :mod:`layerif.allocate` and the model-only baselines
(:mod:`layerif.baselines`); every error is one line naming the bad argument.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["aligned_params", "as_layer_series", "layer_index"]


def as_layer_series(values, name: str) -> pd.Series:
    """Validate ``values`` as a finite float Series indexed by block (index name "layer").

    A Series keeps its index (which must be unique); any other 1-D sequence is indexed
    ``0..L-1``. Raises ValueError naming ``name`` on empty, non-numeric or non-finite input.
    """
    if isinstance(values, pd.DataFrame):
        raise ValueError(f"{name} is a DataFrame: expected a pandas Series indexed by layer")
    if not isinstance(values, pd.Series) and np.ndim(values) != 1:
        raise ValueError(f"{name} has {np.ndim(values)} dimensions: expected a Series or a "
                         "1-D sequence with one value per block")
    series = values.copy() if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if len(series) == 0:
        raise ValueError(f"{name} is empty: expected one value per transformer block")
    if not series.index.is_unique:
        raise ValueError(f"{name} has a duplicated index {list(series.index)}: "
                         "expected one row per block")
    try:
        series = series.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={list(series)} is invalid: expected numbers") from err
    bad = ~np.isfinite(series.to_numpy())
    if bad.any():
        raise ValueError(f"{name} has non-finite values at layers "
                         f"{list(series.index[bad])}: expected finite numbers")
    series.index = series.index.rename("layer")
    return series


def aligned_params(n_params, index: pd.Index, name: str = "n_params") -> pd.Series:
    """``n_params`` as a positive float Series on exactly ``index`` (reordered if needed)."""
    params = as_layer_series(n_params, name)
    if not params.index.equals(index):
        if set(params.index) != set(index):
            raise ValueError(f"{name} is indexed by {list(params.index)} but the scores by "
                             f"{list(index)}: expected the same block indices")
        params = params.reindex(index)
    if (params <= 0).any():
        raise ValueError(f"{name} has non-positive entries at layers "
                         f"{list(params.index[params <= 0])}: expected counts > 0")
    return params


def layer_index(n_layers) -> pd.Index:
    """A block index named "layer": ``0..n-1`` for an integer, or a given unique Index."""
    if isinstance(n_layers, pd.Index):
        if len(n_layers) == 0 or not n_layers.is_unique:
            raise ValueError(f"n_layers={list(n_layers)} is invalid: expected a non-empty, "
                             "unique index of blocks")
        return n_layers.rename("layer")
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise ValueError(f"n_layers={n_layers!r} is invalid: expected an integer >= 1")
    return pd.RangeIndex(int(n_layers), name="layer")
