"""Sparsity per block for pruning (notebook 04): LayerIF raw and smoothed, AlphaPruning, OWL
and uniform at one global target, from the pruning pool's saved DataInf scores."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import allocate, baselines, plots, store
from ..models import describe, load_model
from ..notebook_params import load_options
from .allocation import EPSILON, block_alpha, outlier_ratios
from .prose import bullets
from .scoring import POOL, fingerprint, load_scores

__all__ = ["CHECKS", "NOTEBOOK", "Sparsity", "check_line", "checks", "conclusion", "figures", "global_sparsity", "run",
           "sparsity_allocations", "spread", "study_sparsity", "summary", "verdicts"]

NOTEBOOK = "04_sparsity_allocation"
CHECKS = ["global sparsity", "mean sparsity"]   # the columns beside the blocks' ratios


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


def study_sparsity(results: str | Path, model_name: str, label: str, target: float = 0.5,
                   calibration=(32, 256), aggregation: str = "positive", overwrite: bool = False,
                   device: str = "auto", load_kwargs: dict | None = None) -> pd.DataFrame:
    """Notebook 04: :func:`sparsity_allocations` from the pool's saved DataInf scores.

    Returns the allocations (index pruner, allocation; columns = layers) with two extra
    columns: ``global sparsity`` (parameter-weighted) and ``mean sparsity`` (unweighted).
    ``load_kwargs``: more arguments of :func:`layerif.load_model` (the model's ``dtype``).
    """
    config = {"target": float(target), "calibration": list(calibration),
              "aggregation": aggregation, "epsilon": EPSILON, "owl_lambda": 0.08, "owl_M": 5.0}
    ident = store.identity("sparsity_allocation", config, model_name,
                           {"scores": fingerprint(results, model_name, [label])},
                           dtype=(load_kwargs or {}).get("dtype"))

    def compute():
        model, tokenizer = load_model(model_name, device=device, **(load_kwargs or {}))
        n_params = describe(model)["linear_params"]
        scores = load_scores(results, model_name, label, "datainf").aggregate(aggregation)
        frame = sparsity_allocations(scores, block_alpha(model, results),
                                     outlier_ratios(model, tokenizer, results, *calibration),
                                     n_params, target)
        frame["global sparsity"] = global_sparsity(frame, n_params)
        frame["mean sparsity"] = frame[list(scores.index)].mean(axis=1)
        return frame

    folder = Path(results) / "allocations" / store.slug(model_name) / f"sparsity-{target:g}"
    return store.cached(folder, ident, compute, overwrite=overwrite)


# ------------------------------------------------------------------ notebook 04

@dataclass(frozen=True)
class Sparsity:
    """What notebook 04 shows: per model, :func:`study_sparsity` at ``target``."""

    ratios: dict
    target: float


def run(params: dict, profile: str = "smoke", results=None) -> Sparsity:
    """Notebook 04: every model's sparsity allocations from the pool's saved scores."""
    results = Path(results or store.results_dir(profile))
    return Sparsity({m: study_sparsity(results, m, POOL, params["target"], params["calibration"],
                                       load_kwargs=load_options(params))
                     for m in params["models"]}, params["target"])


def checks(result: Sparsity) -> pd.DataFrame:
    """Global (parameter-weighted) and mean sparsity of every allocation, index (model,
    allocation), columns (check, pruner)."""
    frame = pd.concat({m: r[CHECKS] for m, r in result.ratios.items()}, names=["model"])
    return frame.unstack("pruner")


def _blocks(ratios: pd.DataFrame) -> pd.DataFrame:
    return ratios.drop(columns=CHECKS)


def figures(result: Sparsity, pruners=("wanda", "magnitude")) -> list:
    """Sparsity per block of every allocation, one plot per model and pruner."""
    return [plots.layer_lines(_blocks(r.xs(p, level="pruner")).T, ylabel="sparsity",
                              title=f"{m} · {p}: sparsity per block at {result.target:.0%}")
            for m, r in result.ratios.items() for p in pruners]


def spread(result: Sparsity) -> pd.DataFrame:
    """Smallest and largest ratio of every allocation, index (model, pruner, allocation)."""
    return pd.concat({m: _blocks(r).agg(["min", "max"], axis=1) for m, r in result.ratios.items()},
                     names=["model"])


def summary(result: Sparsity) -> str:
    """What the numbers say: per model, where LayerIF (Wanda) prunes most and least, its rank
    agreement with AlphaPruning and OWL, and how much smoothing moves the raw ratios."""
    lines = []
    for m, r in result.ratios.items():
        w = _blocks(r.xs("wanda", level="pruner"))
        lif, raw = w.loc["LayerIF"], w.loc["LayerIF (raw)"]
        lines.append(
            f"{m} (Wanda, {result.target:.0%}): LayerIF prunes blocks {lif.idxmax()} most "
            f"({lif.max():.3f}) and {lif.idxmin()} least ({lif.min():.3f}); Spearman with "
            f"AlphaPruning {lif.corr(w.loc['AlphaPruning'], method='spearman'):.2f}, with OWL "
            f"{lif.corr(w.loc['OWL'], method='spearman'):.2f}; smoothing changes the raw ratios "
            f"by {(lif - raw).abs().mean():.3f} on average.")
    return "\n".join(lines)


def conclusion(result: Sparsity):
    """:func:`summary` as rendered Markdown."""
    return bullets(summary(result))


def check_line(result: Sparsity, tolerance: float = 1e-6) -> str:
    """One line: does every allocation's parameter-weighted sparsity equal the target?"""
    frame = checks(result)["global sparsity"]
    worst = float((frame - result.target).abs().max().max())
    return (f"{frame.size} allocations; parameter-weighted sparsity equals the target "
            f"{result.target:g} within {tolerance:g}: {worst <= tolerance}")


def verdicts(result: Sparsity, level: float = 0.05) -> list:
    """Notebook 04 decides no claim (its allocations are tested in notebooks 05, 07, 08)."""
    return []
