"""Wanda (Sun et al., 2024): prune by |weight| x input-activation norm, row by row.

The score of ``W_ij`` is ``|W_ij| * ||X_j||_2``, the weight's magnitude times the norm of
the input feature it multiplies, and the comparison group is each output row: every row
loses the same number of weights. ``act_sq_norm`` holds ``||X_j||^2``; the driver in
:mod:`layerif.prune.sequential` accumulates it as the mean over calibration sequences of
``sum over tokens of x_j^2`` (a common positive scale does not change the ranking).
"""
from __future__ import annotations

import torch

from .._config import check_finite
from .magnitude import check_matrix, check_sparsity, lowest_k_mask, nm_mask

__all__ = ["wanda", "wanda_scores"]


def wanda_scores(W: torch.Tensor, act_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(act_sq_norm)`` in float32 (float64 if ``W`` is float64).

    Args:
        W: weight matrix ``[d_out, d_in]``.
        act_sq_norm: ``[d_in]`` non-negative squared input norms.

    Returns:
        The ``[d_out, d_in]`` Wanda importance scores.

    Raises:
        ValueError: shapes disagree, or ``act_sq_norm`` has negative or non-finite entries.
    """
    check_matrix(W)
    if not isinstance(act_sq_norm, torch.Tensor) or act_sq_norm.shape != (W.shape[1],):
        shape = tuple(act_sq_norm.shape) if isinstance(act_sq_norm, torch.Tensor) else act_sq_norm
        raise ValueError(f"act_sq_norm of shape {shape} is invalid: expected ({W.shape[1]},) = d_in of W")
    check_finite(act_sq_norm, "act_sq_norm", "calibration statistics")
    if bool((act_sq_norm < 0).any()):
        raise ValueError("act_sq_norm is invalid: it holds squared norms, so must be >= 0")
    dtype = torch.promote_types(W.dtype, torch.float32)
    norm = act_sq_norm.detach().to(device=W.device, dtype=dtype).sqrt()
    return W.detach().to(dtype).abs() * norm


def wanda(
    W: torch.Tensor,
    act_sq_norm: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Zero the ``int(d_in * sparsity)`` lowest-scoring weights of every output row.

    Args:
        W: weight matrix ``[d_out, d_in]``.
        act_sq_norm: ``[d_in]`` squared input-feature norms from calibration data.
        sparsity: fraction of each row to zero, in ``[0, 1)``.
        nm: optional ``(n, m)`` pattern (the ``n`` lowest scores of every ``m`` consecutive
            inputs of each row are zeroed instead).

    Returns:
        A pruned copy of ``W`` (same dtype and device).

    Raises:
        ValueError: bad ``W``, ``act_sq_norm``, ``sparsity`` or ``nm``.
    """
    sparsity = check_sparsity(sparsity, nm)
    check_matrix(W, nm)
    scores = wanda_scores(W, act_sq_norm)
    if nm is not None:
        mask = nm_mask(scores, *nm)
    else:
        mask = lowest_k_mask(scores, int(W.shape[1] * sparsity), dim=1)
    return W.detach().masked_fill(mask, 0)
