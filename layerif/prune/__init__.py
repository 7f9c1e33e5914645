"""Pruning with per-layer sparsity: Magnitude, Wanda, SparseGPT, and OWL's outlier ratios.

Per-matrix maths (pure functions of a weight matrix, its calibration statistic and a
``sparsity``): :func:`magnitude`, :func:`wanda`, :func:`sparsegpt`. The block-by-block
driver :func:`prune_model` applies them to a whole model with one ratio, per-block ratios
(a Series indexed by block) or per-matrix ratios (a ``{path: ratio}`` mapping or a flat
sequence in depth order); :class:`PruneConfig` holds its settings (with ``smoke``
and ``paper`` presets) and :func:`prune` also draws the calibration tokens it describes;
:func:`sparsity_report` measures the result; :func:`owl_outlier_ratios` gives OWL's
per-block outlier percentages. :func:`prune_and_evaluate` is ``layerif prune``: prune,
evaluate (perplexity and zero-shot) and save in the results store.

``ties="reference"`` (on :func:`magnitude`, :func:`sparsegpt` and :class:`PruneConfig`) reproduces the published codes' threshold rule, which prunes every
weight tied with the cut (and one more than ``int(numel * s)``); the default prunes exactly
``int(numel * s)``.
"""
from .config import PruneConfig
from .magnitude import TIES, lowest_k_mask, magnitude, nm_mask, threshold_mask
from .outliers import owl_outlier_ratios
from .run import (PrunedEvaluation, evaluate_pruned, prune, prune_and_evaluate, pruned_identity,
                  read_allocation)
from .ratios import block_ratios, matrix_paths, matrix_ratios
from .sequential import METHODS, capture_block_inputs, prune_model, sparsity_report, walk_blocks
from .sparsegpt import inverse_hessian_factor, sparsegpt
from .wanda import wanda, wanda_scores

__all__ = [
    "METHODS",
    "PruneConfig",
    "PrunedEvaluation",
    "TIES",
    "capture_block_inputs",
    "evaluate_pruned",
    "inverse_hessian_factor",
    "lowest_k_mask",
    "magnitude",
    "block_ratios",
    "matrix_paths",
    "matrix_ratios",
    "nm_mask",
    "owl_outlier_ratios",
    "prune",
    "prune_and_evaluate",
    "prune_model",
    "pruned_identity",
    "read_allocation",
    "sparsegpt",
    "sparsity_report",
    "threshold_mask",
    "walk_blocks",
    "wanda",
    "wanda_scores",
]
