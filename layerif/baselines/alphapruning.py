"""AlphaPruning's layer-wise sparsity from per-block PL_Alpha_Hill (Lu et al., 2024)."""
from __future__ import annotations

import pandas as pd

from ..allocate import linear_sparsity

__all__ = ["alphapruning_sparsity"]


def alphapruning_sparsity(alpha, target: float, n_params, epsilon: float,
                          clip: float | None = 0.99) -> pd.Series:
    """Sparsity per layer from block alphas: higher alpha (worse trained) -> pruned more.

    The same linear map to ``[1 - eps, 1 + eps]`` and parameter-weighted rescaling as
    :func:`layerif.allocate.sparsity`, applied to ``alpha`` directly: no absolute value,
    no smoothing. With ``alpha`` from :func:`layerif.baselines.alpha_hill` (``fit="peak"``)
    and every block's matrices sharing its ratio, this is AlphaPruning's block-wise
    ``ww_sparsity``. Its invariants are those of :func:`layerif.allocate.linear_sparsity`.

    The eigenvalues behind ``alpha`` are computed by :func:`layerif.baselines.alpha_hill`:
    in float64 by default, a deviation from the reference, which computes them in float32;
    pass ``alpha_hill(model, precision="float32")`` for the reference's eigenvalues.

    Args:
        alpha: PL_Alpha_Hill per block.
        target: global sparsity in ``(0, 1)``, weighted by ``n_params``.
        n_params: prunable parameters per block, indexed like ``alpha``.
        epsilon: band half-width in ``[0, 1)``; AlphaPruning's scripts use 0.3 for
            magnitude pruning and 0.2 for Wanda and SparseGPT (LLaMA-7B at 70%).
        clip: per-layer cap with redistribution (see ``linear_sparsity``). The reference
            has no cap; it only acts where a ratio would exceed ``clip``.

    Returns:
        ``pd.Series[float]`` named "sparsity", indexed like ``alpha``.
    """
    return linear_sparsity(alpha, target, n_params, epsilon=epsilon, clip=clip)
