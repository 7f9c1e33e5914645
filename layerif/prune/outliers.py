"""OWL's layer-wise outlier ratio (Yin et al., 2024), measured on the dense model.

For each block, ``D_l`` is the percentage of Wanda scores ``|W_ij| * ||X_j||_2`` (over all
linear modules of the block together) that exceed ``M`` times their mean. Blocks with more
outliers are pruned less by OWL; the mapping from ``D_l`` to sparsity ratios is
:func:`layerif.baselines.owl.owl_sparsity`.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..models import linear_modules, linear_weight
from .sequential import walk_blocks
from .wanda import wanda_scores

__all__ = ["owl_outlier_ratios"]


@torch.no_grad()
def owl_outlier_ratios(
    model: nn.Module,
    calibration: torch.Tensor,
    M: float = 5.0,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.Series:
    """Per-block percentage of Wanda scores above ``M`` x the block's mean score.

    The model is not modified: blocks are visited sequentially on the dense model (as OWL
    does), each block's activation norms coming from the dense outputs of the blocks before.

    Args:
        model: a causal LM.
        calibration: ``[n_samples, seq_len]`` token ids.
        M: outlier threshold as a multiple of the mean score (OWL uses 5, sometimes 3).
        batch_size: calibration sequences per forward pass.
        progress: show a progress bar over blocks.

    Returns:
        A float Series named ``"outlier_ratio"`` (percent, 0-100) indexed by block index
        (``layer``).

    Raises:
        ValueError: ``M`` is not positive, or bad ``calibration``.
    """
    if isinstance(M, bool) or not isinstance(M, (int, float)) or not M > 0:
        raise ValueError(f"M={M!r} is invalid: expected a positive number")
    ratios = {}
    for layer, _, block, stats in walk_blocks(model, calibration, "act_sq_norm", batch_size, progress):
        linears = linear_modules(block)
        # Two passes (mean, then count) instead of one concatenation: a 7B block holds
        # ~200M scores, which we never need in memory at once.
        total, count, n = 0.0, 0, 0
        for name, module in linears:
            s = wanda_scores(linear_weight(module), stats[name])
            total += float(s.sum(dtype=torch.float64))
            n += s.numel()
        threshold = M * total / n
        for name, module in linears:
            count += int((wanda_scores(linear_weight(module), stats[name]) > threshold).sum())
        ratios[layer] = 100.0 * count / n
    out = pd.Series(ratios, name="outlier_ratio", dtype=float)
    out.index.name = "layer"
    return out
