"""Per-layer allocations from per-layer scores: LoRA-MoE experts and pruning sparsity.

Pure mappings (paper §3.3, §3.4 and App. E; ``shared/paper/METHOD.md`` §2-3). Inputs and
outputs are pandas Series indexed by transformer-block index (index name ``"layer"``); a
plain sequence is accepted and indexed ``0..L-1``. Each public function states the
invariants it guarantees; ``tests/test_allocate.py`` checks them on random inputs.

At the edges, :func:`per_module` and :func:`per_matrix` expand a per-block Series into
what other libraries take: a dict keyed by full module path (PEFT ``rank_pattern`` style)
or a flat list in depth order (AlphaPruning/OWL-style ``ratios``).

Checking the inputs (a finite Series per block, aligned parameter counts, a block index) is
:mod:`layerif.layer_series`, shared with the model-only baselines.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter

from .layer_series import aligned_params, as_layer_series, layer_index

__all__ = [
    "CLIP",
    "experts",
    "linear_sparsity",
    "matrix_sparsity",
    "per_matrix",
    "per_module",
    "smooth_scores",
    "sparsity",
    "top_k",
    "uniform_experts",
    "uniform_sparsity",
]

#: The default per-block sparsity cap of :func:`sparsity` (the authors clip at 0.99).
CLIP = 0.99


# --------------------------------------------------------------------------- validation
# (per-block Series, parameter counts and block indices: :mod:`layerif.layer_series`)

def _check_fraction(value, name: str, lo_open: bool, hi: float = 1.0) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value)
    ok = ok and (0 < value if lo_open else 0 <= value) and value < hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name}={value!r} is invalid: expected a float in {bracket}0, {hi:g})")
    return float(value)


def _check_total(total, n_layers: int) -> int:
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < n_layers:
        raise ValueError(f"total={total!r} is invalid: expected an integer >= the number of "
                         f"layers ({n_layers}), so that every layer gets at least one expert")
    return int(total)


# --------------------------------------------------------------------------- experts

def largest_remainder(quota: np.ndarray, total: int) -> np.ndarray:
    """Round non-negative ``quota`` (summing to ``total`` up to float error) to integers.

    ``floor(quota)``, then +1 to the ``total - sum(floor)`` entries with the largest
    fractional parts, ties to the lower position (Hamilton's method). Each result is
    within 1 of its quota and the results sum to ``total`` exactly.
    """
    n = np.floor(quota).astype(np.int64)
    short = int(total - n.sum())
    if short < 0 or short > len(n):
        raise ValueError(f"quota sums to {quota.sum()!r}, not total={total}")
    order = np.argsort(-(quota - n), kind="stable")  # stable: ties go to the lower index
    n[order[:short]] += 1
    return n


def experts(scores, total: int, beta: float = 2.5) -> pd.Series:
    """Experts per layer from LayerIF scores: the authors' mapping (paper §3.3).

    ``w = (max S - S)**beta`` (all ``w`` zero, i.e. constant scores -> uniform weights),
    ``f = w / sum(w) * (total - L)``, ``n = floor(f) + 1``, then +1 to the
    ``total - sum(n)`` layers with the largest ``f - floor(f)``, ties to the lower index.
    The code's ``max S - S`` is the paper's "negate then raise to beta" made non-negative:
    layers with more negative (more helpful-influence) scores get more experts.

    Invariants: ``sum(n) == total``; ``n >= 1``; ``|n - (f + 1)| < 1``; ``S_i < S_j``
    implies ``n_i >= n_j`` (for scores so close that their float64 weights coincide, the
    lower index wins); constant scores give :func:`uniform_experts`.

    Args:
        scores: one score per block (Series indexed by layer, or a sequence).
        total: total number of experts over all layers (``>= L``).
        beta: exponent ``> 0``; larger spreads the allocation more.

    Returns:
        ``pd.Series[int]`` named "experts", indexed like ``scores``.

    Raises:
        ValueError: non-finite scores, ``total < L`` or not an integer, ``beta <= 0``.
    """
    s = as_layer_series(scores, "scores")
    total = _check_total(total, len(s))
    if not (isinstance(beta, (int, float, np.floating, np.integer)) and np.isfinite(beta)
            and beta > 0):
        raise ValueError(f"beta={beta!r} is invalid: expected a finite float > 0")
    gap = s.max() - s.to_numpy()
    # Dividing by the range first leaves the ratios unchanged and keeps gap**beta finite.
    w = (gap / gap.max()) ** beta if gap.max() > 0 else np.ones(len(s))
    f = w / w.sum() * (total - len(s))
    n = largest_remainder(f, total - len(s)) + 1
    return pd.Series(n, index=s.index, name="experts")


def top_k(experts: pd.Series) -> pd.Series:
    """Router top-k per layer: 2 where a layer has more than one expert, else 1.

    The rule of the LayerIF and AlphaLoRA code. Invariant: ``1 <= k <= n``.

    Raises:
        ValueError: an entry is not an integer ``>= 1``.
    """
    n = as_layer_series(experts, "experts")
    if (n < 1).any() or (n != np.round(n)).any():
        raise ValueError(f"experts={list(n)} is invalid: expected integers >= 1")
    return pd.Series(np.where(n > 1, 2, 1), index=n.index, name="top_k")


def uniform_experts(n_layers, total: int) -> pd.Series:
    """``total // L`` experts per layer, +1 to the first ``total % L`` layers.

    Equal to :func:`experts` on constant scores. Invariants: ``sum == total``, ``n >= 1``,
    entries differ by at most 1.

    Args:
        n_layers: the number of blocks, or the block index to use.
        total: total number of experts (``>= L``).
    """
    index = layer_index(n_layers)
    total = _check_total(total, len(index))
    n = largest_remainder(np.full(len(index), total / len(index)), total)
    return pd.Series(n, index=index, name="experts")


# --------------------------------------------------------------------------- sparsity

def smooth_scores(values, window: int = 7, polyorder: int = 3) -> pd.Series:
    """Savitzky-Golay smoothing across depth (scipy ``savgol_filter``, mode "interp").

    With fewer layers than ``window`` the window shrinks to the largest odd number
    ``<= L`` and ``polyorder`` to at most ``window - 1`` (a polynomial of degree
    ``window - 1`` through ``window`` points is exact, so a window that small is the
    identity).

    Raises:
        ValueError: ``window`` not a positive odd integer, ``polyorder`` not in
            ``[0, window)``, non-finite values.
    """
    s = as_layer_series(values, "values")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) \
            or window < 1 or window % 2 == 0:
        raise ValueError(f"window={window!r} is invalid: expected a positive odd integer")
    if isinstance(polyorder, bool) or not isinstance(polyorder, (int, np.integer)) \
            or not 0 <= polyorder < window:
        raise ValueError(f"polyorder={polyorder!r} is invalid: expected an integer in "
                         f"[0, window={window})")
    w = min(int(window), len(s) if len(s) % 2 else len(s) - 1)
    p = min(int(polyorder), w - 1)
    out = savgol_filter(s.to_numpy(), window_length=w, polyorder=p, mode="interp")
    return pd.Series(out, index=s.index, name=s.name)


def linear_sparsity(values, target: float, n_params, epsilon: float = 0.1,
                    clip: float | None = CLIP) -> pd.Series:
    """Map per-layer values linearly to sparsities around ``target`` (AlphaPruning's map).

    ``r = (v - min v) / (max v - min v) * 2 eps + (1 - eps)`` (constant ``v`` -> ``r = 1``),
    ``eta = target * sum(d) / sum(r d)``, ``sparsity = eta * r`` with ``d = n_params``.
    Higher value -> higher sparsity. Ratios above ``clip`` are set to ``clip`` and the
    excess is redistributed: the unclipped layers are rescaled by one common factor so
    that the global target holds again, repeated until no new layer exceeds ``clip``
    (water-filling; order and ratios among unclipped layers are kept).

    Invariants: ``sum(sparsity * d) == target * sum(d)`` (to float rounding);
    ``0 < sparsity <= clip``; non-decreasing in ``v``; unclipped ratios are within a
    factor ``(1 + eps) / (1 - eps)`` of each other; ``eps = 0`` gives uniform ``target``.

    Args:
        values: one value per block.
        target: global sparsity in ``(0, 1)``, weighted by ``n_params``.
        n_params: prunable parameters per block, indexed like ``values``.
        epsilon: half-width of the ratio band, in ``[0, 1)``.
        clip: upper limit per layer in ``(target, 1]``; None for no limit (the AlphaPruning
            reference has none).

    Returns:
        ``pd.Series[float]`` named "sparsity", indexed like ``values``.

    Raises:
        ValueError: out-of-range ``target``/``epsilon``/``clip``, non-finite values,
            mismatched or non-positive ``n_params``.
    """
    v = as_layer_series(values, "values")
    d = aligned_params(n_params, v.index).to_numpy()
    target = _check_fraction(target, "target", lo_open=True)
    epsilon = _check_fraction(epsilon, "epsilon", lo_open=False)
    if clip is not None and not (isinstance(clip, (int, float, np.floating))
                                 and not isinstance(clip, bool) and 0 < clip <= 1):
        raise ValueError(f"clip={clip!r} is invalid: expected a float in (0, 1] or None")
    if clip is not None and not target < clip:
        raise ValueError(f"target={target!r} is invalid with clip={clip!r}: every block is "
                         "capped at clip, so the global target must be below it (lower the "
                         "target, or raise clip; None: no cap)")
    x = v.to_numpy()
    span = x.max() - x.min()
    r = (x - x.min()) / span * (2 * epsilon) + (1 - epsilon) if span > 0 else np.ones(len(x))
    out = target * d.sum() / (r * d).sum() * r
    if clip is not None:
        fixed = np.zeros(len(out), dtype=bool)
        while (over := ~fixed & (out > clip)).any():
            fixed |= over
            free = ~fixed
            # Every layer at clip would exceed the target (clip > target), so free mass > 0.
            budget = target * d.sum() - clip * d[fixed].sum()
            out = np.where(fixed, clip, budget / (r[free] * d[free]).sum() * r)
    return pd.Series(out, index=v.index, name="sparsity")


def sparsity(scores, target: float, n_params, epsilon: float = 0.1, smooth: bool = True,
             window: int = 7, polyorder: int = 3, clip: float | None = CLIP) -> pd.Series:
    """Sparsity per layer from LayerIF scores (paper §3.4, App. E).

    ``|S|`` -> min-max to ``[0, 1]`` -> :func:`smooth_scores` (if ``smooth``) ->
    :func:`linear_sparsity` (linear map to ``[1 - eps, 1 + eps]``, times ``eta`` so the
    parameter-weighted mean is ``target``, then clipping at ``clip`` with redistribution).
    Higher ``|S|`` (a less well trained layer) -> higher sparsity.

    Invariants: those of :func:`linear_sparsity` with ``v`` the smoothed ``|S|``; without
    smoothing the result is non-decreasing in ``|S|``; constant ``|S|`` gives ``target``.

    Args:
        scores: LayerIF score per block.
        target: global sparsity in ``(0, 1)``.
        n_params: prunable parameters per block, indexed like ``scores``.
        epsilon: half-width of the ratio band in ``[0, 1)`` (authors: 0.1 for Wanda and
            SparseGPT, 0.3 for magnitude).
        smooth: apply Savitzky-Golay smoothing across depth.
        window, polyorder: smoothing window (odd) and polynomial order.
        clip: per-layer upper limit (the authors clip at 0.99), or None.

    Returns:
        ``pd.Series[float]`` named "sparsity", indexed like ``scores``.

    Raises:
        ValueError: as :func:`linear_sparsity` and :func:`smooth_scores`.
    """
    s = as_layer_series(scores, "scores").abs()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else s * 0.0
    if smooth:
        s = smooth_scores(s, window=window, polyorder=polyorder)
    return linear_sparsity(s, target, n_params, epsilon=epsilon, clip=clip)


def uniform_sparsity(n_layers, target: float) -> pd.Series:
    """The same sparsity ``target`` in ``(0, 1)`` for every block (the uniform baseline).

    Args:
        n_layers: the number of blocks, or the block index to use.
        target: sparsity in ``(0, 1)``.
    """
    index = layer_index(n_layers)
    target = _check_fraction(target, "target", lo_open=True)
    return pd.Series(np.full(len(index), target), index=index, name="sparsity")


def matrix_sparsity(scores: pd.DataFrame, target: float, n_params: pd.DataFrame,
                    epsilon: float = 0.1, smooth: bool = True) -> pd.DataFrame:
    """Sparsity per linear matrix from per-matrix scores (paper §5, per matrix vs per block).

    :func:`sparsity`'s recipe over matrices: ``|S|`` of every matrix, min-max normalised over
    all matrices together, smoothed across depth within each column (q with q, down with
    down), then :func:`linear_sparsity` over all matrices weighted by ``n_params``.

    Args:
        scores: index = layer, one column per linear module.
        target, epsilon, smooth: as :func:`sparsity`.
        n_params: parameters of each matrix, shaped like ``scores``.

    Returns:
        Sparsities shaped like ``scores``; ``sum(out * n_params) == target * sum(n_params)``.
    """
    if list(n_params.columns) != list(scores.columns) or not n_params.index.equals(scores.index):
        raise ValueError("n_params is invalid: expected the same layers and modules as scores")
    s = scores.abs()
    lo, hi = s.to_numpy().min(), s.to_numpy().max()
    s = (s - lo) / (hi - lo) if hi > lo else s * 0.0
    if smooth:
        s = s.apply(smooth_scores)
    flat = pd.Series(s.to_numpy().ravel())
    d = pd.Series(n_params.to_numpy(dtype=float).ravel())
    out = linear_sparsity(flat, target, d, epsilon=epsilon)
    return pd.DataFrame(out.to_numpy().reshape(s.shape), index=s.index, columns=s.columns)


# --------------------------------------------------------------------------- exports

def _layout(blocks, modules) -> list[tuple[object, str, list[str]]]:
    if isinstance(blocks, pd.DataFrame):
        if "path" not in blocks.columns:
            raise ValueError("blocks is a DataFrame without a 'path' column: pass "
                             "layerif.describe(model) or a Series layer -> block path")
        paths = blocks["path"]
        listed = blocks["linear_modules"] if "linear_modules" in blocks.columns else None
    elif isinstance(blocks, pd.Series):
        paths, listed = blocks, None
    else:
        raise ValueError(f"blocks of type {type(blocks).__name__} is invalid: expected "
                         "layerif.describe(model) or a Series layer -> block path")
    if modules is None and listed is None:
        raise ValueError("modules=None needs blocks=layerif.describe(model) (which lists "
                         "each block's linear modules); else pass module names")
    if isinstance(modules, str):
        raise ValueError(f"modules={modules!r} is invalid: expected a sequence of names")
    rows = []
    for layer, path in paths.items():
        if modules is not None:
            names = list(modules)
        else:
            names = listed[layer]
            names = [n for n in names.split(", ") if n] if isinstance(names, str) else list(names)
        rows.append((layer, str(path), names))
    return rows


def per_module(values: pd.Series, blocks, modules: Sequence[str] | None = None) -> dict:
    """Expand a per-block Series to ``{full module path: value}``, in depth order.

    Keys look like ``"model.layers.3.self_attn.q_proj"``: usable as a PEFT
    ``rank_pattern``/``alpha_pattern`` or by a pruner iterating named modules.

    Args:
        values: one value per block (e.g. :func:`experts` or :func:`sparsity`).
        blocks: ``layerif.describe(model)`` (columns "path" and "linear_modules"), or a
            Series mapping block index to block path.
        modules: relative module names to expand to in every block (e.g.
            ``["self_attn.q_proj", "mlp.down_proj"]``); None = every linear module listed
            in ``blocks``.

    Returns:
        dict of Python ints (integer Series) or floats.

    Raises:
        ValueError: ``values`` and ``blocks`` cover different blocks, or no module names.
    """
    v = values if isinstance(values, pd.Series) else as_layer_series(values, "values")
    rows = _layout(blocks, modules)
    if set(v.index) != {layer for layer, _, _ in rows} or len(v) != len(rows):
        raise ValueError(f"values is indexed by {list(v.index)} but blocks by "
                         f"{[layer for layer, _, _ in rows]}: expected the same block indices")
    cast = int if pd.api.types.is_integer_dtype(v.dtype) else float
    return {f"{path}.{name}": cast(v[layer]) for layer, path, names in rows for name in names}


def per_matrix(values: pd.Series, blocks, modules: Sequence[str] | None = None) -> list:
    """The values of :func:`per_module` as a flat list, one entry per matrix in depth order.

    For pruning code that takes ``ratios[k]`` for the k-th linear layer of the model
    (the AlphaPruning/OWL reference code), and for
    ``layerif.prune.prune_model(..., per_matrix=...)``, which reads a flat sequence in this
    order (:func:`layerif.prune.matrix_paths`). Same arguments as :func:`per_module`.
    """
    return list(per_module(values, blocks, modules).values())
