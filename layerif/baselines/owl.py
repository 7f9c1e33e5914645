"""OWL's layer-wise sparsity from per-layer outlier ratios (Yin et al., 2024).

Only the mapping lives here; the outlier ratios ``D_l`` (share of Wanda scores
``|W| * ||X||`` above ``M`` times their block mean) need calibration activations and are
computed by the pruning code in ``layerif.prune``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..layer_series import as_layer_series

__all__ = ["owl_sparsity"]


def owl_sparsity(outlier_ratio, target: float, lam: float = 0.08) -> pd.Series:
    """Sparsity per layer from OWL outlier ratios: more outliers -> lower sparsity.

    ``x = (D - min D) / (max D - min D) * 2 lam`` (constant ``D`` -> ``x = 0``), and
    ``sparsity = target - (x - mean x)``. This is the reference code's
    ``1 - [x - mean x + (1 - target)]``: it keeps the *unweighted* mean of the layer
    ratios at ``target`` (the same as the parameter-weighted mean only when all blocks
    are the same size, as in Llama-style models), and no clipping.

    Invariants: ``mean(sparsity) == target``; non-increasing in ``D``;
    ``max - min == 2 lam`` for non-constant ``D``; constant ``D`` or ``lam = 0`` gives
    uniform ``target``.

    Args:
        outlier_ratio: layer-wise outlier distribution ``D_l`` (any positive scale:
            fractions or percentages give the same result).
        target: mean sparsity in ``(0, 1)``.
        lam: half-width ``lambda`` of the sparsity band (OWL: 0.08), ``>= 0``.

    Returns:
        ``pd.Series[float]`` named "sparsity", indexed like ``outlier_ratio``.

    Raises:
        ValueError: negative or non-finite ratios, ``target`` outside ``(0, 1)``,
            ``lam < 0``, or a ``lam`` so large that a layer's sparsity leaves ``[0, 1)``.
    """
    d = as_layer_series(outlier_ratio, "outlier_ratio")
    if (d < 0).any():
        raise ValueError(f"outlier_ratio={list(d)} is invalid: expected values >= 0")
    if not (isinstance(target, (int, float, np.floating)) and 0 < target < 1):
        raise ValueError(f"target={target!r} is invalid: expected a float in (0, 1)")
    if not (isinstance(lam, (int, float, np.floating)) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam={lam!r} is invalid: expected a float >= 0")
    x = d.to_numpy()
    span = x.max() - x.min()
    x = (x - x.min()) / span * (2 * lam) if span > 0 else np.zeros(len(x))
    out = target - (x - x.mean())
    if out.min() < 0 or out.max() >= 1:
        raise ValueError(f"lam={lam} is too large for target={target}: layer sparsities "
                         f"span [{out.min():.4f}, {out.max():.4f}], expected within [0, 1)")
    return pd.Series(out, index=d.index, name="sparsity")
