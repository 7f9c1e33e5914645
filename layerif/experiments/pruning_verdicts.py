"""The pruning claims (notebooks 05, 07, 08) decided by the study's one rule for a comparison.

A claim "A beats B by the paper's d" (Tables 2, 5, 8, Table 6's smoothing, per block vs per
matrix) is decided on ONE measure whose interval and d share a unit:

* **measure**: accuracy in points (the paper's), A minus B on the same examples, the
  examples of every pruner (or cell) pooled;
* **interval**: the Wald interval of a difference of paired proportions at ``1 - level``
  (:func:`layerif.stats.mcnemar`; p: its exact McNemar test); with no discordant pair,
  where it collapses to [0, 0], +-the Clopper-Pearson upper limit of the discordance rate;
* **MDE and n needed**: the exact McNemar test's at the observed discordance
  (:func:`layerif.power.mcnemar_mde`, :func:`~layerif.power.mcnemar_n_needed`), n counted in
  pooled examples;
* **untestable here** when the dense model is not above chance on the pooled tasks, or
  neither compared model is: the one-sided binomial test of the pooled correctness against
  the pooled chance (the mean of 1 / number of choices; :func:`.verdict.untestable_reason`);
* **the sensitive measure**, the gold choice's log-likelihood margin (nats, paired bootstrap,
  :func:`.pruning_tables.paired_comparison`), is shown in the test column beside it; it does
  not decide (no d in nats exists).

The verdict is :func:`.verdict.decide_effect`.

Each accuracy claim of Tables 2 / 5 is also decided on the **sensitive measure**, the
held-out NLL per token, paired over perplexity windows (:func:`window_comparison`): the same
windows for every model, each pruner's LayerIF - baseline difference averaged
per window, then :func:`layerif.stats.paired_nll` (interval, p, MDE and n in windows). The
paper reports no perplexity, so its claim there is a sign; d (:func:`nll_d`) carries the
table's *relative* accuracy gain over to the same relative drop in perplexity, ``ln(1 - r)``
nats per token, fixed before any window is read.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from .. import paper, stats
from ..evaluate.suite import Evaluation
from .pruning_tables import paired_comparison
from .verdict import Verdict, decide_effect, decided, untestable_reason

__all__ = ["NLL_TEST", "TEST", "chance_reason", "comparison", "margin_text", "nll_d", "nll_row", "paper_d",
           "pooled", "rate_interval", "row", "window_comparison", "window_mean"]

TEST = "exact McNemar, Wald interval of paired accuracies (pooled examples)"
#: The per-window NLL test, with the contrast of its row (e.g. ``LayerIF - baseline``).
NLL_TEST = "paired t over perplexity windows of the NLL per token ({contrast}, averaged per window)"


def paper_d(table_id: str, ours: str, base: str, column: str) -> float:
    """The paper's ``ours - base`` in accuracy points from one printed table."""
    t = paper.table(table_id)
    return float(t.at[ours, column] - t.at[base, column])


def pooled(evaluations, keys) -> Evaluation:
    """One evaluation's worth of examples: each evaluation's examples under its key."""
    return Evaluation(pd.concat([e.examples for e in evaluations], keys=list(keys)), float("nan"))


def _chance(examples: pd.DataFrame) -> float:
    return float((1.0 / examples["n_choices"]).mean())


def chance_reason(dense: Evaluation | None, a: Evaluation, b: Evaluation, level: float = 0.05) -> str | None:
    """Why accuracy cannot test ``a`` against ``b`` here (the module docstring), or None.
    ``dense`` is restricted to the tasks of ``a``'s examples (index level ``task``)."""
    if dense is not None:
        tasks = a.examples.index.get_level_values("task").unique()
        ex = dense.examples[dense.examples.index.get_level_values("task").isin(tasks)]
        why = untestable_reason(ex["correct"].to_numpy(bool), _chance(ex), level=level)
        if why is not None:
            return why.replace("base model", "dense model") + " (pooled tasks)"
    tests = [stats.above_rate(e.examples["correct"].to_numpy(bool), _chance(e.examples)) for e in (a, b)]
    if not any(t.pvalue < level for t in tests):
        return (f"neither pruned model is above chance on the pooled tasks (accuracy "
                f"{tests[0].estimate:.3f} and {tests[1].estimate:.3f} vs chance {_chance(a.examples):.3f})")
    return None


def comparison(a: Evaluation, b: Evaluation, effect: float, level: float = 0.05,
               dense: Evaluation | None = None, untestable: str | None = None) -> dict:
    """``a`` against ``b`` on the same examples for a claimed ``effect`` in accuracy points:
    the McNemar result (``test``, fractions), the margin comparison (``margin``), the
    decision (``decision``, points) and why it is untestable (``untestable``, or None)."""
    pair = paired_comparison(a, b)
    joined = a.examples[["correct"]].join(b.examples[["correct"]].add_suffix("_b"), how="inner")
    test = stats.mcnemar(joined["correct"].to_numpy(bool), joined["correct_b"].to_numpy(bool),
                         level=1 - level, effect=effect / 100)
    untestable = untestable or chance_reason(dense, a, b, level)
    if not (joined["correct"] != joined["correct_b"]).any():
        # no discordant pair: the Wald interval collapses to [0, 0]; |difference| is at most the
        # discordance rate, bounded by its Clopper-Pearson upper limit (0 of n)
        bound = stats.above_rate(np.zeros(len(joined), bool), 0.0, level=1 - level).ci_high
        test = dataclasses.replace(test, ci_low=-bound, ci_high=bound)
    decision = decide_effect(100 * test.ci_low, 100 * test.ci_high, effect, mde=100 * test.mde,
                             n_needed=test.n_needed, untestable=untestable)
    return {"test": test, "margin": pair, "decision": decision, "untestable": untestable}


def margin_text(pair: dict) -> str:
    """The sensitive measure as the test column shows it (nats)."""
    return (f"sensitive: gold margin {pair['margin difference']:+.2f} nats "
            f"[{pair['margin CI low']:+.2f}, {pair['margin CI high']:+.2f}] (paired bootstrap)")


def row(found: dict, *, claim: str, model: str, where: str, paper_value: str, ours: str,
        notebook: str, test: str = TEST, note: str = "") -> Verdict:
    """The :class:`Verdict` of a :func:`comparison` (accuracy points; n in pooled examples);
    ``note`` (e.g. which d and why) is added to the test column, then the margin and, when
    untestable, the reason."""
    t, why = found["test"], found["untestable"]
    parts = [test, note, margin_text(found["margin"]), f"untestable: {why}" if why else ""]
    return decided(found["decision"], 100 * t.ci_low, 100 * t.ci_high, unit="points", n_unit="examples",
                   claim=claim, model=model, where=where, paper=paper_value, ours=ours,
                   test="; ".join(p for p in parts if p), p=float(t.pvalue), notebook=notebook,
                   statistic=float(100 * t.estimate))


def rate_interval(wins: int, n: int, level: float = 0.05) -> tuple[float, float]:
    """The Clopper-Pearson interval at ``1 - level`` of ``wins`` out of ``n`` (NaN when n < 2)."""
    if n < 2:
        return np.nan, np.nan
    res = stats.above_rate(np.arange(n) < wins, 0.0, level=1 - level)
    return res.ci_low, res.ci_high



def nll_d(table_id: str, ours: str, base: str, column: str) -> float:
    """The NLL d of a printed accuracy claim (the module docstring): ``ln(1 - r)`` nats per
    token, ``r`` the table's relative gain ``(ours - base) / base``; negative: lower NLL."""
    t = paper.table(table_id)
    return math.log(1.0 - (float(t.at[ours, column]) - float(t.at[base, column])) / float(t.at[base, column]))


def window_mean(evaluations) -> pd.DataFrame:
    """One per-window frame from several evaluations on the same windows: the mean of their
    ``nll_sum`` per window (the token counts, equal across them, kept)."""
    frames = [e.windows for e in evaluations]
    if any(f is None for f in frames):
        raise ValueError("evaluations=... hold no per-window NLL: evaluate them with windows kept")
    tokens = frames[0]["n_tokens"]
    if any(not f["n_tokens"].equals(tokens) for f in frames[1:]):
        raise ValueError("evaluations=... are not on the same windows (token counts differ)")
    return pd.DataFrame({"nll_sum": sum(f["nll_sum"] for f in frames) / len(frames), "n_tokens": tokens})


def window_comparison(a: pd.DataFrame, b: pd.DataFrame, effect: float, level: float = 0.05) -> dict:
    """``a`` against ``b`` (per-window frames, :func:`window_mean`) for a claimed NLL
    ``effect`` (negative: ``a`` lowers it): the :func:`~layerif.stats.paired_nll` result
    (``test``) and the decision (``decision``, nats per token)."""
    test = stats.paired_nll(a, b, level=1 - level, effect=effect)
    decision = decide_effect(test.ci_low, test.ci_high, effect, mde=test.mde, n_needed=test.n_needed)
    return {"test": test, "decision": decision}


def window_verdict(windows: dict, a, b, effect: float, level: float = 0.05, **row) -> Verdict:
    """The :func:`nll_row` of settings ``a`` against settings ``b`` (each group's evaluations in
    ``windows`` averaged per window, :func:`window_mean`) for a claimed NLL ``effect``."""
    found = window_comparison(window_mean([windows[s] for s in a]), window_mean([windows[s] for s in b]),
                              effect, level)
    return nll_row(found, **row)


def nll_row(found: dict, *, claim: str, model: str, where: str, paper_value: str, notebook: str,
            what: str, note: str, contrast: str = "LayerIF - baseline") -> Verdict:
    """The :class:`Verdict` of a :func:`window_comparison`; ``what`` says what was averaged per
    window (e.g. ``3 pruners``), ``note`` which d and why, ``contrast`` what is subtracted from
    what (the test column)."""
    t = found["test"]
    return decided(found["decision"], t.ci_low, t.ci_high, unit="nats", n_unit="windows", decimals=4,
                   claim=claim, model=model, where=where, paper=paper_value,
                   ours=f"{t.estimate:+.4f} nats per token over {t.n} windows ({what})",
                   test=f"{NLL_TEST.format(contrast=contrast)}; {note}", p=float(t.pvalue), notebook=notebook,
                   statistic=float(t.estimate))
