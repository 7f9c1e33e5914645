"""Notebook 05: pruning with LayerIF sparsity (Tables 2 and 5, Fig. 3, Table 8, own scores).

:func:`run` prunes and evaluates (or loads, :mod:`.pruning`) every setting the notebook's
parameters name and builds its tables (:mod:`.pruning_tables`); the ``*_table`` functions lay
them out as the notebook shows them, :func:`summary` says what the numbers say and
:func:`verdicts` decides the paper's claims (the rows of notebook 10).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import paper, plots, store
from ..notebook_params import load_options
from . import pruning, pruning_tables as tables
from .prose import bullets
from .pruning import DENSE, Setting
from . import pruning_claims
from .verdict import Verdict

__all__ = ["NOTEBOOK", "PruningStudy", "above_chance_table", "conclusion", "dense_table", "fig3",
           "paired_table", "paper_tables", "run", "settings", "settings_table", "specific_sizes",
           "specific_table", "summary", "table8_table", "table8_vs_paper", "verdicts",
           "window_evaluations", "window_table"]

from .pruning_claims import BASELINES, NOTEBOOK, TABLE_IDS


@dataclass(frozen=True)
class PruningStudy:
    """What notebook 05 shows; every dict is keyed by model name.

    ``evals``: {Setting: Evaluation}; ``checks`` / ``above``: the dense model against chance
    and the tasks it clears; ``acc``: :func:`~.pruning_tables.accuracy_table`; ``paired``:
    LayerIF against each baseline (:func:`~.pruning_tables.versus`); ``table8``: Fig. 3 models
    only; ``specific`` / ``specific_evals``: each task pruned with its own scores (by task);
    ``windows``: {Setting: Evaluation} of the pruned settings on ``nll`` perplexity windows
    only (the per-window NLL of the sensitive paired test, :func:`window_evaluations`)."""

    params: dict
    sizes: str
    evals: dict
    log: pd.DataFrame
    checks: dict
    above: dict
    acc: dict
    paired: dict
    table8: dict
    specific: dict
    specific_evals: dict
    windows: dict


def settings(params: dict, model: str) -> list[Setting]:
    """The dense model, every (pruner, allocation) at ``sparsity``, and SparseGPT at every
    level of ``fig3_sparsities`` for the Fig. 3 models; each setting once (Fig. 3's level at
    ``sparsity`` is Table 2's SparseGPT row)."""
    out = pruning.grid(params["methods"], sparsities=[params["sparsity"]])
    if model in params["fig3_models"]:
        out += pruning.grid(["sparsegpt"], sparsities=params["fig3_sparsities"], dense=False)
    return list(dict.fromkeys(out))


def _task_specific(results: Path, params: dict, model: str) -> dict:
    """{task: evaluations of :func:`.pruning.task_specific_settings` on that task alone}, scoring each task first."""
    ts = params["task_specific"]
    pruning.score_for_pruning(results, model, ts["tasks"], ts["n_train"], ts["n_val"],
                              load_kwargs=load_options(params))
    return {task: pruning.from_params(results, model, params, tasks=(task,), n_examples=ts["n_examples"])
            .evaluate_all(pruning.task_specific_settings(params, task)) for task in ts["tasks"]}


def window_evaluations(results: Path, params: dict, evals: dict) -> dict:
    """{model: {Setting: Evaluation}}: every pruned setting of the notebook (Tables 2 and 5 at
    ``sparsity``, and SparseGPT across ``fig3_sparsities`` for the Fig. 3 models) on the ``nll``
    windows (:func:`.pruning.window_evaluations`; more than the zero-shot evaluation's where
    the budget allows: the paired per-window test is where the power is)."""
    return {m: pruning.window_evaluations(results, m, params, settings(params, m)[1:], evals[m])
            for m in params["models"]}


def run(params: dict, profile: str = "smoke", results=None) -> PruningStudy:
    """Notebook 05's work for its parameters (``results``: the profile's folder by default)."""
    results = Path(results or store.results_dir(profile))
    sp, ts = params["sparsity"], params["task_specific"]
    runs, evals = pruning.evaluate_models(results, params, params["models"],
                                          lambda model: settings(params, model))
    checks = {m: tables.dense_check(e[Setting(DENSE)], tables.fixed_choice_tasks(runs[m].examples()))
              for m, e in evals.items()}
    above = {m: list(c.index[c["above chance"]]) for m, c in checks.items()}
    specific = {m: _task_specific(results, params, m) for m in ts["models"]}
    return PruningStudy(
        params, pruning.sizes(params), evals, pruning.log(runs), checks, above,
        {m: tables.accuracy_table(e, above[m]) for m, e in evals.items()},
        {m: tables.versus(e, "LayerIF", sp, params["methods"]) for m, e in evals.items()},
        {m: tables.table8(evals[m], "sparsegpt", params["fig3_sparsities"]) for m in params["fig3_models"]},
        {m: tables.task_specific_table(e, ts["tasks"]) for m, e in specific.items()}, specific,
        window_evaluations(results, params, evals))


# ------------------------------------------------------------------ what the notebook shows

def dense_table(result: PruningStudy) -> pd.DataFrame:
    """Per model and task: is the dense model above chance (or the majority answer)?"""
    return tables.by_model(result.checks).round(3)


def paper_tables(result: PruningStudy) -> pd.DataFrame:
    """Tables 2 and 5: pruner by allocation at ``sparsity`` (%), beside the paper's numbers."""
    parts = {}
    for model, table_id in zip(result.acc, TABLE_IDS):
        ours = tables.method_by_allocation(result.acc[model], sparsity=result.params["sparsity"]) * 100
        note = f"{model} for {paper.entry(table_id)['model']}"
        parts[model] = paper.compare(ours, table_id, note=note).round(2)
    return tables.by_model(parts)


def settings_table(result: PruningStudy) -> pd.DataFrame:
    """Every setting: accuracy per task and averages (%), margin (nats) and perplexity."""
    kept = ["margin", "margin stderr", "perplexity"]
    return tables.readable_perplexity(tables.by_model(
        {m: (t.drop(columns=[*kept, "n per task"]) * 100).round(1).join(t[kept].round(2))
         for m, t in result.acc.items()}))


def above_chance_table(result: PruningStudy) -> pd.DataFrame:
    """Pruner by allocation: average over the tasks the dense model clears (%), perplexity."""
    sp = result.params["sparsity"]
    return tables.by_model({m: pd.concat(
        {"average (above chance) %": tables.method_by_allocation(t, tables.AVERAGE_ABOVE, sp) * 100,
         "perplexity": tables.method_by_allocation(t, "perplexity", sp)}, axis=1).round(2)
        for m, t in result.acc.items()}).pipe(_readable_columns)


def _readable_columns(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`~.pruning_tables.readable_perplexity` on a frame with two column levels."""
    return table.apply(lambda col: col.map(tables.perplexity_text) if col.name[0] == "perplexity" else col)


def paired_table(result: PruningStudy) -> pd.DataFrame:
    """LayerIF against each baseline per pruner, on the same examples."""
    return tables.by_model(result.paired).round(4)


def window_table(result: PruningStudy, level: float = 0.05) -> pd.DataFrame:
    """LayerIF against each baseline per pruner and sparsity on the per-window NLL (nats per
    token, negative: LayerIF's model predicts the held-out text better), paired over the
    ``nll`` windows: difference, interval, p and the windows."""
    return tables.by_model({m: tables.window_versus(e, "LayerIF", BASELINES, level)
                            for m, e in result.windows.items()}).round(4)


def fig3(result: PruningStudy, level: float = 0.05) -> list:
    """Fig. 3: SparseGPT's mean accuracy of the seven tasks across sparsities per allocation,
    with its ``1 - level`` normal interval (from the tasks' standard errors) and the dense
    model's as a reference; then the held-out perplexity. Both y-axes start at zero."""
    from scipy.stats import norm

    figures, z = [], float(norm.ppf(1 - level / 2))
    for model in result.table8:
        acc = result.acc[model]
        sub = acc.xs("sparsegpt", level="method")
        curve = sub[tables.AVERAGE].unstack("allocation").sort_index() * 100
        half = sub[f"{tables.AVERAGE} stderr"].unstack("allocation").sort_index() * 100 * z
        dense = 100 * float(acc.xs(DENSE, level="method")[tables.AVERAGE].iloc[0])
        ppl = sub["perplexity"].unstack("allocation").sort_index()
        bars = plots.grouped_bars(curve, errors=half, reference=(dense, "dense model"),
                                  ylabel="accuracy (%)", xlabel="sparsity",
                                  title=f"{model} · SparseGPT: mean accuracy of the seven tasks")
        lines = plots.layer_lines(ppl, title=f"{model} · SparseGPT: held-out perplexity",
                                  ylabel="perplexity", xlabel="sparsity")
        lines.axes[0].set_ylim(bottom=0)
        figures += [bars, lines]
    return figures


def table8_vs_paper(result: PruningStudy) -> pd.DataFrame:
    """Table 8: average accuracy (%) and the paired t-test's p, beside the paper's."""
    parts = {}
    for model, t in result.table8.items():
        ours = t[["average accuracy", "t-test p (per setting)"]].rename(
            columns={"average accuracy": "Average Accuracy", "t-test p (per setting)": "p-value"})
        ours["Average Accuracy"] *= 100
        parts[model] = paper.compare(ours, "table8", note=f"{model} for Mistral-7B").round(4)
    return tables.by_model(parts)


def table8_table(result: PruningStudy) -> pd.DataFrame:
    """Table 8 with our tests: the paper's t-test, McNemar and the margin's interval."""
    return tables.by_model(result.table8).round(4)


def specific_sizes(result: PruningStudy):
    """How many examples the own-scores table and the seven-task tables use (Markdown)."""
    lines = [f"{model}: each task of the table below is scored on "
             f"{', '.join(f'{n:.0f}' for n in sorted(set(t['n'])))} held-out examples; the "
             f"seven-task tables above use {result.acc[model]['n per task'].min():.0f} per task."
             for model, t in result.specific.items()]
    return bullets(lines)


def specific_table(result: PruningStudy) -> pd.DataFrame:
    """Each task pruned with its own scores, the pooled scores and uniformly."""
    return tables.by_model(result.specific).round(4)


def _paired_lines(model: str, frame: pd.DataFrame, above: list, sparsity: float, level: float) -> list[str]:
    """LayerIF against the baselines at ``sparsity``: every count from one :func:`~.pruning_tables.wins`."""
    w = tables.wins(frame, level)
    lines = [f"{model}: LayerIF vs {w['comparisons']} (pruner, baseline) pairs at the same examples: "
             f"higher accuracy in {w['higher accuracy']}, significantly better in "
             f"{w['significantly better']}, significantly worse in {w['significantly worse']} "
             f"(McNemar, {level}); gold-margin interval above 0 in {w['margin CI above 0']}, below 0 in "
             f"{w['margin CI below 0']}; lower perplexity in {w['lower perplexity']}. Tasks where the "
             f"dense model is above chance: {', '.join(above) or 'none'}."]
    if w["significantly better"] == 0 and w["margin CI above 0"] == 0:
        worse = w["significantly worse"] + w["margin CI below 0"]
        lines.append(f"{model}: LayerIF's advantage at {sparsity:.0%} is not reproduced at this scale: "
                     "no comparison is significantly in its favour on accuracy or margin"
                     + (f", and {w['significantly worse']} on accuracy and {w['margin CI below 0']} on "
                        "margin are significantly against it." if worse else "."))
    return lines


def _summary_lines(result: PruningStudy, level: float) -> list[str]:
    lines = []
    for model, table in result.acc.items():
        w = tables.perplexity_wins(table)
        lines.append(f"{model}: LayerIF's model has the lowest held-out perplexity of the four "
                     f"allocations in {w['wins']} of {w['settings']} (pruner, sparsity) settings "
                     f"(exchangeable allocations would give 1 in 4: binomial p = {w['p']:.3g}; the "
                     "settings share scores and text, so this is descriptive).")
    for model, frame in result.paired.items():
        lines += _paired_lines(model, frame, result.above[model], result.params["sparsity"], level)
    for model, frame in result.windows.items():
        t = tables.window_versus(frame, "LayerIF", BASELINES, level)
        lower, higher = tables.window_sides(t)
        lines.append(f"{model}, per-window NLL ({int(t['windows'].min())} windows, the same for every "
                     f"model): LayerIF's model is significantly lower than the baseline's in {lower} and "
                     f"significantly higher in {higher} of {len(t)} (pruner, sparsity, baseline) "
                     f"pairs (paired t, {level}).")
    for model, t in result.table8.items():
        for base, row in t.drop(index=t.index[0]).iterrows():
            lines.append(
                f"{model}, SparseGPT across sparsities vs {base}: LayerIF - baseline = "
                f"{100 * row['LayerIF - baseline']:+.2f} points; paper's t-test over settings "
                f"p = {row['t-test p (per setting)']:.3g} (n = {row['settings']:.0f}); McNemar over "
                f"{row['examples']:.0f} examples p = {row['McNemar p (per example)']:.3g}.")
    for model, t in result.specific.items():
        better = t["own scores"] > t["pooled scores"]
        sig = int(((t["McNemar p (own vs pooled)"] < level) & better).sum())
        lines.append(f"{model}: a task's own scores beat the pooled vector on {int(better.sum())} of "
                     f"{len(t)} tasks ({', '.join(f'{n:.0f}' for n in sorted(set(t['n'])))} examples "
                     f"each), significantly on {sig}.")
    return lines


def summary(result: PruningStudy, level: float = 0.05) -> str:
    """What the numbers say, one bullet per finding (plain text)."""
    return "\n".join(f"• {line}" for line in _summary_lines(result, level))


def conclusion(result: PruningStudy, level: float = 0.05):
    """What the numbers say, as rendered Markdown bullets."""
    return bullets(_summary_lines(result, level))


def verdicts(result: PruningStudy, level: float = 0.05) -> list[Verdict]:
    """Tables 2 / 5 (LayerIF vs each baseline, pruners pooled, on accuracy and on the per-window
    NLL), Table 8 (SparseGPT across sparsities, both measures), and two beyond the paper:
    lowest perplexity, a task's own scores (:mod:`.pruning_claims`; the rows of notebook 10)."""
    return pruning_claims.verdicts(result, level)
