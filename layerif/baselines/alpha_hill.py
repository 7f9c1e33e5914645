"""PL_Alpha_Hill: the power-law exponent of each weight matrix's eigenvalue spectrum.

Heavy-tailed self-regularisation (Martin & Mahoney) reads layer quality from the empirical
spectral density of ``W^T W``: eigenvalues ``lambda = svdvals(W)**2`` whose tail follows
``p(lambda) ~ lambda**(-alpha)``; a smaller ``alpha`` (heavier tail) marks a better
trained matrix. AlphaPruning (``alpha_peak``) and AlphaLoRA use the block mean of
``alpha`` over the block's linear matrices; this module computes it for any causal LM.

Tail fit, for ascending eigenvalues ``lambda_0 <= ... <= lambda_{N-1}`` and a lower
cut-off at index ``i`` (``n = N - i`` eigenvalues in the tail):

    alpha_i = 1 + n / sum_{j >= i} ln(lambda_j / lambda_i)         (Hill / power-law MLE)
    D_i     = max_{j >= i} | 1 - (lambda_j / lambda_i)**(1 - alpha_i) - (j - i) / n |

``fit="mid"`` takes ``i = N // 2``. ``fit="peak"`` (AlphaPruning's ``xmin_peak``) tries
every cut-off ``i < N - 1`` with ``lower <= lambda_i <= 1.5 * lambda_peak`` and keeps the
one with the smallest KS distance ``D_i``, where ``lambda_peak`` is the left edge of the
fullest bin of a ``bins``-bin histogram of ``log10(lambda)``.

Quirks of the reference code (AlphaPruning ``net_esd_estimator``, AlphaLoRA
``fix_finger``; WeightWatcher passes the same range), reproduced by default:

* the lower bound is ``lower = log10(0.95 * lambda_peak)`` -- a log-scale number -- and it
  is compared with raw eigenvalues. For ``lambda_peak < 10.5`` it is below every positive
  eigenvalue, so in practice the search starts at the smallest eigenvalue. Pass
  ``fix_lower_bound=True`` to compare with ``0.95 * lambda_peak`` instead (the evident
  intent); the default keeps the published numbers reproducible.
* cut-offs whose ``alpha_i <= 1`` keep ``D_i = 1`` and the chosen index is the first
  minimum of ``D`` over all ``N - 1`` slots (skipped slots hold ``D = 1``, ``alpha = 0``).

Differences from the reference, on purpose:

* **Deviation: eigenvalue precision.** The reference computes the spectrum in float32
  (``torch.linalg.svdvals(W.float())``, then squared in float32); by default ours is
  computed in float64. The rounding can decide the fit where two cut-offs have nearly equal
  KS distances or an eigenvalue sits on a histogram edge. ``precision="float32"``
  reproduces the reference's eigenvalues (the fit then runs in float64 on them, as it does
  by default; on SmolLM2-135M this changes the alphas by at most 2e-4 and no chosen
  cut-off); it is accepted by :func:`spectrum`, :func:`esd_alpha`,
  :func:`alpha_hill_table` and :func:`alpha_hill`.
* exactly-zero eigenvalues are dropped (their logarithm is undefined; the reference would
  produce NaN/-inf there).
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import linear_modules, transformer_blocks

__all__ = ["PRECISIONS", "alpha_hill", "alpha_hill_table", "esd_alpha", "spectrum"]

_FITS = ("peak", "mid")
#: dtypes the eigenvalues can be computed in: float64 (ours) or float32 (the reference's).
PRECISIONS = ("float64", "float32")
_CHUNK = 1 << 22  # elements per (candidates x eigenvalues) slab in the KS search


def _check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: expected one of {PRECISIONS}")
    return getattr(torch, precision)


def spectrum(weight: torch.Tensor, precision: str = "float64") -> torch.Tensor:
    """Ascending non-zero eigenvalues of ``W^T W`` (squared singular values), as float64.

    Computed on ``weight``'s device. ``precision`` is the dtype of the singular values and
    their squares: ``"float64"`` (default) or ``"float32"``, the reference code's
    ``svdvals(W.float()) ** 2`` (a deviation of the default, see the module docstring);
    either way the result is returned in float64 for the fit.

    Raises ValueError for a non-2-D weight, one with fewer than two non-zero singular
    values, or an unknown ``precision``.
    """
    dtype = _check_precision(precision)
    if weight.ndim != 2:
        raise ValueError(f"weight of shape {tuple(weight.shape)} is invalid: expected a matrix")
    lam = torch.linalg.svdvals(weight.detach().to(dtype)).square().to(torch.float64).sort().values
    lam = lam[lam > 0]
    if lam.numel() < 2:
        raise ValueError(f"weight of shape {tuple(weight.shape)} has {lam.numel()} non-zero "
                         "singular values: expected at least 2 to fit a tail")
    return lam


def _peak_candidates(lam: torch.Tensor, bins: int, fix_lower_bound: bool) -> torch.Tensor:
    log10 = lam.log10()
    lo, hi = log10.min(), log10.max()
    counts = torch.histc(log10, bins=bins, min=lo.item(), max=hi.item())
    edges = torch.linspace(lo.item(), hi.item(), bins + 1, dtype=lam.dtype, device=lam.device)
    peak = 10.0 ** edges[torch.argmax(counts)]
    lower = 0.95 * peak if fix_lower_bound else torch.log10(0.95 * peak)
    head = lam[:-1]  # the largest eigenvalue is never a cut-off (its tail has one point)
    return torch.nonzero((head >= lower) & (head <= 1.5 * peak)).flatten()


def esd_alpha(weight: torch.Tensor, fit: str = "peak", bins: int = 100,
              fix_lower_bound: bool = False, precision: str = "float64") -> float:
    """PL_Alpha_Hill of one weight matrix (see the module docstring for the estimator).

    Args:
        weight: a 2-D weight (any dtype, any device; computed in float64 on its device).
        fit: "peak" (AlphaPruning's alpha_peak, KS-selected cut-off near the histogram
            peak) or "mid" (Hill estimator with the cut-off at the median eigenvalue).
        bins: histogram bins for "peak".
        fix_lower_bound: "peak" only; see the module docstring (False = reference).
        precision: dtype of the eigenvalues, "float64" (default) or "float32" (the
            reference's; see :func:`spectrum` and the module docstring's deviations).

    Returns:
        alpha as a float: ``> 1`` for any non-degenerate spectrum, ``inf`` when the tail
        eigenvalues are all equal, and 0 -- as in the reference -- when "peak" finds no
        admissible cut-off (only possible when the spectrum spans more than
        ``bins * log10(1.5)`` decades, 17.6 for 100 bins).

    Raises:
        ValueError: unknown ``fit`` or ``precision``, ``bins < 1``, or a weight as in
            :func:`spectrum`.
    """
    if fit not in _FITS:
        raise ValueError(f"fit={fit!r} is invalid: expected one of {_FITS}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r} is invalid: expected an integer >= 1")
    lam = spectrum(weight, precision)
    big_n = lam.numel()
    log = lam.log()
    tail_sum = log.flip(0).cumsum(0).flip(0)  # tail_sum[i] = sum_{j >= i} ln lambda_j
    if fit == "mid":
        i = big_n // 2
        n = big_n - i
        return float(1 + n / (tail_sum[i] - n * log[i]))

    idx = _peak_candidates(lam, bins, fix_lower_bound)
    n = (big_n - idx).to(lam.dtype)
    cand_alpha = 1 + n / (tail_sum[idx] - n * log[idx])
    alphas = torch.zeros(big_n - 1, dtype=lam.dtype, device=lam.device)
    ks = torch.ones(big_n - 1, dtype=lam.dtype, device=lam.device)
    alphas[idx] = cand_alpha
    keep = cand_alpha > 1
    idx, n, cand_alpha = idx[keep], n[keep], cand_alpha[keep]
    j = torch.arange(big_n, device=lam.device)
    step = max(1, _CHUNK // big_n)
    for s in range(0, idx.numel(), step):
        i, ni, a = idx[s:s + step, None], n[s:s + step, None], cand_alpha[s:s + step, None]
        rel = j[None, :] - i
        # (lambda_j / lambda_i)**(1 - alpha) through logs: the exponent is <= 0 in the tail.
        fitted = 1 - torch.exp((1 - a) * (log[None, :] - log[i]))
        gap = (fitted - rel / ni).abs()
        ks[idx[s:s + step]] = torch.where(rel >= 0, gap, torch.zeros_like(gap)).amax(dim=1)
    # torch.argmin returns the first minimum, as the reference loop does.
    return float(alphas[torch.argmin(ks)])


def alpha_hill_table(model: nn.Module, fit: str = "peak", bins: int = 100,
                     fix_lower_bound: bool = False, progress: bool = True,
                     precision: str = "float64") -> pd.DataFrame:
    """PL_Alpha_Hill of every linear matrix of every transformer block.

    Args:
        model: any model :func:`layerif.models.transformer_blocks` understands.
        fit, bins, fix_lower_bound, precision: as :func:`esd_alpha` (``precision="float32"``
            gives the reference code's eigenvalues).
        progress: show a progress bar over blocks.

    Returns:
        DataFrame, one row per matrix in depth order: columns layer, block (block path),
        module (name inside the block), path (full module path), alpha, n_eigs.
    """
    _check_precision(precision)
    rows = []
    blocks = transformer_blocks(model)
    for layer, (block_path, block) in enumerate(
            tqdm(blocks, desc="alpha_hill", disable=not progress)):
        for name, module in linear_modules(block):
            weight = module.weight
            rows.append({
                "layer": layer, "block": block_path, "module": name,
                "path": f"{block_path}.{name}",
                "alpha": esd_alpha(weight, fit=fit, bins=bins, fix_lower_bound=fix_lower_bound,
                                   precision=precision),
                "n_eigs": min(weight.shape),
            })
    return pd.DataFrame(rows)


def alpha_hill(model: nn.Module, fit: str = "peak", bins: int = 100,
               fix_lower_bound: bool = False, progress: bool = True,
               precision: str = "float64") -> pd.Series:
    """Per-block PL_Alpha_Hill: the unweighted mean over the block's linear matrices.

    This is AlphaPruning's block-wise ``alpha_peak`` (with ``fit="peak"``) and AlphaLoRA's
    layer alpha. Higher alpha = less well trained block.

    Args:
        model, fit, bins, fix_lower_bound, progress, precision: as :func:`alpha_hill_table`
            (``precision="float32"``: the reference code's float32 eigenvalues).

    Returns:
        ``pd.Series[float]`` named "alpha", indexed by block (index name "layer").
    """
    table = alpha_hill_table(model, fit=fit, bins=bins, fix_lower_bound=fix_lower_bound,
                             progress=progress, precision=precision)
    return table.groupby("layer")["alpha"].mean().rename("alpha")
