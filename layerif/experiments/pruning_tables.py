"""Tables of the pruning study from saved evaluations (pure: no model, no I/O).

Inputs are ``{Setting: Evaluation}`` mappings from :meth:`PruningRun.evaluate_all`. Every
comparison between two allocations is paired: the models are scored on the same examples,
so accuracy differences are tested with McNemar's test and margin differences with a paired
bootstrap (:mod:`layerif.stats`). Accuracies are fractions here; notebooks scale by 100 for
the paper's percentages. Notebooks 05, 07 and 08 (:mod:`.pruning_study`, :mod:`.smoothing`,
:mod:`.granularity`) build their tables from these, their verdict rows with
:mod:`.pruning_verdicts`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .. import paper, stats
from ..evaluate.suite import Evaluation, summarize
from .pruning import ALLOCATIONS, Setting
from .scoring import POOL

__all__ = ["AVERAGE", "AVERAGE_ABOVE", "accuracy_table", "by_model", "dense_check", "fixed_choice_tasks",
           "granularity_table", "method_by_allocation", "paired_comparison",
           "paper_pair", "smoothing_table", "task_specific_table", "table8", "versus", "window_line",
           "window_pairs_table", "window_row", "window_sides", "window_versus", "wins",
           "aggregation_table", "perplexity_wins", "DIVERGED", "perplexity_text", "readable_perplexity"]

AVERAGE, AVERAGE_ABOVE = "average", "average (tasks above chance)"
#: A perplexity above this is shown as "diverged" (the dense models here are below a hundred:
#: beyond it the digits say only that the pruned model no longer predicts the text).
DIVERGED = 1e4


def perplexity_text(value: float) -> str:
    """A perplexity to the digits it carries (three significant), or "diverged (> 1e+04)"."""
    if not np.isfinite(value):
        return "—" if np.isnan(value) else "diverged"
    return f"diverged (> {DIVERGED:.0e})" if value > DIVERGED else f"{value:.3g}"


def readable_perplexity(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every column whose name holds "perplexity" (and not "%", "ratio" or
    "change") shown through :func:`perplexity_text`."""
    cols = [c for c in table.columns if "perplexity" in str(c)
            and not any(k in str(c) for k in ("%", "ratio", "change", "/"))]
    return table.assign(**{c: table[c].map(perplexity_text) for c in cols})


def fixed_choice_tasks(examples: Mapping[str, list]) -> list[str]:
    """Tasks whose examples all offer the same choice texts (BoolQ's yes / no, RTE's
    true / false): there, always giving the most frequent answer is a strategy a model can
    follow, so it is the bar to clear; elsewhere the choices differ per example and chance is."""
    return [t for t, exs in examples.items() if len({tuple(e.choices) for e in exs}) == 1]


def dense_check(dense: Evaluation, fixed_choices=(), level: float = 0.05) -> pd.DataFrame:
    """Per task: is the dense model above what a model without the skill would score?

    The bar is chance (the mean of 1 / number of choices), or, for tasks in
    ``fixed_choices`` (:func:`fixed_choice_tasks`), the share of the most frequent gold
    answer when that is higher (BoolQ's "yes"). The test is the one-sided exact binomial test
    of the accuracy against the bar (:func:`layerif.stats.above_rate`).

    Every task is scored with ``acc`` (the arg-max of the choices' summed log-likelihoods),
    the metric of the paper's evaluation setup (Wanda's lm-eval zero-shot run, whose
    accuracy is ``acc``); the length-normalised ``acc_norm`` and its own test against the same
    bar are shown beside it (``metric`` says which one decides).
    """
    rows = {}
    summary = summarize(dense.examples)
    for task, ex in dense.examples.groupby(level="task", sort=False):
        chance, majority = summary.at[task, "chance"], summary.at[task, "majority"]
        bar = max(chance, majority) if task in fixed_choices else chance
        test = stats.above_rate(ex["correct"].to_numpy(), bar)
        norm = stats.above_rate(ex["correct_norm"].to_numpy(), bar)
        rows[task] = {"metric": "acc", "acc": test.estimate, "ci_low": test.ci_low, "ci_high": test.ci_high,
                      "chance": chance, "majority answer": majority if task in fixed_choices else np.nan,
                      "bar": bar, "p (acc > bar)": test.pvalue,
                      "above chance": test.pvalue < level, "n": test.n,
                      "acc_norm": norm.estimate, "p (acc_norm > bar)": norm.pvalue}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "task"
    return out


def _key(setting: Setting) -> tuple:
    return setting.method, setting.label(), setting.sparsity


def _combined_stderr(stderrs: pd.Series) -> float:
    """Standard error of the mean of independent task means."""
    return float(np.sqrt((stderrs ** 2).sum()) / len(stderrs))


def accuracy_table(evals: Mapping[Setting, Evaluation], above: list[str] | None = None) -> pd.DataFrame:
    """One row per setting (method, allocation label, sparsity): accuracy per task, the
    average over all tasks (the paper's) with its standard error (the tasks' standard errors
    combined: ``sqrt(sum se_t^2) / T``), the average over ``above`` (tasks where the dense
    model is above chance), the mean gold margin with its standard error, and the perplexity."""
    rows = {}
    for setting, ev in evals.items():
        summary = summarize(ev.examples)
        row = summary["acc"].to_dict()
        row[AVERAGE] = summary["acc"].mean()
        row[f"{AVERAGE} stderr"] = _combined_stderr(summary["acc_stderr"])
        if above is not None:
            row[AVERAGE_ABOVE] = summary["acc"].reindex(above).mean() if above else np.nan
        row["margin"] = summary["margin"].mean()
        row["margin stderr"] = _combined_stderr(summary["margin_stderr"])
        row["perplexity"] = ev.perplexity
        row["n per task"] = int(summary["n"].min())
        rows[_key(setting)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["method", "allocation", "sparsity"])
    return out


def method_by_allocation(table: pd.DataFrame, column: str = AVERAGE, sparsity: float = 0.5) -> pd.DataFrame:
    """The paper's Table 2 / 5 layout: rows allocation, columns pruner + their average."""
    sub = table.xs(sparsity, level="sparsity")[column].unstack("method")
    names = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
    sub = sub[[m for m in names if m in sub.columns]].rename(columns=names)
    sub["Average"] = sub.mean(axis=1)
    sub.index.name = "allocation"
    return sub


def paired_comparison(a: Evaluation, b: Evaluation, seed: int = 0) -> dict:
    """``a`` against ``b`` on the same examples: accuracy difference with McNemar's exact
    test, mean margin difference with a paired bootstrap interval, perplexity ratio."""
    cols = ["correct", "margin"]
    joined = a.examples[cols].add_suffix("_a").join(b.examples[cols].add_suffix("_b"), how="inner")
    if len(joined) != len(a.examples) or len(joined) != len(b.examples):
        raise ValueError("a and b are invalid: expected evaluations of the same examples")
    mc = stats.mcnemar(joined["correct_a"].to_numpy(), joined["correct_b"].to_numpy())
    margin = stats.bootstrap_diff_ci(joined["margin_a"].to_numpy(), joined["margin_b"].to_numpy(),
                                     paired=True, seed=seed)
    return {"acc difference": mc.estimate, "McNemar p": mc.pvalue, "n": mc.n,
            "margin difference": margin.estimate, "margin CI low": margin.ci_low,
            "margin CI high": margin.ci_high, "margin p": margin.pvalue,
            "perplexity ratio": a.perplexity / b.perplexity}


def _find(evals: Mapping[Setting, Evaluation], **match) -> Evaluation:
    hits = [ev for s, ev in evals.items() if all(getattr(s, k) == v for k, v in match.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} evaluations match {match}: expected exactly one")
    return hits[0]


def table8(evals: Mapping[Setting, Evaluation], method: str, sparsities, baselines=("AlphaPruning", "Uniform", "OWL"),
           ours: str = "LayerIF") -> pd.DataFrame:
    """LayerIF against each baseline across sparsities (the paper's Table 8).

    Columns: average accuracy over the settings; the paper's test -- a paired t-test over the
    per-setting accuracies, a setting being one (sparsity, task) cell -- and ours over the
    same examples pooled across sparsities: McNemar's exact test on correctness and a paired
    bootstrap on the gold margin.
    """
    def cells(allocation):
        per = [summarize(_find(evals, method=method, allocation=allocation, sparsity=s, smooth=True,
                               epsilon=None, granularity="block", scores=POOL,
                               aggregation="positive").examples)["acc"] for s in sparsities]
        return pd.concat(per, keys=list(sparsities))

    def pooled(allocation):
        parts = [_find(evals, method=method, allocation=allocation, sparsity=s, smooth=True,
                       epsilon=None, granularity="block", scores=POOL,
                       aggregation="positive").examples for s in sparsities]
        return pd.concat(parts, keys=list(sparsities))

    mine, mine_ex = cells(ours), pooled(ours)
    rows = {ours: {"average accuracy": mine.mean()}}
    for base in baselines:
        theirs, theirs_ex = cells(base), pooled(base)
        t = stats.paired_t(mine.to_numpy(), theirs.to_numpy())
        pair = paired_comparison(Evaluation(mine_ex, 1.0), Evaluation(theirs_ex, 1.0))
        rows[base] = {"average accuracy": theirs.mean(), "LayerIF - baseline": mine.mean() - theirs.mean(),
                      "t-test p (per setting)": t.pvalue, "settings": t.n,
                      "McNemar p (per example)": pair["McNemar p"], "examples": pair["n"],
                      "margin difference": pair["margin difference"],
                      "margin CI low": pair["margin CI low"], "margin CI high": pair["margin CI high"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "allocation"
    return out


def smoothing_table(evals: Mapping[Setting, Evaluation], sparsity: float, epsilons, methods) -> pd.DataFrame:
    """The paper's Table 6: % change of the average accuracy, smoothed vs raw LayerIF, per
    epsilon (rows) and pruner, with the perplexity change and McNemar's p beside it."""
    rows = {}
    for eps in epsilons:
        for method in methods:
            kw = dict(method=method, allocation="LayerIF", sparsity=sparsity, epsilon=eps,
                      granularity="block", scores=POOL, aggregation="positive")
            smooth, raw = _find(evals, smooth=True, **kw), _find(evals, smooth=False, **kw)
            a_s, a_r = smooth.examples["correct"].groupby(level="task").mean().mean(), \
                raw.examples["correct"].groupby(level="task").mean().mean()
            pair = paired_comparison(smooth, raw)
            rows[(eps, method)] = {"% change accuracy": 100 * (a_s - a_r) / a_r,
                                   "% change perplexity": 100 * (smooth.perplexity - raw.perplexity) / raw.perplexity,
                                   "McNemar p": pair["McNemar p"],
                                   "margin difference": pair["margin difference"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["epsilon", "method"])
    return out


def granularity_table(evals: Mapping[Setting, Evaluation], sparsity: float, methods,
                      scores: str = POOL) -> pd.DataFrame:
    """Per-block against per-matrix LayerIF allocations from the same ``scores``, per pruner."""
    rows = {}
    for method in methods:
        kw = dict(method=method, allocation="LayerIF", sparsity=sparsity, epsilon=None,
                  smooth=True, scores=scores, aggregation="positive")
        block, matrix = _find(evals, granularity="block", **kw), _find(evals, granularity="matrix", **kw)
        a_b = summarize(block.examples)["acc"].mean()
        a_m = summarize(matrix.examples)["acc"].mean()
        pair = paired_comparison(block, matrix)
        rows[method] = {"per block": a_b, "per matrix": a_m,
                        "% change (block vs matrix)": 100 * (a_b - a_m) / a_m,
                        "McNemar p": pair["McNemar p"], "perplexity per block": block.perplexity,
                        "perplexity per matrix": matrix.perplexity,
                        "margin difference": pair["margin difference"],
                        "margin CI low": pair["margin CI low"], "margin CI high": pair["margin CI high"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


def task_specific_table(evals_by_task: Mapping[str, Mapping[Setting, Evaluation]], tasks) -> pd.DataFrame:
    """Each task on the models pruned with its own scores, the pooled scores and uniformly.

    ``evals_by_task[task]`` holds that task's three evaluations (one LayerIF setting whose
    ``scores`` is the task, one with the pooled scores, one Uniform), all on that task only.
    """
    rows = {}
    for task in tasks:
        evals = evals_by_task[task]
        own = _find(evals, allocation="LayerIF", scores=task)
        pool = _find(evals, allocation="LayerIF", scores=POOL)
        uniform = _find(evals, allocation="Uniform")
        vs_pool, vs_uni = paired_comparison(own, pool), paired_comparison(own, uniform)
        rows[task] = {"own scores": own.examples["correct"].mean(),
                      "pooled scores": pool.examples["correct"].mean(),
                      "uniform": uniform.examples["correct"].mean(),
                      "McNemar p (own vs pooled)": vs_pool["McNemar p"],
                      "margin own - pooled": vs_pool["margin difference"],
                      "margin CI low": vs_pool["margin CI low"],
                      "margin CI high": vs_pool["margin CI high"],
                      "McNemar p (own vs uniform)": vs_uni["McNemar p"],
                      "perplexity own / pooled": vs_pool["perplexity ratio"], "n": vs_pool["n"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "task"
    return out


def versus(evals: Mapping[Setting, Evaluation], ours: str, sparsity: float, methods,
           baselines=("Uniform", "AlphaPruning", "OWL")) -> pd.DataFrame:
    """:func:`paired_comparison` of allocation ``ours`` against each baseline, per pruner."""
    rows = {}
    for method in methods:
        kw = dict(method=method, sparsity=sparsity, epsilon=None, smooth=True, granularity="block",
                  scores=POOL, aggregation="positive")
        mine = _find(evals, allocation=ours, **kw)
        for base in baselines:
            rows[(method, base)] = paired_comparison(mine, _find(evals, allocation=base, **kw))
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["method", "baseline"])
    return out


def window_row(a: Evaluation, b: Evaluation, level: float = 0.05) -> dict:
    """One row of a per-window NLL table: ``a`` minus ``b`` in NLL per token (nats), paired over
    their windows (:func:`layerif.stats.paired_nll`), its ``1 - level`` interval, p, windows."""
    t = stats.paired_nll(a.windows, b.windows, level=1 - level)
    return {"NLL difference": t.estimate, "CI low": t.ci_low, "CI high": t.ci_high, "p": t.pvalue,
            "windows": t.n}


def window_pairs_table(windows: Mapping[str, Mapping[Setting, Evaluation]], pairs: Mapping,
                       names, level: float = 0.05) -> pd.DataFrame:
    """Per model of ``windows`` ({model: {Setting: Evaluation}}), one :func:`window_row` of ``a``
    minus ``b`` per ``key -> (a, b)`` of ``pairs``, the keys indexed by ``names``."""
    def table(w: Mapping[Setting, Evaluation]) -> pd.DataFrame:
        rows = {key: window_row(w[a], w[b], level) for key, (a, b) in pairs.items()}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis(names)

    return by_model({model: table(w) for model, w in windows.items()}).round(4)


def window_sides(table: pd.DataFrame) -> tuple[int, int]:
    """How many rows of a per-window NLL table (:func:`window_row`) have their interval
    below 0 and above 0."""
    return int((table["CI high"] < 0).sum()), int((table["CI low"] > 0).sum())


def window_line(table: pd.DataFrame, a: str, b: str, of: str) -> str:
    """The summary sentence of a per-window NLL table (:func:`window_row` rows of ``a`` minus
    ``b``): how many intervals lie below and above 0, out of ``of`` (e.g. ``"pruners"``)."""
    lower, higher = window_sides(table)
    return (f"Per-window NLL ({int(table['windows'].min())} windows): {a} significantly lower than {b} "
            f"for {lower} and significantly higher for {higher} of {len(table)} {of}.")


def window_versus(evals: Mapping[Setting, Evaluation], ours: str, baselines, level: float = 0.05) -> pd.DataFrame:
    """Allocation ``ours`` against each baseline on the per-window NLL per token, for every
    (pruner, sparsity) where both were evaluated with windows kept: the paired t test over
    windows (:func:`layerif.stats.paired_nll`): difference (nats, ``ours - baseline``), its
    ``1 - level`` interval, p and the number of windows."""
    rows = {}
    for setting, mine in evals.items():
        if setting.allocation != ours:
            continue
        for base in baselines:
            other = evals.get(Setting(setting.method, base, setting.sparsity))
            if other is None:
                continue
            rows[(setting.method, setting.sparsity, base)] = window_row(mine, other, level)
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["method", "sparsity", "baseline"])
    return out


def wins(paired: pd.DataFrame, level: float = 0.05) -> dict[str, int]:
    """How many of the comparisons of :func:`versus` LayerIF wins / loses significantly."""
    sig = paired["McNemar p"] < level
    return {"comparisons": len(paired),
            "higher accuracy": int((paired["acc difference"] > 0).sum()),
            "significantly better": int((sig & (paired["acc difference"] > 0)).sum()),
            "significantly worse": int((sig & (paired["acc difference"] < 0)).sum()),
            "margin CI above 0": int((paired["margin CI low"] > 0).sum()),
            "margin CI below 0": int((paired["margin CI high"] < 0).sum()),
            "lower perplexity": int((paired["perplexity ratio"] < 1).sum())}


def perplexity_wins(table: pd.DataFrame, ours: str = "LayerIF") -> dict:
    """In how many (pruner, sparsity) settings allocation ``ours`` has the lowest perplexity.

    ``table`` is :func:`accuracy_table`; only settings where every one of
    :data:`~layerif.experiments.pruning.ALLOCATIONS` was evaluated count. The test is the
    one-sided binomial test of the win count against ``1 / len(ALLOCATIONS)``, the rate if the
    allocations were exchangeable. Settings share the scores and the evaluation text, so they
    are not independent: read the p-value as a description, not a guarantee.
    """
    ppl = table["perplexity"].drop(index="dense", level="method", errors="ignore")
    wide = ppl.unstack("allocation").reindex(columns=list(ALLOCATIONS)).dropna()
    wins = (wide.idxmin(axis=1) == ours).to_numpy()
    test = stats.above_rate(wins, 1 / len(ALLOCATIONS)) if len(wins) >= 2 else None
    return {"settings": len(wins), "wins": int(wins.sum()),
            "p": np.nan if test is None else test.pvalue,
            "settings list": [f"{m} {sp:g}" for m, sp in wide.index]}


def aggregation_table(evals: Mapping[Setting, Evaluation], method: str, sparsity: float) -> pd.DataFrame:
    """LayerIF's three aggregations (and Uniform) for one pruner: average accuracy, margin,
    perplexity, and each against "+ve" on the same examples."""
    kw = dict(method=method, sparsity=sparsity, epsilon=None, smooth=True, granularity="block",
              scores=POOL)
    positive = _find(evals, allocation="LayerIF", aggregation="positive", **kw)
    rows = {}
    candidates = [(f"LayerIF ({a})", _find(evals, allocation="LayerIF", aggregation=a, **kw))
                  for a in ("positive", "top", "all")]
    candidates.append(("Uniform", _find(evals, allocation="Uniform", aggregation="positive", **kw)))
    for name, ev in candidates:
        summary = summarize(ev.examples)
        pair = paired_comparison(ev, positive)
        rows[name] = {"average accuracy": summary["acc"].mean(), "margin": summary["margin"].mean(),
                      "perplexity": ev.perplexity, "acc - (+ve)": pair["acc difference"],
                      "McNemar p vs +ve": pair["McNemar p"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "allocation"
    return out


def by_model(parts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-model tables stacked under a ``model`` index level (an empty frame when none)."""
    return pd.concat(parts, names=["model"]) if parts else pd.DataFrame()


def paper_pair(table_id: str, ours: str, base: str, column: str) -> str:
    """The paper's two numbers of a comparison: ``58.10 vs 56.41 (table2, Average)``."""
    t = paper.table(table_id)
    return f"{t.at[ours, column]:.2f} vs {t.at[base, column]:.2f} ({table_id}, {column})"
