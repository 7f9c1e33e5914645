"""Notebook 09's verdicts: each part's tables -> one structured verdict per subject (pure).

Every function takes tables notebook 09 already computes and returns a frame of
:data:`COLUMNS`, one row per subject (a trained block, a task and method, a model, ...):
the claim, the statistic that decides it, its value and interval (``low``/``high``, what they
are in ``interval``), the rule (``criterion``), a verdict among
:data:`layerif.experiments.verdict.VERDICTS` and the sentence the notebook prints.
Notebook 10 shows the same rows as :class:`~.verdict.Verdict` rows
(:func:`.influence_validation.verdicts`).

Every verdict is :func:`.verdict.interval_verdict` of the part's interval (the study's five
verdicts; the rule for threshold claims is stated in :mod:`.verdict`), by part:

1. the approximation holds when DataInf's '+ve' block scores rank blocks as the exact
   inverse's do (Spearman >= :data:`APPROX_HOLDS` at the default damping), else not
   (one value: untestable only when undefined);
2. and 3. a correlation "predicts" when its bootstrap interval lies above 0, predicts the
   opposite when it lies below 0, and is underpowered when it includes 0 (a confidence
   interval: more examples or blocks could decide);
4. and 5. a ranking is stable (or settled) when its agreement reaches a threshold in every
   case, unstable when it stays below :data:`UNSTABLE` in every case, else ruled out at this
   scale (a range over cases: some case falls short of the threshold).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._config import check
from .verdict import (DISTINCT, HELD, NOT_HELD, RULED_OUT, SHARED, UNDERPOWERED, UNTESTABLE,
                      interval_verdict)

__all__ = ["APPROX_HOLDS", "COLUMNS", "SETTLED", "STABLE", "UNSTABLE", "approximation_verdict",
           "gain_verdicts", "loo_verdicts", "stability_verdicts", "sweep_verdict"]

COLUMNS = ["part", "claim", "model", "subject", "statistic", "value", "low", "high", "interval",
           "criterion", "verdict", "sentence"]
#: Part 1: an allocation only uses the ranking of the block scores; at a Spearman of 0.9 with
#: the exact inverse's ranking few experts move (notebook 09's criterion since its first run).
APPROX_HOLDS = 0.9
#: Part 4: notebook 01's reading of a mean pairwise Spearman (profiles "largely shared" above
#: 0.8, "distinct" below 0.5), applied to the same block ranking under resampled examples.
STABLE, UNSTABLE = SHARED, DISTINCT
#: Part 5: scores at fewer examples have "settled" when they rank blocks as the largest n does
#: as closely as part 1 asks DataInf to match the exact inverse.
SETTLED = APPROX_HOLDS


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def approximation_verdict(agreement: pd.DataFrame, damping: float, model: str = "") -> pd.DataFrame:
    """Part 1 from :func:`.approximation.approximation_table`: does DataInf rank blocks as the
    exact inverse does, at the default ``damping``? (``low``/``high``: over the damping sweep.)"""
    dampings = agreement.index.get_level_values("damping")
    check(float(damping) in set(dampings), "damping", damping, f"one of {sorted(set(dampings))}")
    default = agreement.xs(damping, level="damping")
    di, hf = default.loc["datainf", "scores_positive"], default.loc["hessian_free", "scores_positive"]
    sweep = agreement.xs("datainf", level="method")["scores_positive"]
    value = float(di)
    verdict = interval_verdict(value, value, at_least=APPROX_HOLDS, below=APPROX_HOLDS, over="cases")
    word = {HELD: "holds", NOT_HELD: "does NOT hold", UNTESTABLE: "cannot be judged (undefined)"}
    closer = "Hessian-free" if hf > di else "DataInf"
    sentence = (f"Verdict: at the block level the DataInf approximation {word[verdict]} here "
                f"(criterion: Spearman of '+ve' block scores with exact >= {APPROX_HOLDS} at the "
                f"default damping); of the two cheap methods, {closer}'s block scores are closer "
                f"to the exact ones.")
    return _frame([{
        "part": "approximation", "model": model, "subject": f"damping {damping:g}",
        "claim": "DataInf approximates the exact inverse at block level",
        "statistic": "Spearman across blocks of DataInf's and the exact inverse's '+ve' scores",
        "value": value, "low": float(sweep.min()), "high": float(sweep.max()),
        "interval": "range over the damping sweep",
        "criterion": f"held: >= {APPROX_HOLDS}; not held: below", "verdict": verdict,
        "sentence": sentence}])


_NAMES = {"datainf": "DataInf", "hessian_free": "Hessian-free", "exact": "the exact inverse",
          "positive": "+ve"}
_PREDICTS = {HELD: ("predicts", "CI excludes 0"),
             NOT_HELD: ("predicts the OPPOSITE of", "CI below 0"),
             UNDERPOWERED: ("does NOT reliably predict", "CI includes 0"),
             RULED_OUT: ("does NOT predict", "CI reaches 0, not above it"),
             UNTESTABLE: ("cannot be judged on", "no CI")}
_CI_CRITERION = "held: CI above 0; not held: below 0; else underpowered (CI contains 0)"


def loo_verdicts(loo_table: pd.DataFrame, predictor: str = "datainf", model: str = "") -> pd.DataFrame:
    """Part 2 from :func:`.retraining.loo_summary`: does ``predictor`` predict leave-one-out
    retraining? One row per trained block (its bootstrap CI over examples)."""
    rows = []
    for block, t in loo_table.groupby(level="block"):
        t = t.droplevel("block")
        check(predictor in t.index, "predictor", predictor, f"one of {list(t.index)}")
        r, noise = t.loc[predictor], t.iloc[0]
        verdict = interval_verdict(r["ci_low"], r["ci_high"])
        best = t["spearman"].dropna()
        best = best.idxmax() if len(best) else "none (undefined correlations)"
        word, ci = _PREDICTS[verdict]
        sentence = (f"Retraining noise: seeds agree with Spearman {noise['seed_spearman']:.2f}; "
                    f"noise/signal {noise['noise_to_signal']:.2f}. Best predictor: {best}. Verdict: "
                    f"{_NAMES.get(predictor, predictor)} {word} leave-one-out retraining of "
                    f"block {block} here ({ci}).")
        rows.append({
            "part": "retraining", "model": model, "subject": f"block {block}",
            "claim": "predicted influence matches leave-one-out retraining",
            "statistic": f"Spearman of {predictor}'s prediction with the retrained change "
                         f"(seed mean, {int(r['n'])} examples)",
            "value": float(r["spearman"]), "low": float(r["ci_low"]), "high": float(r["ci_high"]),
            "interval": "bootstrap CI over examples",
            "criterion": _CI_CRITERION,
            "verdict": verdict, "sentence": sentence})
    return _frame(rows)


_GAIN = {HELD: "predicts the gain, as the paper reads it (CI above 0)",
         NOT_HELD: "ranks blocks OPPOSITE to the gain (CI below 0)",
         UNDERPOWERED: "shows no evidence of predicting the gain (CI includes 0)",
         RULED_OUT: "shows no evidence of predicting the gain (CI reaches 0, not above it)",
         UNTESTABLE: "cannot be judged (no CI)"}


def gain_verdicts(gain_tables: dict, methods=("datainf", "hessian_free"),
                  aggregation: str = "positive", model: str = "") -> pd.DataFrame:
    """Part 3 from ``task -> ``:func:`.retraining.gains_summary`: does |S_l| rank blocks by the
    gain of fine-tuning each alone? One row per task and method."""
    rows = []
    for task, t in gain_tables.items():
        for method in methods:
            check((method, aggregation) in t.index, "methods", method, "a method of the gain table")
            r = t.loc[(method, aggregation)]
            verdict = interval_verdict(r["ci_low"], r["ci_high"])
            extra = {a: t.loc[(method, a), "spearman"] if (method, a) in t.index else np.nan
                     for a in ("top", "all")}
            sentence = (f"{task}, {method}: Spearman(|S_l| '{_NAMES.get(aggregation, aggregation)}', gain) = "
                        f"{r['spearman']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] over "
                        f"{int(r['n_blocks'])} blocks (top 25%: {extra['top']:.2f}, all: "
                        f"{extra['all']:.2f}). Verdict: |S_l| {_GAIN[verdict]}.")
            rows.append({
                "part": "gain", "model": model, "subject": f"{task}, {method}",
                "claim": "|S_l| predicts the gain of training a block (the paper's reading)",
                "statistic": f"Spearman across {int(r['n_blocks'])} blocks of {method}'s "
                             f"|S_l| ('{aggregation}') with the block-alone gain",
                "value": float(r["spearman"]), "low": float(r["ci_low"]),
                "high": float(r["ci_high"]), "interval": "bootstrap CI over blocks",
                "criterion": _CI_CRITERION,
                "verdict": verdict, "sentence": sentence})
    return _frame(rows)


_STABLE = {HELD: "stable", NOT_HELD: "NOT stable", RULED_OUT: "neither clearly stable nor unstable",
           UNTESTABLE: "undefined"}
_STABILITY_CRITERION = (f"held: every case >= {STABLE}; not held: every case < {UNSTABLE}; "
                        "else ruled out at this scale (a case falls short)")


def stability_verdicts(stability: dict, subsets: dict, model: str = "") -> pd.DataFrame:
    """Part 4: are the block rankings (hence allocations) stable? One row per model from
    ``model -> ``:func:`.approximation.score_stability` (resampled training examples, the
    replicates' mean Spearman per task) and one from :func:`.validation.subset_stability`
    (disjoint validation subsets of ``model``'s setting, pairwise Spearman)."""
    rows = []
    for m, (blocks, summary) in stability.items():
        rank = summary["rank_stability"].astype(float)
        changed = blocks.groupby(level="task")["experts_changed"].mean().mean()
        verdict = interval_verdict(rank.min(), rank.max(), at_least=STABLE, below=UNSTABLE, over="cases")
        rows.append({
            "part": "stability", "model": m, "subject": "resampled training examples",
            "statistic": f"mean Spearman between bootstrap replicates' block scores, {len(rank)} tasks",
            "value": float(rank.mean()), "low": float(rank.min()), "high": float(rank.max()),
            "interval": "range over tasks", "sentence": (
                f"{m}: rank stability of the block scores (mean Spearman between replicates) "
                f"{rank.min():.2f}..{rank.max():.2f} over {len(rank)} tasks; a block's expert "
                f"count changes in {changed:.0%} of replicates on average; "
                f"{summary['experts_moved'].mean():.1%} of experts move. Verdict: the ranking is "
                f"{_STABLE[verdict]} under resampled training examples."), "verdict": verdict})
    low, high = subsets["min_pairwise_spearman"], subsets["max_pairwise_spearman"]
    verdict = interval_verdict(low, high, at_least=STABLE, below=UNSTABLE, over="cases")
    rows.append({
        "part": "stability", "model": model, "subject": "disjoint validation subsets",
        "statistic": f"pairwise Spearman of the block scores, {subsets['n_subsets']} subsets",
        "value": float(subsets["mean_pairwise_spearman"]), "low": float(low), "high": float(high),
        "interval": "range over pairs of subsets", "verdict": verdict, "sentence": (
            f"Disjoint validation subsets ({subsets['n_subsets']}): mean pairwise Spearman "
            f"{subsets['mean_pairwise_spearman']:.2f} (min {low:.2f}, max {high:.2f}), "
            f"{subsets['mean_experts_moved']:.1%} of experts move between subsets. Verdict: the "
            f"ranking is {_STABLE[verdict]} across validation subsets.")})
    for r in rows:
        r.update(claim="the block scores' ranking (hence the allocations) is stable",
                 criterion=_STABILITY_CRITERION)
    return _frame(rows)


def sweep_verdict(sweep: pd.DataFrame, model: str = "") -> pd.DataFrame:
    """Part 5 from :func:`.validation.sweep_table`: do the scores settle before the largest n?
    ``value`` is the largest smaller n's Spearman with it; ``low``/``high`` range over the
    smaller n; the sentence names the smallest n from which every n reaches :data:`SETTLED`."""
    ref = int(sweep["reference_n"].iloc[0])
    smaller = sweep.drop(index=ref, errors="ignore")["spearman"].astype(float).sort_index()
    check(len(smaller) > 0, "sweep", f"{len(sweep)} rows", "a size smaller than the largest")
    value = float(smaller.iloc[-1])
    verdict = interval_verdict(value, value, at_least=SETTLED, below=UNSTABLE, over="cases")
    below = smaller.index[~(smaller >= SETTLED)]
    after = smaller.index[smaller.index > below.max()] if len(below) else smaller.index
    enough = (f"from n = {int(after.min())} on every n reaches it" if len(after)
              else "no smaller n reaches it")
    word = {HELD: "have settled", NOT_HELD: "have NOT settled",
            RULED_OUT: "have not clearly settled", UNTESTABLE: "cannot be judged (undefined)"}
    sentence = (f"Verdict: the block scores {word[verdict]} before n = {ref} (criterion: Spearman "
                f"with n = {ref} >= {SETTLED} at n = {int(smaller.index[-1])}, below {UNSTABLE} = "
                f"not settled); {enough}.")
    return _frame([{
        "part": "n_sweep", "model": model, "subject": f"n = {int(smaller.index[-1])} vs {ref}",
        "claim": f"fewer than {ref} training examples give the same block ranking",
        "statistic": f"Spearman of DataInf's block scores at n = {int(smaller.index[-1])} with n = {ref}",
        "value": value, "low": float(smaller.min()), "high": float(smaller.max()),
        "interval": "range over the smaller n",
        "criterion": f"held: >= {SETTLED}; not held: < {UNSTABLE}; else ruled out at this scale",
        "verdict": verdict, "sentence": sentence}])
