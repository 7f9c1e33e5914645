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
from . import pruning, pruning_tables as tables
from .pruning import DENSE, Setting
from .verdict import HELD, INCONCLUSIVE, Verdict, decide, interval

__all__ = ["NOTEBOOK", "PruningStudy", "above_chance_table", "dense_table", "fig3", "paired_table",
           "paper_tables", "run", "settings", "settings_table", "specific_table", "summary",
           "table8_table", "table8_vs_paper", "verdicts"]

NOTEBOOK = "05_pruning"
TABLE_IDS = ("table2", "table5")  # the first model stands for Mistral-7B, the second for Gemma-7B
BASELINES = ("Uniform", "AlphaPruning", "OWL")
TABLE8_ROWS = {"AlphaPruning": "Alphapruning", "Uniform": "Uniform", "OWL": "OWL"}


@dataclass(frozen=True)
class PruningStudy:
    """What notebook 05 shows; every dict is keyed by model name.

    ``evals``: {Setting: Evaluation}; ``checks`` / ``above``: the dense model against chance
    and the tasks it clears; ``acc``: :func:`~.pruning_tables.accuracy_table`; ``paired``:
    LayerIF against each baseline (:func:`~.pruning_tables.versus`); ``table8``: Fig. 3 models
    only; ``specific`` / ``specific_evals``: each task pruned with its own scores (by task)."""

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


def settings(params: dict, model: str) -> list[Setting]:
    """The dense model, every (pruner, allocation) at ``sparsity``, and SparseGPT at every
    level of ``fig3_sparsities`` for the Fig. 3 models."""
    out = pruning.grid(params["methods"], sparsities=[params["sparsity"]])
    if model in params["fig3_models"]:
        out += pruning.grid(["sparsegpt"], sparsities=params["fig3_sparsities"], dense=False)
    return out


def _own_scores(params: dict, task: str) -> list[Setting]:
    ts, sp = params["task_specific"], params["sparsity"]
    return [Setting(ts["method"], "LayerIF", sp, scores=task), Setting(ts["method"], "LayerIF", sp),
            Setting(ts["method"], "Uniform", sp)]


def _task_specific(results: Path, params: dict, model: str) -> dict:
    """{task: evaluations of :func:`_own_scores` on that task alone}, scoring each task first."""
    ts = params["task_specific"]
    pruning.score_for_pruning(results, model, ts["tasks"], ts["n_train"], ts["n_val"])
    return {task: pruning.from_params(results, model, params, tasks=(task,), n_examples=ts["n_examples"])
            .evaluate_all(_own_scores(params, task)) for task in ts["tasks"]}


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
        {m: tables.task_specific_table(e, ts["tasks"]) for m, e in specific.items()}, specific)


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
    return tables.by_model({m: (t.drop(columns=[*kept, "n per task"]) * 100).round(1).join(t[kept].round(2))
                            for m, t in result.acc.items()})


def above_chance_table(result: PruningStudy) -> pd.DataFrame:
    """Pruner by allocation: average over the tasks the dense model clears (%), perplexity."""
    sp = result.params["sparsity"]
    return tables.by_model({m: pd.concat(
        {"average (above chance) %": tables.method_by_allocation(t, tables.AVERAGE_ABOVE, sp) * 100,
         "perplexity": tables.method_by_allocation(t, "perplexity", sp)}, axis=1).round(2)
        for m, t in result.acc.items()})


def paired_table(result: PruningStudy) -> pd.DataFrame:
    """LayerIF against each baseline per pruner, on the same examples."""
    return tables.by_model(result.paired).round(4)


def fig3(result: PruningStudy) -> list:
    """Fig. 3: SparseGPT's mean accuracy and perplexity across sparsities, per allocation."""
    figures = []
    for model in result.table8:
        sub = result.acc[model].xs("sparsegpt", level="method")
        curve = sub["average"].unstack("allocation").sort_index() * 100
        ppl = sub["perplexity"].unstack("allocation").sort_index()
        figures += [plots.layer_lines(curve, title=f"{model} · SparseGPT: mean accuracy of the seven tasks",
                                      ylabel="accuracy (%)", xlabel="sparsity"),
                    plots.layer_lines(ppl, title=f"{model} · SparseGPT: held-out perplexity",
                                      ylabel="perplexity", xlabel="sparsity")]
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


def specific_table(result: PruningStudy) -> pd.DataFrame:
    """Each task pruned with its own scores, the pooled scores and uniformly."""
    return tables.by_model(result.specific).round(4)


def summary(result: PruningStudy, level: float = 0.05) -> str:
    """What the numbers say, one bullet per finding."""
    lines = []
    for model, table in result.acc.items():
        w = tables.perplexity_wins(table)
        lines.append(f"{model}: LayerIF's model has the lowest held-out perplexity of the four "
                     f"allocations in {w['wins']} of {w['settings']} (pruner, sparsity) settings "
                     f"(exchangeable allocations would give 1 in 4: binomial p = {w['p']:.3g}; the "
                     "settings share scores and text, so this is descriptive).")
    for model, frame in result.paired.items():
        w = tables.wins(frame, level)
        lines.append(
            f"{model}: LayerIF vs {w['comparisons']} (pruner, baseline) pairs at the same examples: "
            f"higher accuracy in {w['higher accuracy']}, significantly better in "
            f"{w['significantly better']}, significantly worse in {w['significantly worse']} "
            f"(McNemar, {level}); gold-margin interval above 0 in {w['margin CI above 0']}, below 0 in "
            f"{w['margin CI below 0']}; lower perplexity in {w['lower perplexity']}. Tasks where the "
            f"dense model is above chance: {', '.join(result.above[model]) or 'none'}.")
        if w["significantly better"] == 0 and w["margin CI above 0"] == 0:
            lines.append(f"{model}: LayerIF's advantage at 50% is not reproduced at this scale "
                         "(no comparison significant on accuracy or margin).")
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
                     f"{len(t)} tasks, significantly on {sig}.")
    return "\n".join(f"• {line}" for line in lines)


# ------------------------------------------------------------------ the claims (notebook 10)

def verdicts(result: PruningStudy, level: float = 0.05) -> list[Verdict]:
    """Tables 2 / 5 (LayerIF vs each baseline, pruners pooled), Table 8 (SparseGPT across
    sparsities), and two beyond the paper: lowest perplexity, a task's own scores."""
    return (_beats_baselines(result, level) + _table8(result, level) + _perplexity(result, level)
            + _own_vs_pooled(result, level))


def _beats_baselines(result: PruningStudy, level: float) -> list[Verdict]:
    rows, sp, methods = [], result.params["sparsity"], result.params["methods"]
    for model, table_id in zip(result.params["models"], TABLE_IDS):
        evals = result.evals[model]
        for base in BASELINES:
            rows.append(tables.paired_verdict(
                f"LayerIF sparsity beats {base} at {sp:.0%}", model, f"{table_id} (Fig. 3)",
                tables.paper_pair(table_id, "LayerIF", base, "Average"),
                [evals[Setting(m, "LayerIF", sp)] for m in methods],
                [evals[Setting(m, base, sp)] for m in methods], methods, NOTEBOOK, level))
    return rows


def _table8(result: PruningStudy, level: float) -> list[Verdict]:
    rows, printed = [], paper.table("table8")
    for model, t8 in result.table8.items():
        for base, r in t8.drop(index="LayerIF").iterrows():
            diff, p_t = r["LayerIF - baseline"], r["t-test p (per setting)"]
            rows.append(Verdict(
                f"LayerIF beats {base} across sparsities (SparseGPT)", model, "Table 8, Fig. 3",
                tables.paper_pair("table8", "LayerIF", TABLE8_ROWS[base], "Average Accuracy")
                + f", p = {printed.at[TABLE8_ROWS[base], 'p-value']:.5f}",
                f"{100 * diff:+.2f} points over {int(r['settings'])} settings, "
                f"{int(r['examples'])} examples", "paired t over settings (and McNemar over examples)",
                float(p_t), interval(r["margin CI low"], r["margin CI high"], 1, " nats margin"),
                decide(diff, [p_t, r["McNemar p (per example)"]], level), NOTEBOOK, float(diff)))
    return rows


def _perplexity(result: PruningStudy, level: float) -> list[Verdict]:
    rows = []
    for model in result.params["models"]:
        w = tables.perplexity_wins(result.acc[model])
        rows.append(Verdict(
            "LayerIF's pruned model has the lowest perplexity (not in the paper)", model,
            "beyond the paper", "not in paper",
            f"lowest in {w['wins']} of {w['settings']} (pruner, sparsity) settings",
            "one-sided binomial against 1 in 4 (settings not independent)", float(w["p"]), "",
            HELD if w["p"] < level else INCONCLUSIVE, NOTEBOOK))
    return rows


def _own_vs_pooled(result: PruningStudy, level: float) -> list[Verdict]:
    ts, sp, rows = result.params["task_specific"], result.params["sparsity"], []
    for model, by_task in result.specific_evals.items():
        own = [by_task[t][_own_scores(result.params, t)[0]] for t in ts["tasks"]]
        pool = [by_task[t][_own_scores(result.params, t)[1]] for t in ts["tasks"]]
        rows.append(tables.paired_verdict(
            f"a task's own scores prune it better than the pooled vector ({ts['method']} {sp:.0%})",
            model, "beyond the paper (it prunes every task with one vector)", "not in paper",
            own, pool, ts["tasks"], NOTEBOOK, level))
    return rows
