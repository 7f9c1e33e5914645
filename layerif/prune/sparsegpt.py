"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with OBS weight reconstruction.

For a linear layer with calibration inputs ``X`` (``d_in`` x tokens) and Hessian
``H = 2 X X^T / n``, pruning weight ``w_c`` of a row and compensating with the remaining
weights costs ``w_c^2 / [H^-1]_cc`` (Optimal Brain Surgeon). SparseGPT sweeps the columns
left to right; after each column the error ``(w - q) / [U]_cc`` is propagated to the columns
not yet visited through the rows of ``U``, the upper Cholesky factor of ``H^-1`` (each row of
``U`` is the OBS update restricted to the columns still free, so no inverse is recomputed).
The mask is chosen adaptively per block of ``blocksize`` columns, over the whole
rows x block, by the score ``w^2 / U_cc^2`` evaluated just before the block is visited.

Numerics run in float32 (float64 when ``W`` is float64) whatever the model's dtype.
"""
from __future__ import annotations

import math

import torch

from .._config import check_finite
from .magnitude import check_matrix, check_sparsity, check_ties, lowest_k_mask, nm_mask, threshold_mask

__all__ = ["sparsegpt", "inverse_hessian_factor"]


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor ``U`` of ``(H + damp I)^-1`` and the dead-input mask.

    Inputs that were never active (``H_jj == 0``) get a unit diagonal so the factorisation
    exists; their weights carry no signal and are zeroed by :func:`sparsegpt`.

    Args:
        H: ``[d_in, d_in]`` symmetric positive semi-definite Hessian (any float dtype; a
            copy is made).
        percdamp: damping as a fraction of the mean diagonal of ``H``.

    Returns:
        ``(U, dead)``: ``U`` upper triangular with ``U^T U = (H + damp I)^-1``; ``dead`` a
        bool vector of the inputs with zero diagonal.

    Raises:
        ValueError: ``H`` is not positive definite even after damping, or holds NaN or inf
            (:class:`layerif._config.NonFiniteError`).
    """
    check_finite(H, "H", "calibration statistics (Hessian)")  # NaN is not percdamp's fault
    H = H.detach().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    H.diagonal().add_(percdamp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if int(info):
        raise ValueError(
            f"percdamp={percdamp!r} is too small: the damped Hessian is not positive definite "
            "(raise percdamp, or use more calibration tokens)"
        )
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info):
        raise ValueError(f"percdamp={percdamp!r} is too small: the inverse Hessian is ill-conditioned")
    return U, dead


def sparsegpt(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    ties: str = "exact",
) -> torch.Tensor:
    """Prune ``W`` to ``sparsity`` with SparseGPT's OBS sweep and return the updated matrix.

    Exactly ``int(W.numel() * sparsity)`` entries are zeroed: block ``[i1, i2)`` prunes
    ``int(d_out * i2 * s) - int(d_out * i1 * s)`` weights (the cumulative count rounds once).

    **Deviation from the reference code** (IST-DASLab/sparsegpt ``fasterprune``): per block
    of columns the reference sorts the block's scores ``tmp = w^2 / U_cc^2``, takes
    ``thresh = sorted[int(tmp.numel() * s)]`` and prunes every ``tmp <= thresh`` -- at least
    one weight more than ``int(block numel * s)`` in every block, more where scores tie
    at the cut -- so a matrix ends a little above its target (by about one weight per block
    of ``blocksize`` columns). The default ``ties="exact"`` prunes the exact count above;
    ``ties="reference"`` applies the published per-block rule (the OBS updates are the same
    in both). Both prune nothing at ``sparsity=0``. N:M patterns are chosen by rank
    (``topk``) in both, so ``ties`` does not apply to them.

    Args:
        W: weight matrix ``[d_out, d_in]``.
        H: ``[d_in, d_in]`` Hessian of the layer's reconstruction loss, ``2 X X^T / n``
            (any positive scale: the damping is relative).
        sparsity: fraction of entries to zero, in ``[0, 1)``.
        nm: optional ``(n, m)`` pattern chosen column group by column group during the sweep;
            ``blocksize`` must then be a multiple of ``m``.
        blocksize: columns per lazy-update block (the mask is chosen once per block).
        percdamp: diagonal damping as a fraction of ``mean(diag H)``.
        ties: ``"exact"`` (default) or ``"reference"``, see above.

    Returns:
        The pruned and reconstructed weights (same shape, dtype and device as ``W``).

    Raises:
        ValueError: bad shapes, ``sparsity``, ``nm``, ``blocksize``, ``percdamp`` or ``ties``, or a
            Hessian that damping cannot make positive definite; NaN or inf in ``W`` or ``H``
            (:class:`layerif._config.NonFiniteError`).
    """
    sparsity = check_sparsity(sparsity, nm)
    check_matrix(W, nm)
    check_ties(ties)
    rows, cols = W.shape
    if not isinstance(H, torch.Tensor) or H.shape != (cols, cols):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"H of shape {shape} is invalid: expected ({cols}, {cols}) = (d_in, d_in) of W")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize={blocksize!r} is invalid: expected a positive int")
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize={blocksize} is invalid with nm={tuple(nm)}: it must be a multiple of m")
    if not (isinstance(percdamp, (int, float)) and math.isfinite(percdamp) and percdamp >= 0):
        raise ValueError(f"percdamp={percdamp!r} is invalid: expected a finite float >= 0")
    if sparsity == 0.0:
        return W.detach().clone()

    dtype = torch.promote_types(W.dtype, torch.float32)
    Wf = W.detach().to(dtype).clone()
    U, dead = inverse_hessian_factor(H.to(device=W.device, dtype=dtype), percdamp)
    Wf[:, dead] = 0

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = Wf[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = U1.diagonal()
        if nm is None and ties == "reference":
            mask1 = threshold_mask((W1 / d) ** 2, int(W1.numel() * sparsity))
        elif nm is None:
            k = int(rows * i2 * sparsity) - int(rows * i1 * sparsity)
            mask1 = lowest_k_mask(((W1 / d) ** 2).flatten(), k).view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        # err_j = (w_j - q_j) / U_jj is w_j / U_jj on pruned entries and 0 on kept ones.
        scale = mask1.to(dtype) / d
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                # N:M groups are chosen on the weights as updated by the sweep so far.
                g = slice(j, j + nm[1])
                mask1[:, g] = nm_mask((W1[:, g] / d[g]) ** 2, *nm)
                scale[:, g] = mask1[:, g].to(dtype) / d[g]
            # Row j of U is the OBS compensation of column j's error on the columns after it.
            # Column j itself is left as it stands now (its final, compensated value), so the
            # errors and the pruned block are read off W1 after the sweep: two kernels per
            # column, which is what bounds the sweep's speed on a GPU.
            W1[:, j + 1:].addr_(W1[:, j] * scale[:, j], U1[j, j + 1:], alpha=-1)
        Err1 = W1 * scale
        Wf[:, i1:i2] = W1.masked_fill_(mask1, 0)
        Wf[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Wf.to(W.dtype)
