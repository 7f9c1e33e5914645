"""Experts per block (notebook 02) and sparsity per block (notebook 04), LayerIF and baselines.

Model-only inputs that take minutes (PL_Alpha_Hill per block, OWL's outlier ratios) are
computed once per model and saved under ``<results>/model_stats/<model>/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import allocate, baselines, store
from ..data import calibration_tokens
from ..models import describe, load_model, model_id
from ..prune import owl_outlier_ratios
from .cache import cached_frame, slug
from .scoring import aggregated_scores, fingerprint, load_scores

__all__ = ["AGGREGATION_LABELS", "EPSILON", "allocation_distances", "beta_sweep", "block_alpha",
           "expert_allocations", "global_sparsity", "outlier_ratios", "sparsity_allocations",
           "distance_summary", "fig4_rows", "mola_for", "study_experts", "study_sparsity"]

AGGREGATION_LABELS = {"positive": "LayerIF +ve", "top": "LayerIF Top 25%", "all": "LayerIF All"}
# The authors' band half-widths: LayerIF (their scripts), AlphaPruning (its scripts).
EPSILON = {"layerif": {"magnitude": 0.3, "wanda": 0.1, "sparsegpt": 0.1},
           "alphapruning": {"magnitude": 0.3, "wanda": 0.2, "sparsegpt": 0.2}}
# MoLA's patterns by experts per block (the paper's 80 / 160 / 224 on 32 blocks).
MOLA = {2.5: ("1234",), 5.0: ("2468", "5555", "8642"), 7.0: ("46810",)}


def block_alpha(model, results: str | Path, overwrite: bool = False) -> pd.Series:
    """PL_Alpha_Hill per block (AlphaLoRA, AlphaPruning), computed once per model."""
    ident = store.identity("block_alpha", {"fit": "peak", "bins": 100}, model_id(model), {})
    return cached_frame(Path(results) / "model_stats" / slug(model_id(model)) / "alpha", ident,
                        lambda: baselines.alpha_hill(model, fit="peak"), overwrite)


def outlier_ratios(model, tokenizer, results: str | Path, n_samples: int, seq_len: int,
                   M: float = 5.0, overwrite: bool = False) -> pd.Series:
    """OWL's outlier ratio per block on BoolQ-passage calibration text, computed once."""
    config = {"M": M, "n_samples": n_samples, "seq_len": seq_len, "seed": 0}
    ident = store.identity("owl_outlier_ratio", config, model_id(model),
                           {"calibration": "boolq passages (layerif.data.calibration_tokens)"})
    return cached_frame(
        Path(results) / "model_stats" / slug(model_id(model)) / f"owl-{n_samples}x{seq_len}-M{M:g}",
        ident, lambda: owl_outlier_ratios(model, calibration_tokens(tokenizer, n_samples, seq_len),
                                          M=M), overwrite)


def mola_for(per_block: float, n_layers: int) -> dict[str, pd.Series]:
    """MoLA's patterns for a per-block budget (none for budgets the paper did not pair)."""
    return {f"MoLA {p}": baselines.mola(p, n_layers) for p in MOLA.get(float(per_block), ())}


def expert_allocations(scores: pd.DataFrame, alpha: pd.Series, per_block=(2.5, 5.0, 7.0),
                       beta: float = 2.5) -> pd.DataFrame:
    """Experts per block for every method, task and budget.

    Args:
        scores: block scores indexed by (task, aggregation), columns = layers.
        alpha: PL_Alpha_Hill per block (AlphaLoRA).
        per_block: average experts per block; the total is ``round(per_block * L)``.
        beta: the exponent of LayerIF's and AlphaLoRA's mapping.

    Returns:
        Index (method, task, per_block) -- task ``"(model only)"`` for AlphaLoRA and MoLA --
        columns = layers, plus ``total``.
    """
    layers = scores.columns
    rows = {}
    for pb in per_block:
        total = int(round(pb * len(layers)))
        for (task, agg), s in scores.iterrows():
            rows[(AGGREGATION_LABELS[agg], task, pb)] = allocate.experts(s, total, beta)
        rows[("AlphaLoRA", "(model only)", pb)] = baselines.alphalora(alpha, total, beta)
        for name, n in mola_for(pb, len(layers)).items():
            rows[(name, "(model only)", pb)] = n
    frame = pd.DataFrame({k: v.to_numpy() for k, v in rows.items()}, index=layers).T
    frame.index.names = ["method", "task", "per_block"]
    frame.columns.name = "layer"
    frame["total"] = frame.sum(axis=1)
    return frame


def beta_sweep(scores: pd.Series, total: int, betas=(1.0, 2.0, 2.5, 3.0, 5.0)) -> pd.DataFrame:
    """Experts per block of one score vector for several exponents: index beta, columns layers."""
    frame = pd.DataFrame({b: allocate.experts(scores, total, b) for b in betas}).T
    frame.index.name, frame.columns.name = "beta", "layer"
    return frame


def allocation_distances(allocations: pd.DataFrame) -> pd.DataFrame:
    """Pairwise differences between allocations (rows): mean |difference| per block."""
    values = allocations.to_numpy(dtype=float)
    diff = np.abs(values[:, None, :] - values[None, :, :]).mean(axis=2)
    return pd.DataFrame(diff, index=allocations.index, columns=allocations.index)


def sparsity_allocations(scores: pd.Series, alpha: pd.Series, outliers: pd.Series, n_params,
                         target: float = 0.5, owl_lambda: float = 0.08) -> pd.DataFrame:
    """Sparsity per block for each pruner and allocation at ``target``.

    LayerIF raw and smoothed (Savitzky--Golay, window 7, order 3) with the authors' ``eps``
    per pruner (:data:`EPSILON`), AlphaPruning with its own ``eps``, OWL (``lambda``,
    pruner-independent) and uniform. Index (pruner, allocation), columns = layers.
    """
    rows = {}
    for pruner in EPSILON["layerif"]:
        eps, eps_alpha = EPSILON["layerif"][pruner], EPSILON["alphapruning"][pruner]
        rows[(pruner, "Uniform")] = allocate.uniform_sparsity(scores.index, target)
        rows[(pruner, "AlphaPruning")] = baselines.alphapruning_sparsity(alpha, target, n_params,
                                                                         eps_alpha)
        rows[(pruner, "OWL")] = baselines.owl_sparsity(outliers, target, owl_lambda)
        rows[(pruner, "LayerIF (raw)")] = allocate.sparsity(scores, target, n_params, eps,
                                                            smooth=False)
        rows[(pruner, "LayerIF")] = allocate.sparsity(scores, target, n_params, eps, smooth=True)
    frame = pd.DataFrame({k: v.to_numpy() for k, v in rows.items()}, index=scores.index).T
    frame.index.names = ["pruner", "allocation"]
    frame.columns.name = "layer"
    return frame


def global_sparsity(allocations: pd.DataFrame, n_params: pd.Series) -> pd.Series:
    """Parameter-weighted global sparsity of each row (must equal the target)."""
    d = n_params.reindex(allocations.columns).to_numpy(dtype=float)
    return pd.Series(allocations.to_numpy(dtype=float) @ d / d.sum(), index=allocations.index,
                     name="global sparsity")


def study_experts(results: str | Path, model_name: str, labels, per_block=(2.5, 5.0, 7.0),
                  beta: float = 2.5, overwrite: bool = False, device: str = "auto") -> pd.DataFrame:
    """Notebook 02: :func:`expert_allocations` from notebook 01's saved DataInf scores.

    Saved under ``<results>/allocations/<model>/experts`` with the scores' fingerprints as
    its data identity, so new scores make it recompute (or refuse, if not ``overwrite``).
    """
    config = {"per_block": [float(p) for p in per_block], "beta": float(beta),
              "method": "datainf"}
    ident = store.identity("expert_allocation", config, model_name,
                           {"scores": fingerprint(results, model_name, labels)})

    def compute():
        model, _ = load_model(model_name, device=device)
        scores = aggregated_scores(results, model_name, labels)
        return expert_allocations(scores, block_alpha(model, results), per_block, beta)

    return cached_frame(Path(results) / "allocations" / slug(model_name) / "experts", ident, compute,
                        overwrite)


def study_sparsity(results: str | Path, model_name: str, label: str, target: float = 0.5,
                   calibration=(32, 256), aggregation: str = "positive", overwrite: bool = False,
                   device: str = "auto") -> pd.DataFrame:
    """Notebook 04: :func:`sparsity_allocations` from the pool's saved DataInf scores.

    Returns the allocations (index pruner, allocation; columns = layers) with two extra
    columns: ``global sparsity`` (parameter-weighted) and ``mean sparsity`` (unweighted).
    """
    config = {"target": float(target), "calibration": list(calibration),
              "aggregation": aggregation, "epsilon": EPSILON, "owl_lambda": 0.08, "owl_M": 5.0}
    ident = store.identity("sparsity_allocation", config, model_name,
                           {"scores": fingerprint(results, model_name, [label])})

    def compute():
        model, tokenizer = load_model(model_name, device=device)
        n_params = describe(model)["linear_params"]
        scores = load_scores(results, model_name, label, "datainf").aggregate(aggregation)
        frame = sparsity_allocations(scores, block_alpha(model, results),
                                     outlier_ratios(model, tokenizer, results, *calibration),
                                     n_params, target)
        frame["global sparsity"] = global_sparsity(frame, n_params)
        frame["mean sparsity"] = frame[list(scores.index)].mean(axis=1)
        return frame

    return cached_frame(Path(results) / "allocations" / slug(model_name) / f"sparsity-{target:g}",
                        ident, compute, overwrite)


def fig4_rows(frame: pd.DataFrame, per_block: float = 5.0,
              methods=("LayerIF +ve", "AlphaLoRA")) -> pd.DataFrame:
    """Rows of :func:`expert_allocations` for one budget, labelled ``method · task``.

    Keeps LayerIF rows of the aggregations in ``methods``, AlphaLoRA and every MoLA pattern.
    """
    rows = frame.xs(per_block, level="per_block").drop(columns="total")
    keep = [i for i in rows.index if i[0] in methods or i[0].startswith("MoLA")]
    rows = rows.loc[keep]
    rows.index = pd.Index([m if t == "(model only)" else f"{m} · {t}" for m, t in keep],
                          name="allocation")
    return rows


def distance_summary(distances: pd.DataFrame, uniform: str = "MoLA 5555") -> pd.Series:
    """From :func:`allocation_distances` of :func:`fig4_rows`: LayerIF between tasks, vs
    AlphaLoRA and vs the uniform allocation (mean |difference| in experts per block)."""
    ours = [r for r in distances.index if r.startswith("LayerIF")]
    sub = distances.loc[ours, ours].to_numpy()
    off = sub[~np.eye(len(ours), dtype=bool)]
    return pd.Series({
        "LayerIF between tasks": off.mean() if off.size else np.nan,
        "LayerIF vs AlphaLoRA": distances.loc[ours, "AlphaLoRA"].mean(),
        f"LayerIF vs uniform ({uniform})": (distances.loc[ours, uniform].mean()
                                            if uniform in distances else np.nan),
    }, name="mean |difference| (experts per block)")
