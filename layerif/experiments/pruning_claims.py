"""Notebook 05's claims (the rows notebook 10 collects), each decided by the one rule of
:mod:`.pruning_verdicts`: LayerIF's sparsity against each baseline at the notebook's sparsity
(Tables 2 / 5: accuracy, the paper's measure, and the per-window NLL, the sensitive one),
SparseGPT across sparsities (Table 8, both measures), and two claims beyond the paper (the
lowest perplexity, a task's own scores against the pooled vector).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import paper
from . import pruning, pruning_tables as tables
from . import pruning_verdicts as pv
from .pruning import DENSE, Setting
from .verdict import Verdict, interval, interval_verdict

if TYPE_CHECKING:
    from .pruning_study import PruningStudy

__all__ = ["BASELINES", "NOTEBOOK", "TABLE8_ROWS", "TABLE_IDS", "verdicts"]

NOTEBOOK = "05_pruning"
TABLE_IDS = ("table2", "table5")  # the first model stands for Mistral-7B, the second for Gemma-7B
BASELINES = ("Uniform", "AlphaPruning", "OWL")
TABLE8_ROWS = {"AlphaPruning": "Alphapruning", "Uniform": "Uniform", "OWL": "OWL"}


def verdicts(result: "PruningStudy", level: float = 0.05) -> list[Verdict]:
    """Tables 2 / 5 (LayerIF vs each baseline, pruners pooled), Table 8 (SparseGPT across
    sparsities), and two beyond the paper: lowest perplexity, a task's own scores. Each
    comparison by the one rule of :mod:`.pruning_verdicts` (accuracy points, the paper's d)."""
    return (_beats_baselines(result, level) + _nll_beats_baselines(result, level) + _table8(result, level)
            + _nll_table8(result, level) + _perplexity(result, level) + _own_vs_pooled(result, level))


def _beats_baselines(result: "PruningStudy", level: float) -> list[Verdict]:
    rows, sp, methods = [], result.params["sparsity"], result.params["methods"]
    for model, table_id in zip(result.params["models"], TABLE_IDS):
        evals = result.evals[model]
        for base in BASELINES:
            a = pv.pooled([evals[Setting(m, "LayerIF", sp)] for m in methods], methods)
            b = pv.pooled([evals[Setting(m, base, sp)] for m in methods], methods)
            found = pv.comparison(a, b, pv.paper_d(table_id, "LayerIF", base, "Average"), level,
                                  evals[Setting(DENSE)])
            rows.append(pv.row(
                found, claim=f"LayerIF sparsity beats {base} at {sp:.0%}", model=model,
                where=f"{table_id} (Fig. 3)", notebook=NOTEBOOK,
                paper_value=tables.paper_pair(table_id, "LayerIF", base, "Average"),
                ours=f"{100 * found['test'].estimate:+.1f} accuracy points over {found['test'].n} "
                     "paired examples",
                note="d: the table's Average difference"))
    return rows


def _window_verdict(result: "PruningStudy", model: str, base: str, cells: list[tuple], d: float,
                    level: float, **row) -> Verdict:
    """LayerIF against ``base`` on the per-window NLL, each averaged per window over ``cells``
    (``(method, sparsity)`` pairs) of :attr:`PruningStudy.windows`."""
    a, b = ([Setting(m, alloc, s) for m, s in cells] for alloc in ("LayerIF", base))
    return pv.window_verdict(result.windows[model], a, b, d, level, model=model, notebook=NOTEBOOK, **row)


def _nll_beats_baselines(result: "PruningStudy", level: float) -> list[Verdict]:
    """Tables 2 / 5 on the sensitive measure (:mod:`.pruning_verdicts`), pruners averaged."""
    rows, sp, methods = [], result.params["sparsity"], result.params["methods"]
    for model, table_id in zip(result.params["models"], TABLE_IDS):
        for base in BASELINES:
            d = pv.nll_d(table_id, "LayerIF", base, "Average")
            rows.append(_window_verdict(
                result, model, base, [(m, sp) for m in methods], d, level,
                claim=f"LayerIF sparsity lowers held-out NLL vs {base} at {sp:.0%}",
                where=f"{table_id} (sensitive measure)",
                paper_value=tables.paper_pair(table_id, "LayerIF", base, "Average"),
                what=f"{len(methods)} pruners averaged per window",
                note=f"d: the table's relative Average gain as the same relative drop in perplexity, "
                     f"ln(1 - r) = {d:+.4f}"))
    return rows


def _table8(result: "PruningStudy", level: float) -> list[Verdict]:
    rows, printed, sps = [], paper.table("table8"), result.params["fig3_sparsities"]
    for model, t8 in result.table8.items():
        evals = result.evals[model]
        for base, r in t8.drop(index="LayerIF").iterrows():
            a = pv.pooled([evals[Setting("sparsegpt", "LayerIF", s)] for s in sps], sps)
            b = pv.pooled([evals[Setting("sparsegpt", base, s)] for s in sps], sps)
            found = pv.comparison(a, b, pv.paper_d("table8", "LayerIF", TABLE8_ROWS[base], "Average Accuracy"),
                                  level, evals[Setting(DENSE)])
            rows.append(pv.row(
                found, claim=f"LayerIF beats {base} across sparsities (SparseGPT)", model=model,
                where="Table 8, Fig. 3", notebook=NOTEBOOK,
                paper_value=tables.paper_pair("table8", "LayerIF", TABLE8_ROWS[base], "Average Accuracy")
                + f", p = {printed.at[TABLE8_ROWS[base], 'p-value']:.5f}",
                ours=f"{100 * r['LayerIF - baseline']:+.2f} points over {int(r['settings'])} settings, "
                     f"{int(r['examples'])} examples",
                note=f"d: the table's Average Accuracy difference; the paper's paired t over settings "
                     f"here: p = {r['t-test p (per setting)']:.3g}"))
    return rows


def _nll_table8(result: "PruningStudy", level: float) -> list[Verdict]:
    """Table 8 on the sensitive measure: SparseGPT's LayerIF against each baseline, the
    ``fig3_sparsities`` averaged per window; d as in :func:`_nll_beats_baselines`."""
    rows, sps = [], result.params["fig3_sparsities"]
    for model in result.table8:
        for base in BASELINES:
            d = pv.nll_d("table8", "LayerIF", TABLE8_ROWS[base], "Average Accuracy")
            rows.append(_window_verdict(
                result, model, base, [("sparsegpt", s) for s in sps], d, level,
                claim=f"LayerIF lowers held-out NLL vs {base} across sparsities (SparseGPT)",
                where="Table 8 (sensitive measure)",
                paper_value=tables.paper_pair("table8", "LayerIF", TABLE8_ROWS[base], "Average Accuracy"),
                what=f"{len(sps)} sparsities averaged per window",
                note=f"d: the table's relative Average Accuracy gain as the same relative drop in "
                     f"perplexity, ln(1 - r) = {d:+.4f}"))
    return rows


def _perplexity(result: "PruningStudy", level: float) -> list[Verdict]:
    """Not in the paper, a rate claim: LayerIF's model is the lowest of the four allocations in
    more than 1 in 4 settings, decided on the Clopper-Pearson interval of the win rate by
    :func:`.verdict.interval_verdict` (no d: a threshold claim)."""
    rows = []
    for model in result.params["models"]:
        w = tables.perplexity_wins(result.acc[model])
        lo, hi = pv.rate_interval(w["wins"], w["settings"], level)
        rows.append(Verdict(
            "LayerIF's pruned model has the lowest perplexity (not in the paper)", model,
            "beyond the paper", "not in paper",
            f"lowest in {w['wins']} of {w['settings']} (pruner, sparsity) settings",
            "one-sided binomial against 1 in 4 (settings not independent); held: win-rate "
            "interval above 1/4, not held: below, else underpowered", float(w["p"]),
            f"{interval(lo, hi)} (win rate, Clopper-Pearson)",
            interval_verdict(lo, hi, above=0.25, below=0.25), NOTEBOOK, w["wins"] / max(w["settings"], 1),
            ci_low=lo, ci_high=hi))
    return rows


def _own_vs_pooled(result: "PruningStudy", level: float) -> list[Verdict]:
    """Not in the paper, a sign claim: d is the paper's LayerIF-over-Uniform gain at 50%
    (Table 2's Average, +0.29 points), the size of effect the paper credits to the allocation."""
    ts, sp, rows = result.params["task_specific"], result.params["sparsity"], []
    d = pv.paper_d("table2", "LayerIF", "Uniform", "Average")
    for model, by_task in result.specific_evals.items():
        own = pv.pooled([by_task[t][pruning.task_specific_settings(result.params, t)[0]] for t in ts["tasks"]], ts["tasks"])
        pool = pv.pooled([by_task[t][pruning.task_specific_settings(result.params, t)[1]] for t in ts["tasks"]], ts["tasks"])
        found = pv.comparison(own, pool, d, level, result.evals[model][Setting(DENSE)])
        rows.append(pv.row(
            found, claim=f"a task's own scores prune it better than the pooled vector ({ts['method']} {sp:.0%})",
            model=model, where="beyond the paper (it prunes every task with one vector)",
            paper_value="not in paper", notebook=NOTEBOOK,
            ours=f"{100 * found['test'].estimate:+.1f} accuracy points over {found['test'].n} paired examples",
            note=f"d: the paper's LayerIF gain over Uniform (table2, Average, {d:+.2f}), the effect it "
                 "credits to the allocation (the paper makes no claim here)"))
    return rows
