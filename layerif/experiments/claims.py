"""The paper's claims, one row each, decided from the study's saved results (notebook 10).

Every claim function reads what a notebook saved (through :mod:`.saved`: nothing is
recomputed), with that notebook's parameters for the profile, through the same table
functions the notebook shows, and returns rows of :data:`COLUMNS`: the claim, where the paper
makes it, the paper's number (read from :mod:`layerif.paper`), ours, the test that decides,
its p-value and interval, and a verdict among :data:`VERDICTS`, decided by a stated rule:

* a paired comparison (``ours`` better than a baseline) is **held** when the difference is
  positive and significant at ``level`` (every test named in the row), **not held** when it is
  negative and significant, and **inconclusive at this scale** otherwise -- also when the
  difference is no larger than the seed-to-seed spread of the same study
  (:func:`layerif.experiments.verdict.decide`);
* a claim over several cells (Table 6) uses the one-sided sign test of the cells' directions;
* a claim about a correlation uses its bootstrap interval against stated thresholds.

:func:`claims_table` assembles every claim for a profile and raises :class:`.MissingResult`
listing everything absent. Notebook 09's "beyond the paper" findings come as rows too: its
own verdicts (:mod:`.validation_verdicts`) on its saved results (:func:`validation_claim`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import paper, stats, store, study
from .._config import check
from ..evaluate.suite import Evaluation
from . import approximation, moe_tables, pruning, pruning_tables, retraining, saved, validation
from . import validation_verdicts as vv
from .cache import slug
from .scoring import POOL, profile_similarity
from .verdict import (DISTINCT, HELD, INCONCLUSIVE, NOT_HELD, SHARED, VERDICTS, agreement_verdict,
                      decide, profile_verdict, sign_verdict)

__all__ = ["CLAIMS", "COLUMNS", "MOE_FAMILIES", "VALIDATION_WHERE", "VERDICTS", "claims_table",
           "granularity_claim", "hessian_free_claim", "moe_claim", "perplexity_claim",
           "profile_claim", "profile_interval", "pruning_claim", "smoothing_claim", "table8_claim",
           "task_specific_claim", "validation_claim", "validation_rows"]

COLUMNS = ["claim", "model", "where", "paper", "ours", "test", "p-value", "interval", "verdict",
           "notebook"]
MOE_FAMILIES = moe_tables.FAMILIES  # notebook 03's baseline families (Table 7's rows)
VALIDATION = "09_influence_validation"
#: Notebook 09's parts (:mod:`.validation_verdicts`): where each stands against the paper.
VALIDATION_WHERE = {
    "approximation": ("beyond the paper (its method assumes it)", "not in paper"),
    "retraining": ("beyond the paper (it never retrains)", "not in paper"),
    "gain": ("beyond the paper (its reading: larger |S_l| = less well trained block)",
             "read, not measured"),
    "stability": ("beyond the paper (its stated limitation: the examples drawn)", "not in paper"),
    "n_sweep": ("beyond the paper (it scores 300 training examples)", "not in paper")}


def _row(claim, model, where, paper_value, ours, test, p, interval, verdict, notebook) -> dict:
    return dict(zip(COLUMNS, [claim, model, where, paper_value, ours, test, float(p), interval,
                              verdict, notebook]))


def _ci(lo: float, hi: float, scale: float = 1.0, unit: str = "") -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undefined"
    return f"[{scale * lo:+.2f}, {scale * hi:+.2f}]{unit}"


def _paper_pair(table_id: str, ours: str, base: str, column: str) -> str:
    t = paper.table(table_id)
    return f"{t.at[ours, column]:.2f} vs {t.at[base, column]:.2f} ({table_id}, {column})"


# ------------------------------------------------------------------ Fig. 1: task profiles

def profile_interval(profiles: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval (at ``level``) of the mean pairwise Spearman between task profiles (rows),
    resampling blocks (columns) with replacement."""
    reps = []
    for idx in stats.bootstrap_indices(profiles.shape[1], n_boot, seed):
        part = profiles.iloc[:, idx].T.reset_index(drop=True).T
        value = profile_similarity(part)[1].get("mean pairwise Spearman", np.nan)
        reps.append(value)
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    return stats.percentile_ci(reps, level) if len(reps) >= 10 else (np.nan, np.nan)


def profile_claim(results, params: dict, profile: str | None = None, level: float = 0.05,
                  n_boot: int = 1000) -> list[dict]:
    """Fig. 1: one model gives different layer profiles on different tasks (notebook 01);
    the interval is at ``1 - level``."""
    rows = []
    for model in params["sizes"]:
        found = saved.scores(results, model, saved.score_labels(params["tasks"]), profile=profile)
        frame = pd.DataFrame({k: s.aggregate("positive") / s.aggregate("positive").abs().max()
                              for k, s in found.items()}).T
        summary = profile_similarity(frame)[1]
        lo, hi = profile_interval(frame, n_boot, level=1 - level)
        rows.append(_row("the same model gives task-specific layer profiles", model,
                         "Fig. 1 (Fig. 4)", "no number (heatmaps)",
                         f"mean pairwise Spearman {summary['mean pairwise Spearman']:.2f} over "
                         f"{int(summary['tasks'])} tasks",
                         "bootstrap over blocks: interval below 0.5 = distinct, above 0.8 = shared",
                         np.nan, _ci(lo, hi), profile_verdict(lo, hi), "01_layer_scores"))
    return rows


# ------------------------------------------------------------------ Tables 1, 4, 7: LoRA-MoE

def moe_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Tables 1 / 4 / 7 and Fig. 2: LayerIF's experts beat AlphaLoRA's and MoLA's (notebook 03),
    with the notebook's tables (:func:`moe_tables.versus`) and its seed-spread rule."""
    ours, rows = params.get("ours", "LayerIF +ve"), []
    for model in params["plans"]:
        runs = saved.moe_runs(results, model, params, profile)
        spread = moe_tables.seed_spread(runs)
        noise = float(spread["range"].mean()) if len(spread) else np.nan
        budgets = sorted({s.per_block for s in runs if s.method != "Base model"})
        t7 = moe_tables.versus(runs, ours, MOE_FAMILIES, budgets, noise)
        for family, r in t7.drop(index=ours).iterrows():
            diff, p_t, p_b = r[f"{ours} - baseline"], r["t-test p (per setting)"], r["bootstrap p"]
            rows.append(_row(
                f"LayerIF allocation beats {family} (LoRA-MoE)", model, "Tables 1, 4, 7; Fig. 2",
                _paper_pair("table7", "LayerIF", family, "Average Accuracy"),
                f"{100 * diff:+.1f} points over {int(r['settings'])} settings "
                f"(seed spread {100 * noise:.1f})",
                "paired bootstrap over examples (and paired t over settings)",
                p_b, _ci(r["bootstrap CI low"], r["bootstrap CI high"], 100, " points"),
                decide(diff, [p_b, p_t], level, noise), "03_lora_moe"))
    return rows


# ------------------------------------------------------------------ Tables 2, 5, 8: pruning

def _pooled(evals: list[Evaluation], keys) -> Evaluation:
    return Evaluation(pd.concat([e.examples for e in evals], keys=list(keys)), float("nan"))


def _paired_row(claim, model, where, paper_value, a: list, b: list, keys, notebook, level,
                extra_p=()) -> dict:
    pair = pruning_tables.paired_comparison(_pooled(a, keys), _pooled(b, keys))
    diff = pair["acc difference"]
    return _row(claim, model, where, paper_value,
                f"{100 * diff:+.1f} accuracy points over {pair['n']} paired examples",
                "McNemar exact (pooled examples); margin: paired bootstrap", pair["McNemar p"],
                _ci(pair["margin CI low"], pair["margin CI high"], 1, " nats margin"),
                decide(diff, [pair["McNemar p"], *extra_p], level), notebook)


def pruning_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Tables 2 / 5: LayerIF's sparsity beats Uniform, AlphaPruning and OWL at 50% (notebook
    05), every pruner's examples pooled into one paired comparison per baseline."""
    rows, sp, methods = [], params["sparsity"], params["methods"]
    for model, table_id in zip(params["models"], ["table2", "table5"]):
        evals = saved.pruning_evals(results, model, "05_pruning", params,
                                    pruning.grid(methods, sparsities=[sp], dense=False),
                                    profile=profile)
        for base in ("Uniform", "AlphaPruning", "OWL"):
            rows.append(_paired_row(
                f"LayerIF sparsity beats {base} at {sp:.0%}", model, f"{table_id} (Fig. 3)",
                _paper_pair(table_id, "LayerIF", base, "Average"),
                [evals[pruning.Setting(m, "LayerIF", sp)] for m in methods],
                [evals[pruning.Setting(m, base, sp)] for m in methods], methods,
                "05_pruning", level))
    return rows


def table8_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Table 8 / Fig. 3: SparseGPT across sparsities (notebook 05's ``fig3_models``), with
    :func:`pruning_tables.table8`: the paper's t-test over settings and McNemar over examples."""
    rows, levels = [], params["fig3_sparsities"]
    printed = {"AlphaPruning": "Alphapruning", "Uniform": "Uniform", "OWL": "OWL"}
    for model in params["fig3_models"]:
        evals = saved.pruning_evals(results, model, "05_pruning", params,
                                    pruning.grid(["sparsegpt"], sparsities=levels, dense=False),
                                    profile=profile)
        t8 = pruning_tables.table8(evals, "sparsegpt", levels)
        for base, r in t8.drop(index="LayerIF").iterrows():
            diff, p_t = r["LayerIF - baseline"], r["t-test p (per setting)"]
            p_m = r["McNemar p (per example)"]
            rows.append(_row(
                f"LayerIF beats {base} across sparsities (SparseGPT)", model, "Table 8, Fig. 3",
                _paper_pair("table8", "LayerIF", printed[base], "Average Accuracy")
                + f", p = {paper.table('table8').at[printed[base], 'p-value']:.5f}",
                f"{100 * diff:+.2f} points over {int(r['settings'])} settings, "
                f"{int(r['examples'])} examples", "paired t over settings (and McNemar over examples)",
                p_t, _ci(r["margin CI low"], r["margin CI high"], 1, " nats margin"),
                decide(diff, [p_t, p_m], level), "05_pruning"))
    return rows


def perplexity_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Beyond the paper: LayerIF's pruned model has the lowest perplexity of the four
    allocations more often than chance (:func:`pruning_tables.perplexity_wins`, notebook 05)."""
    rows = []
    for model in params["models"]:
        settings = pruning.grid(params["methods"], sparsities=[params["sparsity"]], dense=False)
        if model in params["fig3_models"]:
            settings += pruning.grid(["sparsegpt"], sparsities=params["fig3_sparsities"], dense=False)
        evals = saved.pruning_evals(results, model, "05_pruning", params, settings, profile=profile)
        w = pruning_tables.perplexity_wins(pruning_tables.accuracy_table(evals))
        verdict = HELD if w["p"] < level else INCONCLUSIVE
        rows.append(_row("LayerIF's pruned model has the lowest perplexity (not in the paper)",
                         model, "beyond the paper", "not in paper",
                         f"lowest in {w['wins']} of {w['settings']} (pruner, sparsity) settings",
                         "one-sided binomial against 1 in 4 (settings not independent)",
                         w["p"], "", verdict, "05_pruning"))
    return rows


def task_specific_claim(results, params: dict, profile: str | None = None,
                        level: float = 0.05) -> list[dict]:
    """Beyond the paper: a task's own scores prune better for it than the pooled vector
    (notebook 05's extra section, :func:`pruning_tables.task_specific_table`), tasks pooled."""
    ts, sp, rows = params["task_specific"], params["sparsity"], []
    for model in ts["models"]:
        own, pool = [], []
        for task in ts["tasks"]:
            settings = [pruning.Setting(ts["method"], "LayerIF", sp, scores=task),
                        pruning.Setting(ts["method"], "LayerIF", sp),
                        pruning.Setting(ts["method"], "Uniform", sp)]
            evals = saved.pruning_evals(results, model, "05_pruning", params, settings,
                                        {"tasks": (task,), "n_examples": ts["n_examples"]}, profile)
            own.append(evals[settings[0]])
            pool.append(evals[settings[1]])
        rows.append(_paired_row(
            f"a task's own scores prune it better than the pooled vector ({ts['method']} {sp:.0%})",
            model, "beyond the paper (it prunes every task with one vector)", "not in paper",
            own, pool, ts["tasks"], "05_pruning", level))
    return rows


# ------------------------------------------------------------------ Tables 3, 6, Sec. 5

def hessian_free_claim(results, params: dict, profile: str | None = None,
                       level: float = 0.05) -> list[dict]:
    """Table 3: Hessian-free and DataInf allocations show little to no agreement (notebook 06;
    its saved intervals are 95%: ``level`` is accepted for a uniform signature, unused)."""
    printed, rows = paper.table("table3")["Correlation"], []
    for model in params["models"]:
        t = saved.agreement(results, model, params, profile)
        rows.append(_row(
            "Hessian-free and DataInf expert allocations disagree", model, "Table 3",
            f"Spearman {printed.min():.2f} to {printed.max():.2f} (mean {printed.mean():.2f})",
            f"Spearman {t['spearman'].min():.2f} to {t['spearman'].max():.2f} "
            f"(mean {t['spearman'].mean():.2f}) over {len(t)} tasks",
            "per task bootstrap over training examples: all below 0.5 = disagree, any above = agree",
            np.nan, f"lowest {t['ci_low'].min():+.2f}, highest {t['ci_high'].max():+.2f}",
            agreement_verdict(t), "06_ablation_hessian_free"))
    return rows


def smoothing_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Table 6: smoothing raises accuracy across epsilons and pruners (notebook 07,
    :func:`pruning_tables.smoothing_table`), decided by the sign test of its cells."""
    sp, methods, eps, rows = params["sparsity"], params["methods"], params["epsilons"], []
    printed = paper.table("table6").to_numpy().ravel()
    printed = printed[np.isfinite(printed)]
    settings = [pruning.Setting(m, "LayerIF", sp, epsilon=e, smooth=s)
                for e in eps for m in methods for s in (True, False)]
    for model in params["models"]:
        evals = saved.pruning_evals(results, model, "07_ablation_smoothing", params, settings,
                                    profile=profile)
        change = pruning_tables.smoothing_table(evals, sp, eps, methods)["% change accuracy"]
        verdict, p = sign_verdict(change, level)
        rows.append(_row(
            "smoothing the scores raises accuracy", model, "Table 6",
            f"{int((printed > 0).sum())} of {printed.size} cells positive",
            f"{int((change > 0).sum())} of {len(change)} cells positive (mean {change.mean():+.2f}%)",
            "one-sided sign test over (epsilon, pruner) cells", p,
            f"cells {change.min():+.2f}% to {change.max():+.2f}%", verdict, "07_ablation_smoothing"))
    return rows


def granularity_claim(results, params: dict, profile: str | None = None, level: float = 0.05) -> list[dict]:
    """Sec. 5: per-block scores beat per-matrix ones (notebook 08), pruners pooled."""
    sp, methods, label, rows = params["sparsity"], params["methods"], f"{POOL}--all-linear", []
    claim = paper.claims("sec5_per_block")[0]
    for model in params["scores"]:
        settings = [pruning.Setting(m, "LayerIF", sp, scores=label, granularity=g)
                    for m in methods for g in ("block", "matrix")]
        evals = saved.pruning_evals(results, model, "08_ablation_granularity", params, settings,
                                    profile=profile)
        rows.append(_paired_row(
            f"per-block scores beat per-matrix scores ({sp:.0%})", model, "Sec. 5 (per matrix vs per block)",
            f"+{claim['value']}% accuracy ({paper.entry('sec5_per_block')['model']})",
            [evals[s] for s in settings[0::2]], [evals[s] for s in settings[1::2]], methods,
            "08_ablation_granularity", level))
    return rows


# ------------------------------------------------------------------ notebook 09

def validation_rows(verdicts: pd.DataFrame, model: str) -> list[dict]:
    """Claim rows of notebook 09's verdict rows (:data:`.validation_verdicts.COLUMNS`); a row
    without a model is ``model``'s."""
    rows = []
    for _, v in verdicts.iterrows():
        check(v["part"] in VALIDATION_WHERE and v["verdict"] in VERDICTS, "verdicts", v["part"],
              f"parts of {list(VALIDATION_WHERE)} with verdicts among {VERDICTS}")
        where, paper_value = VALIDATION_WHERE[v["part"]]
        rows.append(_row(v["claim"], v["model"] or model, where, paper_value,
                         f"{v['value']:+.2f} ({v['subject']})", f"{v['statistic']}; {v['criterion']}",
                         np.nan, f"{_ci(v['low'], v['high'])} ({v['interval']})", v["verdict"],
                         VALIDATION))
    return rows


def validation_claim(results, params: dict, profile: str | None = None,
                     level: float = 0.05) -> list[dict]:
    """Beyond the paper (notebook 09): its verdicts on DataInf vs the exact inverse, leave-one-out
    retraining, |S_l| vs the gain of training a block (DataInf), stability and the n sweep, from
    its saved results with its parameters (its intervals are 95%: ``level`` is unused)."""
    saved.validation(results, params, profile)
    model, n_boot, alloc = params["model_name"], params["n_boot"], params["alloc"]
    approx = approximation.ApproxConfig(**params["approx"])
    try:
        grid = approximation.study_grid(results, model, approx, progress=False)
        loo = retraining.study_loo(results, model, retraining.LooConfig(**params["loo"]),
                                   progress=False)
        gains = {t: retraining.study_gains(results, model, t, retraining.GainConfig(**params["gain"]),
                                           progress=False) for t in params["gain_tasks"]}
    except store.ProvenanceError as err:
        raise saved.MissingResult(VALIDATION, [f"{model} results of these parameters ({err})"],
                                  profile) from None
    stability = {m: approximation.score_stability(results, m, params["stability_tasks"], n_boot, **alloc)
                 for m in params["stability_models"]}
    subsets = validation.subset_stability(approximation.subset_scores(grid), **alloc)
    verdicts = pd.concat([
        vv.approximation_verdict(approximation.approximation_table(grid, **alloc), approx.damping, model),
        vv.loo_verdicts(retraining.loo_summary(loo, n_boot=n_boot), "datainf", model),
        vv.gain_verdicts({t: retraining.gains_summary(results, model, t, g, n_boot)
                          for t, g in gains.items()}, ("datainf",), model=model),
        vv.stability_verdicts(stability, subsets, model),
        vv.sweep_verdict(validation.sweep_table(approximation.sweep_scores(grid), **alloc), model)],
        ignore_index=True)
    return validation_rows(verdicts, model)


# ------------------------------------------------------------------ the table

CLAIMS = [("01_layer_scores", "profile_claim"), ("03_lora_moe", "moe_claim"),
          ("05_pruning", "pruning_claim"), ("05_pruning", "table8_claim"),
          ("05_pruning", "perplexity_claim"), ("05_pruning", "task_specific_claim"),
          ("06_ablation_hessian_free", "hessian_free_claim"),
          ("07_ablation_smoothing", "smoothing_claim"), ("08_ablation_granularity", "granularity_claim"),
          (VALIDATION, "validation_claim")]


def claims_table(results: str | Path | None = None, profile: str = "cpu",
                 root: str | Path | None = None, params: dict | None = None,
                 level: float = 0.05) -> pd.DataFrame:
    """Every claim of :data:`CLAIMS` for ``profile``, one row per claim and model (:data:`COLUMNS`).

    Args:
        results: the profile's results folder (default :func:`layerif.study.results_dir`).
        params: notebook name -> its parameters (default: the profile's files,
            :func:`layerif.study.load_params`).
        level: significance level of every test (intervals at ``1 - level``).

    Raises:
        MissingResult: naming every notebook whose saved results a claim lacks, and the
            command that produces them.
    """
    results = Path(results or study.results_dir(profile, root))
    rows, missing = [], {}
    for notebook, name in CLAIMS:
        p = (params or {}).get(notebook) or study.load_params(notebook, profile, root)
        try:
            rows += globals()[name](results, p, profile, level=level)
        except saved.MissingResult as err:
            missing.setdefault(notebook, []).extend(err.what)
    if missing:
        raise saved.MissingResult(list(missing), [w for ws in missing.values() for w in ws], profile)
    return pd.DataFrame(rows, columns=COLUMNS)
