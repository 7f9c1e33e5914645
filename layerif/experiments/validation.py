"""Notebook 09's statistics: how good are layer scores? Pure maths on influence matrices.

Inputs are per-block influence matrices ``[L blocks, n training examples]`` (DataInf sign:
positive = harmful), block-score Series and allocations; nothing here runs a model. The
orchestration that produces the matrices lives in :mod:`.approximation` (a warmed-up LoRA
setting where the exact inverse is affordable) and :mod:`.retraining` (leave-one-out and
block-alone fine-tuning).

Allocations use the study's defaults (:func:`block_allocations`): experts with ``per_block``
experts per block on average and ``beta``; sparsity at ``target`` with ``epsilon`` and
smoothing, over blocks of equal size (true of every block of SmolLM2 and Gemma-3).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from .. import allocate, stats
from .._config import check
from ..scores import AGGREGATIONS, aggregate_values

__all__ = ["block_allocations", "block_scores", "bootstrap_stability", "compare_methods",
           "correlations", "expert_distance", "gain_table", "loo_table", "retraining_noise",
           "row_spearman", "subset_stability", "sweep_table"]


def correlations(a, b) -> dict:
    """Pearson and Spearman of two equal-length vectors; ``nan`` where one is constant."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    check(x.shape == y.shape and x.size >= 2, "b", f"array of length {y.size}",
          f"the length of a ({x.size}), at least 2")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": np.nan, "spearman": np.nan}
    return {"pearson": float(sps.pearsonr(x, y).statistic),
            "spearman": float(sps.spearmanr(x, y).statistic)}


def row_spearman(a, b) -> np.ndarray:
    """Spearman's rho of each row of ``a`` with the same row of ``b`` (``[R, L]`` arrays, or
    one ``[L]`` vector broadcast against the other's rows): :func:`correlations`'s
    ``spearman`` for every row at once, ``nan`` where a row is constant."""
    x, y = np.broadcast_arrays(np.atleast_2d(np.asarray(a, dtype=np.float64)),
                               np.atleast_2d(np.asarray(b, dtype=np.float64)))
    check(x.shape[1] >= 2, "b", f"rows of length {x.shape[1]}", "at least 2 entries per row")
    rx, ry = (sps.rankdata(v, axis=1) for v in (x, y))
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    return np.where(constant, np.nan, np.clip(rho, -1.0, 1.0))


def block_scores(values, aggregation: str = "positive", index=None) -> pd.Series:
    """One score per block from a block influence matrix ``[L, n]`` (:func:`aggregate_values`)."""
    arr = np.array(values, dtype=np.float64)  # a writable copy for torch
    s = aggregate_values(torch.from_numpy(arr), aggregation).numpy()
    idx = pd.RangeIndex(len(s), name="layer") if index is None else pd.Index(index, name="layer")
    return pd.Series(s, index=idx, name="score")


def block_allocations(scores: pd.Series, per_block: float = 5.0, beta: float = 2.5,
                      target: float = 0.5, epsilon: float = 0.1) -> tuple[pd.Series, pd.Series]:
    """``(experts, sparsity)`` of one score vector (equal block sizes, see module docstring)."""
    total = int(round(per_block * len(scores)))
    experts = allocate.experts(scores, total, beta)
    sparsity = allocate.sparsity(scores, target, pd.Series(1.0, index=scores.index),
                                 epsilon=epsilon)
    return experts, sparsity


def expert_distance(a, b) -> float:
    """Fraction of experts that move between two allocations of the same total:
    ``sum |a - b| / (2 * total)``, in [0, 1]."""
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    check(x.sum() == y.sum(), "b", f"allocation of {y.sum()} experts", f"{x.sum()} like a")
    return float(np.abs(x - y).sum() / (2 * x.sum()))


def _agreement(candidate: np.ndarray, reference: np.ndarray, alloc: dict) -> dict:
    """Per-example, per-block-score and allocation agreement of two block matrices."""
    row = {f"pooled_{k}": v for k, v in correlations(candidate, reference).items()}
    per_block = [correlations(c, r) for c, r in zip(candidate, reference)]
    for k in ("pearson", "spearman"):
        row[f"median_block_{k}"] = float(np.nanmedian([p[k] for p in per_block]))
    for agg in AGGREGATIONS:
        row[f"scores_{agg}"] = correlations(block_scores(candidate, agg),
                                            block_scores(reference, agg))["spearman"]
    ec, sc = block_allocations(block_scores(candidate), **alloc)
    er, sr = block_allocations(block_scores(reference), **alloc)
    row["experts_spearman"] = correlations(ec, er)["spearman"]
    row["experts_moved"] = expert_distance(ec, er)
    row["sparsity_max_diff"] = float(np.abs(sc - sr).max())
    return row


def compare_methods(matrices: dict, reference: str, **alloc) -> pd.DataFrame:
    """Agreement of each method's block influence matrix with ``reference``'s.

    Args:
        matrices: ``name -> [L, n]`` block influence matrices over the same examples.
        reference: the key to compare against (e.g. the exact inverse at the same damping).
        alloc: :func:`block_allocations` keywords.

    Returns:
        One row per other key: ``pooled_pearson/spearman`` (all block x example entries),
        ``median_block_pearson/spearman`` (across examples within each block, median over
        blocks), ``scores_<aggregation>`` (Spearman across blocks of the block scores),
        ``experts_spearman``, ``experts_moved`` (:func:`expert_distance`),
        ``sparsity_max_diff`` (largest per-block difference of the sparsity allocations).
    """
    check(reference in matrices, "reference", reference, f"one of {list(matrices)}")
    ref = np.asarray(matrices[reference], dtype=np.float64)
    rows = {name: _agreement(np.asarray(m, dtype=np.float64), ref, alloc)
            for name, m in matrices.items() if name != reference}
    return pd.DataFrame(rows).T.rename_axis("method")


def bootstrap_stability(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                        aggregation: str = "positive", **alloc) -> tuple[pd.DataFrame, dict]:
    """Resample the training examples (columns) and recompute scores and allocations.

    Returns:
        ``(per_block, summary)``: per block the full-data score, experts and sparsity with
        their percentile CIs (``score_low/high``, ``sparsity_low/high``) and
        ``experts_changed`` (fraction of replicates whose expert count differs from the
        full-data one); summary: ``rank_stability`` (mean Spearman between replicates' block
        scores, over consecutive pairs), ``rank_vs_full`` (mean Spearman replicate vs full),
        ``experts_moved`` (mean :func:`expert_distance` to the full-data allocation),
        ``n_boot``.
    """
    arr = np.asarray(values, dtype=np.float64)
    full = block_scores(arr, aggregation)
    e_full, s_full = block_allocations(full, **alloc)
    reps_s, reps_e, reps_p = [], [], []
    for idx in stats.bootstrap_indices(arr.shape[1], n_boot, seed):
        s = block_scores(arr[:, idx], aggregation)
        e, p = block_allocations(s, **alloc)
        reps_s.append(s.to_numpy()), reps_e.append(e.to_numpy()), reps_p.append(p.to_numpy())
    rs, re_, rp = np.array(reps_s), np.array(reps_e), np.array(reps_p)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    per_block = pd.DataFrame({
        "score": full, "score_low": np.quantile(rs, lo, axis=0),
        "score_high": np.quantile(rs, hi, axis=0), "experts": e_full,
        "experts_changed": (re_ != e_full.to_numpy()).mean(axis=0), "sparsity": s_full,
        "sparsity_low": np.quantile(rp, lo, axis=0), "sparsity_high": np.quantile(rp, hi, axis=0),
    })
    pairs = row_spearman(rs[:-1], rs[1:]) if len(rs) > 1 else np.array([])
    summary = {"rank_stability": float(np.nanmean(pairs)) if pairs.size else np.nan,
               "rank_vs_full": float(np.nanmean(row_spearman(rs, full.to_numpy()))),
               "experts_moved": float(np.mean([expert_distance(e, e_full) for e in re_])),
               "n_boot": int(n_boot)}
    return per_block, summary


def subset_stability(scores: dict, **alloc) -> dict:
    """Agreement between block scores computed on disjoint validation subsets.

    Args:
        scores: ``subset name -> block score Series`` (same blocks).

    Returns:
        ``mean/min/max_pairwise_spearman`` of the scores, ``mean_experts_moved`` between the
        subsets' expert allocations, ``mean_sparsity_max_diff``, ``n_subsets``.
    """
    check(len(scores) >= 2, "scores", f"{len(scores)} subsets", "at least 2 subsets")
    allocs = {k: block_allocations(s, **alloc) for k, s in scores.items()}
    rho, moved, diff = [], [], []
    for a, b in itertools.combinations(scores, 2):
        rho.append(correlations(scores[a], scores[b])["spearman"])
        moved.append(expert_distance(allocs[a][0], allocs[b][0]))
        diff.append(float(np.abs(allocs[a][1] - allocs[b][1]).max()))
    return {"mean_pairwise_spearman": float(np.nanmean(rho)),
            "min_pairwise_spearman": float(np.nanmin(rho)),
            "max_pairwise_spearman": float(np.nanmax(rho)),
            "mean_experts_moved": float(np.mean(moved)),
            "mean_sparsity_max_diff": float(np.mean(diff)), "n_subsets": len(scores)}


def sweep_table(scores: dict, **alloc) -> pd.DataFrame:
    """Block scores at several training-set sizes against the largest.

    Args:
        scores: ``n_train -> block score Series``.

    Returns:
        One row per smaller ``n_train``: ``spearman`` of the scores, ``experts_spearman``,
        ``experts_moved`` and ``sparsity_max_diff`` against the largest size's allocation.
    """
    largest = max(scores)
    e_ref, s_ref = block_allocations(scores[largest], **alloc)
    rows = {}
    for n in sorted(scores):
        e, s = block_allocations(scores[n], **alloc)
        rows[n] = {"spearman": correlations(scores[n], scores[largest])["spearman"],
                   "experts_spearman": correlations(e, e_ref)["spearman"],
                   "experts_moved": expert_distance(e, e_ref),
                   "sparsity_max_diff": float(np.abs(s - s_ref).max()), "reference_n": largest}
    return pd.DataFrame(rows).T.rename_axis("n_train")


def loo_table(actual, predicted: dict, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Leave-one-out ground truth against predictions.

    Args:
        actual: ``[seeds, k]`` change of the validation loss when each of k examples is left
            out (retrained without it minus retrained with all), one row per seed.
        predicted: ``name -> [k]`` or ``[seeds, k]`` predicted change (same sign convention:
            positive = leaving the example out raises the validation loss).

    Returns:
        One row per predictor: ``spearman`` with its bootstrap CI over examples
        (``ci_low/high``, :func:`layerif.stats.spearman_ci`), ``pearson``, both computed
        against the seed-mean change, and ``spearman_per_seed`` (mean over seeds of the
        per-seed Spearman, each seed's prediction against its own retraining).
    """
    act = np.atleast_2d(np.asarray(actual, dtype=np.float64))
    mean = act.mean(axis=0)
    rows = {}
    for name, pred in predicted.items():
        p = np.atleast_2d(np.asarray(pred, dtype=np.float64))
        p_mean = p.mean(axis=0)
        r = stats.spearman_ci(p_mean, mean, n_boot=n_boot, seed=seed)
        per_seed = [correlations(p[min(i, len(p) - 1)], act[i])["spearman"] for i in range(len(act))]
        rows[name] = {"spearman": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high,
                      "pearson": correlations(p_mean, mean)["pearson"],
                      "spearman_per_seed": float(np.nanmean(per_seed)), "n": len(mean)}
    return pd.DataFrame(rows).T.rename_axis("predictor")


def gain_table(gains: pd.Series, scores: pd.DataFrame, n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """Spearman across blocks between the validation-loss gain of training a block alone and
    ``|S_l|``, per score column, with a bootstrap CI over blocks.

    Args:
        gains: gain per block (loss before minus after), indexed by layer.
        scores: block scores, index layer (a superset of ``gains``'), one column per
            (method, aggregation).
    """
    rows = {}
    for col in scores.columns:
        s = scores[col].reindex(gains.index).abs()
        r = stats.spearman_ci(s.to_numpy(), gains.to_numpy(), n_boot=n_boot, seed=seed)
        rows[col] = {"spearman": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "pvalue": r.pvalue, "n_blocks": r.n}
    frame = pd.DataFrame(rows).T
    frame.index = pd.MultiIndex.from_tuples(frame.index) if isinstance(frame.index[0], tuple) \
        else frame.index
    return frame


def retraining_noise(actual) -> dict:
    """How reproducible leave-one-out changes are across seeds (``[seeds, k]``).

    Returns:
        ``seed_spearman``: mean Spearman between every two seeds' changes (``nan`` with one
        seed); ``noise_to_signal``: the mean over examples of the across-seed standard
        deviation, over the across-example standard deviation of the seed means.
    """
    act = np.atleast_2d(np.asarray(actual, dtype=np.float64))
    pairs = [correlations(a, b)["spearman"] for a, b in itertools.combinations(act, 2)]
    spread = act.mean(axis=0).std(ddof=1)
    noise = act.std(axis=0, ddof=1).mean() if len(act) > 1 else np.nan
    return {"seed_spearman": float(np.nanmean(pairs)) if pairs else np.nan,
            "noise_to_signal": float(noise / spread) if spread > 0 else np.nan}
