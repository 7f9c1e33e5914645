"""Pruning with per-layer sparsity: Magnitude, Wanda, SparseGPT, and OWL's outlier ratios.

Per-matrix maths (pure functions of a weight matrix, its calibration statistic and a
``sparsity``): :func:`magnitude`, :func:`wanda`, :func:`sparsegpt`. The block-by-block
driver :func:`prune_model` applies them to a whole model with one ratio, per-block ratios
(a Series indexed by block) or per-matrix ratios; :func:`sparsity_report` measures the
result; :func:`owl_outlier_ratios` gives OWL's per-block outlier percentages.
"""
from .magnitude import lowest_k_mask, magnitude, nm_mask
from .outliers import owl_outlier_ratios
from .sequential import METHODS, capture_block_inputs, prune_model, sparsity_report, walk_blocks
from .sparsegpt import inverse_hessian_factor, sparsegpt
from .wanda import wanda, wanda_scores

__all__ = [
    "METHODS",
    "capture_block_inputs",
    "inverse_hessian_factor",
    "lowest_k_mask",
    "magnitude",
    "nm_mask",
    "owl_outlier_ratios",
    "prune_model",
    "sparsegpt",
    "sparsity_report",
    "walk_blocks",
    "wanda",
    "wanda_scores",
]
