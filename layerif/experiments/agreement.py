"""Table 3: do Hessian-free (TracIn-style) and DataInf scores give the same expert allocation?

Per task, both methods' influence matrices come from the same gradient passes on the same
examples (notebook 01). The statistic is the Spearman correlation across blocks between the
two expert allocations (the paper's Table 3); its confidence interval resamples the *training
examples* (the same resample for both methods), recomputing scores and allocations each time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .. import allocate, stats, store
from ..scores import LayerScores, aggregate_values
from .cache import cached_frame, slug
from .scoring import fingerprint, load_scores

__all__ = ["agreement_table", "allocation_agreement", "study_agreement"]


def _experts(block_values: np.ndarray, columns, index, total: int, beta: float, mode: str):
    s = aggregate_values(torch.from_numpy(block_values[:, columns]), mode).numpy()
    return allocate.experts(pd.Series(s, index=index), total, beta).to_numpy()


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant allocation has no rank order
    return float(spearmanr(a, b).statistic)


def allocation_agreement(datainf: LayerScores, hessian_free: LayerScores, per_block: float = 5.0,
                         beta: float = 2.5, aggregation: str = "positive", n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict:
    """Spearman between the two methods' expert allocations, with a bootstrap CI.

    Both results must cover the same training examples in the same order.

    Returns:
        A dict: ``spearman`` (allocations), ``ci_low``, ``ci_high``, ``n_boot_used`` (a
        replicate where an allocation is constant is dropped), ``spearman_scores`` (the raw
        block scores), ``n_train``, ``total``.
    """
    if datainf.train_ids != hessian_free.train_ids:
        raise ValueError("datainf and hessian_free scores cover different training examples")
    a, b = datainf.per_block(), hessian_free.per_block()
    total = int(round(per_block * len(a)))
    va, vb = a.to_numpy(), b.to_numpy()
    everything = np.arange(va.shape[1])
    ea = _experts(va, everything, a.index, total, beta, aggregation)
    eb = _experts(vb, everything, b.index, total, beta, aggregation)
    reps = np.array([_rho(_experts(va, idx, a.index, total, beta, aggregation),
                          _experts(vb, idx, b.index, total, beta, aggregation))
                     for idx in stats.bootstrap_indices(va.shape[1], n_boot, seed)])
    reps = reps[np.isfinite(reps)]
    lo, hi = stats.percentile_ci(reps, level) if len(reps) >= 10 else (np.nan, np.nan)
    return {"spearman": _rho(ea, eb), "ci_low": lo, "ci_high": hi, "n_boot_used": len(reps),
            "spearman_scores": _rho(datainf.aggregate(aggregation).to_numpy(),
                                    hessian_free.aggregate(aggregation).to_numpy()),
            "n_train": va.shape[1], "total": total}


def agreement_table(pairs: dict, **kwargs) -> pd.DataFrame:
    """:func:`allocation_agreement` for each ``task -> (datainf, hessian_free)``; index task."""
    rows = {task: allocation_agreement(di, hf, **kwargs) for task, (di, hf) in pairs.items()}
    frame = pd.DataFrame(rows).T.astype(float)
    frame.index.name = "task"
    frame[["n_boot_used", "n_train", "total"]] = frame[["n_boot_used", "n_train", "total"]].astype(int)
    return frame


def study_agreement(results, model_name: str, labels, per_block: float = 5.0, beta: float = 2.5,
                    n_boot: int = 1000, overwrite: bool = False) -> pd.DataFrame:
    """Notebook 06: :func:`agreement_table` from notebook 01's saved scores, saved itself."""
    config = {"per_block": float(per_block), "beta": float(beta), "n_boot": int(n_boot),
              "aggregation": "positive", "seed": 0}
    ident = store.identity("hessian_free_agreement", config, model_name,
                           {"scores": fingerprint(results, model_name, labels,
                                                  ("datainf", "hessian_free"))})

    def compute():
        pairs = {label: (load_scores(results, model_name, label, "datainf"),
                         load_scores(results, model_name, label, "hessian_free"))
                 for label in labels}
        return agreement_table(pairs, per_block=per_block, beta=beta, n_boot=n_boot)

    return cached_frame(Path(results) / "agreement" / slug(model_name), ident, compute, overwrite)
