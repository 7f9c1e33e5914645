"""Experts per block for LoRA-MoE (notebook 02), LayerIF and baselines, and the model-only
inputs the allocations share (:mod:`.sparsity`, notebook 04, and the pruning notebooks).

Model-only inputs that take minutes (PL_Alpha_Hill per block, OWL's outlier ratios) are
computed once per model and saved under ``<results>/model_stats/<model>/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import allocate, baselines, plots, store
from ..data import calibration_tokens
from ..models import load_model, model_id
from ..notebook_params import load_options
from ..prune import owl_outlier_ratios
from .prose import bullets
from .scoring import aggregated_scores, fingerprint, load_scores

__all__ = ["AGGREGATION_LABELS", "BETAS", "EPSILON", "NOTEBOOK", "Experts", "allocation_distances",
           "beta_sweep", "block_alpha", "conclusion", "distance_figures", "distance_summary", "distance_table", "distances_summary",
           "expert_allocations", "fig4_figures", "fig4_rows", "mola_for", "outlier_ratios", "run",
           "study_experts", "sweep_figures", "sweep_range", "totals", "verdicts"]

NOTEBOOK = "02_expert_allocation"
BETAS = (1.0, 2.0, 2.5, 3.0, 5.0)  # the beta sweep's exponents

AGGREGATION_LABELS = {"positive": "LayerIF +ve", "top": "LayerIF Top 25%", "all": "LayerIF All"}
# The authors' band half-widths: LayerIF (their scripts), AlphaPruning (its scripts).
EPSILON = {"layerif": {"magnitude": 0.3, "wanda": 0.1, "sparsegpt": 0.1},
           "alphapruning": {"magnitude": 0.3, "wanda": 0.2, "sparsegpt": 0.2}}
# MoLA's patterns by experts per block (the paper's 80 / 160 / 224 on 32 blocks).
MOLA = {2.5: ("1234",), 5.0: ("2468", "5555", "8642"), 7.0: ("46810",)}


def _stats_dir(results, model) -> Path:
    return Path(results) / "model_stats" / store.slug(model_id(model))


def block_alpha(model, results: str | Path, overwrite: bool = False) -> pd.Series:
    """PL_Alpha_Hill per block (AlphaLoRA, AlphaPruning), computed once per model."""
    ident = store.identity("block_alpha", {"fit": "peak", "bins": 100}, model_id(model), {},
                           dtype=model.dtype)
    return store.cached(_stats_dir(results, model) / "alpha", ident,
                        lambda: baselines.alpha_hill(model, fit="peak"), overwrite=overwrite)


def outlier_ratios(model, tokenizer, results: str | Path, n_samples: int, seq_len: int,
                   M: float = 5.0, overwrite: bool = False) -> pd.Series:
    """OWL's outlier ratio per block on BoolQ-passage calibration text, computed once."""
    config = {"M": M, "n_samples": n_samples, "seq_len": seq_len, "seed": 0}
    ident = store.identity("owl_outlier_ratio", config, model_id(model),
                           {"calibration": "boolq passages (layerif.data.calibration_tokens)"},
                           dtype=model.dtype)
    return store.cached(
        _stats_dir(results, model) / f"owl-{n_samples}x{seq_len}-M{M:g}",
        ident, lambda: owl_outlier_ratios(model, calibration_tokens(tokenizer, n_samples, seq_len),
                                          M=M), overwrite=overwrite)


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


def beta_sweep(scores: pd.Series, total: int, betas=BETAS) -> pd.DataFrame:
    """Experts per block of one score vector for several exponents: index beta, columns layers."""
    frame = pd.DataFrame({b: allocate.experts(scores, total, b) for b in betas}).T
    frame.index.name, frame.columns.name = "beta", "layer"
    return frame


def allocation_distances(allocations: pd.DataFrame) -> pd.DataFrame:
    """Pairwise differences between allocations (rows): mean |difference| per block."""
    values = allocations.to_numpy(dtype=float)
    diff = np.abs(values[:, None, :] - values[None, :, :]).mean(axis=2)
    return pd.DataFrame(diff, index=allocations.index, columns=allocations.index)


def study_experts(results: str | Path, model_name: str, labels, per_block=(2.5, 5.0, 7.0),
                  beta: float = 2.5, overwrite: bool = False, device: str = "auto",
                  load_kwargs: dict | None = None) -> pd.DataFrame:
    """Notebook 02: :func:`expert_allocations` from notebook 01's saved DataInf scores.

    Saved under ``<results>/allocations/<model>/experts`` with the scores' fingerprints as
    its data identity, so new scores make it recompute (or refuse, if not ``overwrite``).
    ``load_kwargs``: more arguments of :func:`layerif.load_model` (the model's ``dtype``).
    """
    config = {"per_block": [float(p) for p in per_block], "beta": float(beta),
              "method": "datainf"}
    ident = store.identity("expert_allocation", config, model_name,
                           {"scores": fingerprint(results, model_name, labels)},
                           dtype=(load_kwargs or {}).get("dtype"))

    def compute():
        model, _ = load_model(model_name, device=device, **(load_kwargs or {}))
        scores = aggregated_scores(results, model_name, labels)
        return expert_allocations(scores, block_alpha(model, results), per_block, beta)

    return store.cached(Path(results) / "allocations" / store.slug(model_name) / "experts", ident,
                        compute, overwrite=overwrite)


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


# ------------------------------------------------------------------ notebook 02

@dataclass(frozen=True)
class Experts:
    """What notebook 02 shows, per model: :func:`study_experts`, the distances between the
    allocations at 5 per block (:func:`fig4_rows`), and the first task's beta sweep."""

    experts: dict
    distances: dict
    sweeps: dict
    first_task: str


def run(params: dict, profile: str = "smoke", results=None) -> Experts:
    """Notebook 02: experts per block of every model and budget from notebook 01's scores."""
    results = Path(results or store.results_dir(profile))
    tasks, models = params["tasks"], params["models"]
    experts = {m: study_experts(results, m, tasks, params.get("per_block", (2.5, 5.0, 7.0)),
                                params.get("beta", 2.5), load_kwargs=load_options(params))
               for m in models}
    scores = {m: load_scores(results, m, tasks[0], "datainf").aggregate("positive") for m in models}
    return Experts(experts, {m: allocation_distances(fig4_rows(f)) for m, f in experts.items()},
                   {m: beta_sweep(s, int(round(5.0 * len(s))), params.get("betas", BETAS))
                    for m, s in scores.items()}, tasks[0])


def totals(result: Experts) -> pd.DataFrame:
    """Experts in all of each allocation, once per distinct total: index (model, method),
    columns experts per block (every task of a method has the same total; MoLA's patterns
    exist at their own budgets only, so a MoLA row is blank at the others)."""
    frame = pd.concat(result.experts, names=["model"])["total"]
    frame = frame.groupby(["model", "method", "per_block"]).agg(["min", "max"])
    if not (frame["min"] == frame["max"]).all():
        raise ValueError("totals are invalid: tasks of one method differ in their total")
    out = frame["min"].unstack("per_block")
    out.columns = [f"{c:g} per block" for c in out.columns]
    return out.astype("Int64")


def fig4_figures(result: Experts) -> list:
    """Fig. 4: every allocation at 5 experts per block, one heatmap per model."""
    return [plots.heatmap(fig4_rows(f), title=f"{m}: experts per block (5 / block)",
                          cbar_label="experts", annotate=True, fmt=".0f")
            for m, f in result.experts.items()]


def distance_table(result: Experts) -> pd.DataFrame:
    """:func:`allocation_distances` of every model, index (model, allocation)."""
    return pd.concat(result.distances, names=["model"])


def distance_figures(result: Experts) -> list:
    """:func:`allocation_distances` at 5 experts per block as an annotated heatmap per model."""
    return [plots.heatmap(d, title=f"{m}: mean |difference| in experts per block",
                          cbar_label="experts per block", annotate=True, fmt=".1f",
                          cmap="viridis", xlabel="", ylabel="")
            for m, d in result.distances.items()]


def sweep_figures(result: Experts) -> list:
    """The first task's experts per block by beta, one step plot per model."""
    return [plots.layer_lines(s.T, title=f"{m} · {result.first_task}: experts per block by β",
                              ylabel="experts", kind="step") for m, s in result.sweeps.items()]


def sweep_range(result: Experts) -> pd.DataFrame:
    """Fewest and most experts of a block for each beta, index (model, beta)."""
    return pd.concat({m: s.agg(["min", "max"], axis=1) for m, s in result.sweeps.items()},
                     names=["model"])


def distances_summary(result: Experts) -> pd.DataFrame:
    """:func:`distance_summary` of every model, one row each."""
    return pd.DataFrame({m: distance_summary(d) for m, d in result.distances.items()}).T


def conclusion(result: Experts):
    """What the numbers say, per model: how far apart the tasks' allocations are, beside
    AlphaLoRA and the uniform allocation (mean |difference| in experts per block)."""
    lines = [f"{m}: LayerIF's allocations differ between tasks by {r.iloc[0]:.2f} experts per "
             f"block on average, from AlphaLoRA's by {r.iloc[1]:.2f}, from the uniform one by "
             f"{r.iloc[2]:.2f}." for m, r in distances_summary(result).iterrows()]
    return bullets(lines)


def verdicts(result: Experts, level: float = 0.05) -> list:
    """Notebook 02 decides no claim (its allocations are tested in notebook 03)."""
    return []
