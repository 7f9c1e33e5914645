"""Sparsity ratios per block and per linear matrix, as :func:`layerif.prune.prune_model` reads them.

A model is pruned with one ratio, per-block ratios (a Series or mapping indexed by block) or
per-matrix ratios (``{module path: ratio}``, or a flat sequence in depth order as
:func:`layerif.allocate.per_matrix` gives): every form is checked and resolved here to one
ratio per matrix path.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models import linear_modules, transformer_blocks
from .magnitude import check_sparsity

__all__ = ["block_ratios", "matrix_paths", "matrix_ratios"]


def block_ratios(sparsity, n_blocks: int, nm) -> pd.Series:
    """One ratio per block, indexed 0..n_blocks-1, from one ratio or per-block ratios (checked)."""
    if isinstance(sparsity, (Mapping, pd.Series)):
        ratios = pd.Series(sparsity, dtype=float) if isinstance(sparsity, Mapping) else sparsity.astype(float)
        want = set(range(n_blocks))
        try:
            have = set(int(i) for i in ratios.index)
        except (TypeError, ValueError):
            raise ValueError(
                f"sparsity is invalid: per-block ratios must be indexed by block index, got {list(ratios.index)}"
            ) from None
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            raise ValueError(
                f"sparsity is invalid: per-block ratios must be indexed by blocks 0..{n_blocks - 1}; "
                f"missing {missing}, unknown {extra}"
            )
        ratios.index = ratios.index.astype(int)
        ratios = ratios.sort_index()
    else:
        ratios = pd.Series(float(check_sparsity(sparsity, nm)), index=range(n_blocks))
    for layer, r in ratios.items():
        check_sparsity(r, nm, name=f"sparsity[{layer}]")
    ratios.index.name = "layer"
    return ratios


def matrix_paths(model: nn.Module) -> list[str]:
    """Full paths of every linear module of every transformer block, in depth order.

    The order of a flat ``per_matrix`` sequence (:func:`prune_model`) and of
    :func:`layerif.allocate.per_matrix` with ``layerif.describe(model)``: block by block,
    and inside a block in :func:`layerif.models.linear_modules` order.
    """
    return [f"{path}.{name}" for path, block in transformer_blocks(model)
            for name, _ in linear_modules(block)]


def _overrides(per_matrix, paths: list[str]) -> dict:
    """``per_matrix`` as ``{path: ratio}`` (unchecked ratios); a sequence maps by position."""
    if per_matrix is None:
        return {}
    if isinstance(per_matrix, (Mapping, pd.Series)):
        return dict(per_matrix)
    if isinstance(per_matrix, torch.Tensor):
        per_matrix = per_matrix.detach().cpu().numpy()
    if isinstance(per_matrix, np.ndarray) and per_matrix.ndim != 1:
        raise ValueError(f"per_matrix of shape {per_matrix.shape} is invalid: expected a flat "
                         "sequence of ratios, one per linear matrix in depth order")
    if not isinstance(per_matrix, (Sequence, np.ndarray)) or isinstance(per_matrix, (str, bytes)):
        raise ValueError(f"per_matrix of type {type(per_matrix).__name__} is invalid: expected a "
                         "{module path: ratio} mapping or a sequence of ratios in depth order")
    values = list(per_matrix)
    if len(values) != len(paths):
        raise ValueError(
            f"per_matrix is a sequence of {len(values)} ratios but the model has {len(paths)} "
            "linear matrices: expected one ratio per matrix in depth order, as "
            "layerif.allocate.per_matrix(values, layerif.describe(model)) gives")
    return dict(zip(paths, values))


def matrix_ratios(model, sparsity, per_matrix, nm) -> dict[str, float]:
    """``{module path: ratio}`` for every linear matrix in depth order: the block's ratio,
    unless ``per_matrix`` (a mapping or a depth-order sequence) overrides it (checked)."""
    paths = matrix_paths(model)
    overrides = _overrides(per_matrix, paths)
    for key in overrides:
        if key not in paths:
            raise ValueError(
                f"per_matrix key {key!r} is invalid: expected a linear module path such as {paths[0]!r}"
            )
    if sparsity is None:
        missing = [p for p in paths if p not in overrides]
        if missing:
            raise ValueError(
                f"sparsity=None is invalid: per_matrix leaves {len(missing)} of {len(paths)} matrices "
                f"without a ratio (e.g. {missing[0]!r}); expected a ratio in [0, 1) or per-block ratios")
        out = {}
    else:
        ratios = block_ratios(sparsity, len(transformer_blocks(model)), nm)
        out = {f"{path}.{name}": float(ratios[layer])
               for layer, (path, block) in enumerate(transformer_blocks(model))
               for name, _ in linear_modules(block)}
    for key, value in overrides.items():
        out[key] = check_sparsity(value, nm, name=f"per_matrix[{key!r}]")
    return {p: out[p] for p in paths}
