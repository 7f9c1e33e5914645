"""Notebook 08: one score per block or one per matrix (paper §5), and the aggregation.

:func:`run` scores the pool on all seven linear matrices of each model (once), then prunes
and evaluates (or loads) LayerIF per block and per matrix from those same scores, and Wanda
under the three aggregations; :func:`summary` says what the numbers say and :func:`verdicts`
decides §5's claim with the pruners' examples pooled.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import paper, plots, store
from ..notebook_params import load_options
from . import pruning, pruning_tables as tables
from .pruning import DENSE, PruningRun, Setting
from .scoring import POOL
from .prose import bullets
from . import pruning_verdicts as pv
from .verdict import Verdict

__all__ = ["LABEL", "NOTEBOOK", "GranularityStudy", "aggregation_table", "block_vs_matrix", "conclusion",
           "figure_note", "figures", "run", "settings", "summary", "verdicts", "window_table"]

NOTEBOOK = "08_ablation_granularity"
LABEL = f"{POOL}--all-linear"  # the pool's scores of all seven matrices, beside notebook 01's
AGGREGATIONS = ("positive", "top", "all")


@dataclass(frozen=True)
class GranularityStudy:
    """What notebook 08 shows; every dict is keyed by model name. ``score_runs``: the
    all-matrix scores (:func:`~.scoring.score_tasks`' rows); ``granularity`` and
    ``aggregations``: :mod:`.pruning_tables`' tables; ``ratios``: the last pruner's
    sparsity per matrix type (layer x module) and per block; ``windows``: the per-block and
    per-matrix settings on the ``nll`` windows (:func:`.pruning.window_evaluations`)."""

    params: dict
    sizes: str
    evals: dict
    log: pd.DataFrame
    score_runs: pd.DataFrame
    granularity: dict
    ratios: dict
    aggregations: dict
    windows: dict


def settings(params: dict) -> list[Setting]:
    """The dense model, LayerIF per block and per matrix for every pruner at ``sparsity``, and
    the aggregations (and Uniform) of ``aggregation_method`` at ``aggregation_sparsity``."""
    sp, method, agg_sp = params["sparsity"], params["aggregation_method"], params["aggregation_sparsity"]
    out = [Setting(DENSE)]
    out += [Setting(m, "LayerIF", sp, scores=LABEL, granularity=g)
            for m in params["methods"] for g in ("block", "matrix")]
    out += [Setting(method, "LayerIF", agg_sp, aggregation=a) for a in AGGREGATIONS]
    return out + [Setting(method, "Uniform", agg_sp)]


def _granular(params: dict, granularity: str) -> list[Setting]:
    """LayerIF at ``sparsity`` from the all-matrix scores, one per pruner, at ``granularity``."""
    return [Setting(m, "LayerIF", params["sparsity"], scores=LABEL, granularity=granularity)
            for m in params["methods"]]


def _ratios(run: PruningRun, params: dict) -> pd.DataFrame:
    setting = Setting(params["methods"][-1], "LayerIF", params["sparsity"], scores=LABEL)
    block, _ = run.ratios(setting)
    matrix = run.matrix_ratios(dataclasses.replace(setting, granularity="matrix"))
    return matrix.assign(**{"per block": block})


def run(params: dict, profile: str = "smoke", results=None) -> GranularityStudy:
    """Notebook 08's work for its parameters (``results``: the profile's folder by default)."""
    results = Path(results or store.results_dir(profile))
    scored = {m: pruning.score_for_pruning(results, m, [POOL], modules="all", tag="all-linear",
                                           load_kwargs=load_options(params), **size)
              for m, size in params["scores"].items()}
    runs, evals = pruning.evaluate_models(results, params, list(params["scores"]), lambda _: settings(params))
    return GranularityStudy(
        params, pruning.sizes(params), evals, pruning.log(runs),
        tables.by_model(scored).drop(columns="path"),
        {m: tables.granularity_table(e, params["sparsity"], params["methods"], scores=LABEL)
         for m, e in evals.items()},
        {m: _ratios(r, params) for m, r in runs.items()},
        {m: tables.aggregation_table(e, params["aggregation_method"], params["aggregation_sparsity"])
         for m, e in evals.items()},
        {m: pruning.window_evaluations(results, m, params, _granular(params, "block") + _granular(params, "matrix"),
                                       e) for m, e in evals.items()})


def block_vs_matrix(result: GranularityStudy) -> pd.DataFrame:
    """Per pruner: average accuracy per block and per matrix, their difference in accuracy
    points (the unit of notebook 10's row), McNemar, perplexities, margin."""
    out = tables.by_model(result.granularity)
    points = 100 * (out["per block"] - out["per matrix"])
    out = out.drop(columns="% change (block vs matrix)").round(4)
    out.insert(2, "block - matrix (points)", points.round(2))
    return tables.readable_perplexity(out)


def window_table(result: GranularityStudy, level: float = 0.05) -> pd.DataFrame:
    """Per pruner: per block minus per matrix in NLL per token (nats; negative: the per-block
    model predicts the held-out text better), paired over the ``nll`` windows: difference,
    its ``1 - level`` interval, p and the windows (:func:`layerif.stats.paired_nll`)."""
    pairs = {b.method: (b, m)
             for b, m in zip(_granular(result.params, "block"), _granular(result.params, "matrix"))}
    return tables.window_pairs_table(result.windows, pairs, "method", level)


def _pruner(result: GranularityStudy) -> tuple[str, float]:
    """The pruner and sparsity whose ratios :func:`figures` draws."""
    return result.params["methods"][-1], result.params["sparsity"]


def figures(result: GranularityStudy) -> list:
    """Per model: the :func:`_pruner`'s sparsity per matrix type across depth, and per block."""
    method, sp = _pruner(result)
    return [plots.layer_lines(table, title=f"{model} · {method} {sp:.0%}: sparsity per matrix type",
                              ylabel="sparsity") for model, table in result.ratios.items()]


def figure_note(result: GranularityStudy):
    """What the figures below show, naming their pruner (Markdown)."""
    method, sp = _pruner(result)
    return bullets([f"The figures below show the {method} allocations at {sp:.0%} sparsity: one line "
                    "per matrix type (per-matrix scores) and the per-block allocation."])


def aggregation_table(result: GranularityStudy) -> pd.DataFrame:
    """LayerIF's three aggregations and Uniform: accuracy, margin, perplexity, vs "+ve"."""
    return tables.readable_perplexity(tables.by_model(result.aggregations).round(4))


def _lines(granularity: pd.DataFrame, aggregations: pd.DataFrame, level: float) -> list[str]:
    points = 100 * (granularity["per block"] - granularity["per matrix"]).mean()
    sig = int((granularity["McNemar p"] < level).sum())
    ppl = int((granularity["perplexity per block"] < granularity["perplexity per matrix"]).sum())
    best = aggregations.drop(index="Uniform")["average accuracy"].idxmax()
    low = aggregations["McNemar p vs +ve"].drop(index="LayerIF (positive)").min()
    perplexities = ", ".join(f"{k}: {tables.perplexity_text(v)}" for k, v in aggregations["perplexity"].items())
    return [f"Per block minus per matrix: {points:+.1f} accuracy points, averaged over the pruners "
            f"(the paper: per matrix {paper.claims('sec5_per_block')[0]['value']}% worse), significant "
            f"for {sig} of {len(granularity)} pruners; per block has the lower perplexity for {ppl} of "
            f"{len(granularity)}.",
            f"Aggregations: the highest average accuracy is {best}; differences to +ve have McNemar p "
            f"from {low:.3g} upward, perplexities {perplexities}."]


def _summary_lines(result: GranularityStudy, level: float) -> list[str]:
    windows = window_table(result, level)
    return [f"{model}: {line}" for model, g in result.granularity.items()
            for line in _lines(g, result.aggregations[model], level)
            + [tables.window_line(windows.loc[model], "per block", "per matrix", "pruners")]]


def summary(result: GranularityStudy, level: float = 0.05) -> str:
    """What the numbers say, one bullet per finding and model (plain text)."""
    return "\n".join(f"• {line}" for line in _summary_lines(result, level))


def conclusion(result: GranularityStudy, level: float = 0.05):
    """What the numbers say, as rendered Markdown bullets."""
    return bullets(_summary_lines(result, level))


def verdicts(result: GranularityStudy, level: float = 0.05) -> list[Verdict]:
    """§5: per-block scores beat per-matrix ones, the pruners' examples pooled, by the one rule
    of :mod:`.pruning_verdicts`; d is the text's "2.14% average improvement in accuracy" read
    as accuracy points (as a relative change it would be smaller)."""
    sp, methods, rows = result.params["sparsity"], result.params["methods"], []
    claim, source = paper.claims("sec5_per_block")[0], paper.entry("sec5_per_block")["model"]
    for model, evals in result.evals.items():
        block, matrix = (pv.pooled([evals[Setting(m, "LayerIF", sp, scores=LABEL, granularity=g)]
                                    for m in methods], methods) for g in ("block", "matrix"))
        found = pv.comparison(block, matrix, float(claim["value"]), level, evals.get(Setting(DENSE)))
        rows.append(pv.row(
            found, claim=f"per-block scores beat per-matrix scores ({sp:.0%})", model=model,
            where="Sec. 5 (per matrix vs per block)", paper_value=f"+{claim['value']}% accuracy ({source})",
            ours=f"{100 * found['test'].estimate:+.1f} accuracy points over {found['test'].n} paired examples",
            notebook=NOTEBOOK,
            note=f"d: the text's +{claim['value']}% read as accuracy points (as a relative change it "
                 "would be smaller)"))
    return rows + _nll_rows(result, level)


def _nll_rows(result: GranularityStudy, level: float) -> list[Verdict]:
    """§5 on the sensitive measure (:mod:`.pruning_verdicts`): per block against per matrix on
    the per-window NLL, the pruners averaged per window; d carries the text's 2.14% over as the
    same relative drop in perplexity, ln(1 - 0.0214) nats per token."""
    claim, rows = paper.claims("sec5_per_block")[0], []
    d = math.log(1 - float(claim["value"]) / 100)
    for model, w in result.windows.items():
        rows.append(pv.window_verdict(
            w, _granular(result.params, "block"), _granular(result.params, "matrix"), d, level,
            claim=f"per-block scores lower held-out NLL vs per-matrix scores ({result.params['sparsity']:.0%})",
            model=model, where="Sec. 5 (sensitive measure)",
            paper_value=f"+{claim['value']}% accuracy ({paper.entry('sec5_per_block')['model']})",
            notebook=NOTEBOOK, what=f"{len(result.params['methods'])} pruners averaged per window",
            contrast="per block - per matrix",
            note=f"d: the text's {claim['value']}% as the same relative drop in perplexity, ln(1 - r) = {d:+.4f}"))
    return rows
