"""Notebook 08: one score per block or one per matrix (paper §5), and the aggregation.

:func:`run` scores the pool on all seven linear matrices of each model (once), then prunes
and evaluates (or loads) LayerIF per block and per matrix from those same scores, and Wanda
under the three aggregations; :func:`summary` says what the numbers say and :func:`verdicts`
decides §5's claim with the pruners' examples pooled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import paper, plots, store
from . import pruning, pruning_tables as tables
from .pruning import DENSE, PruningRun, Setting
from .scoring import POOL
from .verdict import Verdict

__all__ = ["LABEL", "NOTEBOOK", "GranularityStudy", "aggregation_table", "block_vs_matrix", "figures",
           "run", "settings", "summary", "verdicts"]

NOTEBOOK = "08_ablation_granularity"
LABEL = f"{POOL}--all-linear"  # the pool's scores of all seven matrices, beside notebook 01's
AGGREGATIONS = ("positive", "top", "all")


@dataclass(frozen=True)
class GranularityStudy:
    """What notebook 08 shows; every dict is keyed by model name. ``score_runs``: the
    all-matrix scores (:func:`~.scoring.score_tasks`' rows); ``granularity`` and
    ``aggregations``: :mod:`.pruning_tables`' tables; ``ratios``: the last pruner's
    sparsity per matrix type (layer x module) and per block."""

    params: dict
    sizes: str
    evals: dict
    log: pd.DataFrame
    score_runs: pd.DataFrame
    granularity: dict
    ratios: dict
    aggregations: dict


def settings(params: dict) -> list[Setting]:
    """The dense model, LayerIF per block and per matrix for every pruner at ``sparsity``, and
    the aggregations (and Uniform) of ``aggregation_method`` at ``aggregation_sparsity``."""
    sp, method, agg_sp = params["sparsity"], params["aggregation_method"], params["aggregation_sparsity"]
    out = [Setting(DENSE)]
    out += [Setting(m, "LayerIF", sp, scores=LABEL, granularity=g)
            for m in params["methods"] for g in ("block", "matrix")]
    out += [Setting(method, "LayerIF", agg_sp, aggregation=a) for a in AGGREGATIONS]
    return out + [Setting(method, "Uniform", agg_sp)]


def _ratios(run: PruningRun, params: dict) -> pd.DataFrame:
    setting = Setting(params["methods"][-1], "LayerIF", params["sparsity"], scores=LABEL)
    block, _ = run.ratios(setting)
    matrix = run.matrix_ratios(dataclasses.replace(setting, granularity="matrix"))
    return matrix.assign(**{"per block": block})


def run(params: dict, profile: str = "smoke", results=None) -> GranularityStudy:
    """Notebook 08's work for its parameters (``results``: the profile's folder by default)."""
    results = Path(results or store.results_dir(profile))
    scored = {m: pruning.score_for_pruning(results, m, [POOL], modules="all", tag="all-linear", **size)
              for m, size in params["scores"].items()}
    runs, evals = pruning.evaluate_models(results, params, list(params["scores"]), lambda _: settings(params))
    return GranularityStudy(
        params, pruning.sizes(params), evals, pruning.log(runs),
        tables.by_model(scored).drop(columns="path"),
        {m: tables.granularity_table(e, params["sparsity"], params["methods"], scores=LABEL)
         for m, e in evals.items()},
        {m: _ratios(r, params) for m, r in runs.items()},
        {m: tables.aggregation_table(e, params["aggregation_method"], params["aggregation_sparsity"])
         for m, e in evals.items()})


def block_vs_matrix(result: GranularityStudy) -> pd.DataFrame:
    """Per pruner: average accuracy per block and per matrix, McNemar, perplexities, margin."""
    return tables.by_model(result.granularity).round(4)


def figures(result: GranularityStudy) -> list:
    """Per model: the last pruner's sparsity per matrix type across depth, and per block."""
    method, sp = result.params["methods"][-1], result.params["sparsity"]
    return [plots.layer_lines(table, title=f"{model} · {method} {sp:.0%}: sparsity per matrix type",
                              ylabel="sparsity") for model, table in result.ratios.items()]


def aggregation_table(result: GranularityStudy) -> pd.DataFrame:
    """LayerIF's three aggregations and Uniform: accuracy, margin, perplexity, vs "+ve"."""
    return tables.by_model(result.aggregations).round(4)


def _lines(granularity: pd.DataFrame, aggregations: pd.DataFrame, level: float) -> list[str]:
    mean = granularity["% change (block vs matrix)"].mean()
    sig = int((granularity["McNemar p"] < level).sum())
    ppl = int((granularity["perplexity per block"] < granularity["perplexity per matrix"]).sum())
    best = aggregations.drop(index="Uniform")["average accuracy"].idxmax()
    low = aggregations["McNemar p vs +ve"].drop(index="LayerIF (positive)").min()
    perplexities = ", ".join(f"{k}: {v:.1f}" for k, v in aggregations["perplexity"].items())
    return [f"Per block vs per matrix: {mean:+.2f}% average accuracy (paper: "
            f"+{paper.claims('sec5_per_block')[0]['value']}%), significant for {sig} of "
            f"{len(granularity)} pruners; per block has the lower perplexity for {ppl} of {len(granularity)}.",
            f"Aggregations: the highest average accuracy is {best}; differences to +ve have McNemar p "
            f"from {low:.3g} upward, perplexities {perplexities}."]


def summary(result: GranularityStudy, level: float = 0.05) -> str:
    """What the numbers say, one bullet per finding and model."""
    return "\n".join(f"• {model}: {line}" for model, g in result.granularity.items()
                     for line in _lines(g, result.aggregations[model], level))


def verdicts(result: GranularityStudy, level: float = 0.05) -> list[Verdict]:
    """§5: per-block scores beat per-matrix ones, the pruners' examples pooled."""
    sp, methods, rows = result.params["sparsity"], result.params["methods"], []
    claim = paper.claims("sec5_per_block")[0]
    for model, evals in result.evals.items():
        block, matrix = ([evals[Setting(m, "LayerIF", sp, scores=LABEL, granularity=g)] for m in methods]
                         for g in ("block", "matrix"))
        rows.append(tables.paired_verdict(
            f"per-block scores beat per-matrix scores ({sp:.0%})", model, "Sec. 5 (per matrix vs per block)",
            f"+{claim['value']}% accuracy ({paper.entry('sec5_per_block')['model']})",
            block, matrix, methods, NOTEBOOK, level))
    return rows
