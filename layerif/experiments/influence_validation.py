"""Notebook 09: how good are the layer scores? Its work as one function of its parameters.

:func:`run` computes (or, through the store, loads) every part -- DataInf against the exact
inverse (:mod:`.approximation`), leave-one-out retraining and block-alone fine-tuning
(:mod:`.retraining`), the stability of scores and allocations and the n sweep
(:mod:`.validation`) -- into one :class:`Result`; the notebook shows its tables, the figures
of ``figure_*``, the sentences of :func:`summary` and the verdict rows of
:mod:`.validation_verdicts` (:func:`verdict_frame`). :func:`verdicts` gives notebook 10's rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import plots, store
from .._config import check
from ..models import load_model, resolve_device
from ..notebook_params import load_options
from . import approximation, retraining, validation
from . import validation_verdicts as vv
from .prose import bullets
from .verdict import Verdict, interval

__all__ = ["NOTEBOOK", "Result", "WHERE", "figure_agreement", "figure_gain_lines",
           "figure_gain_rho", "figure_loo", "figure_stability", "figure_sweep", "loader", "parts",
           "conclusion", "retrainings", "run", "sizes", "summary", "verdict_frame", "verdicts"]

NOTEBOOK = "09_influence_validation"
#: Each part's standing against the paper: (where, the paper's number) of its claim rows.
WHERE = {
    "approximation": ("beyond the paper (its method assumes it)", "not in paper"),
    "retraining": ("beyond the paper (it never retrains)", "not in paper"),
    "gain": ("beyond the paper (its reading: larger |S_l| = less well trained block)",
             "read, not measured"),
    "stability": ("beyond the paper (its stated limitation: the examples drawn)", "not in paper"),
    "n_sweep": ("beyond the paper (it scores 300 training examples)", "not in paper")}
PREDICTORS = ("datainf", "exact", "hessian_free", "datainf_init")   # part 2's printed lines
GAIN_METHODS = ("datainf", "hessian_free")


@dataclass(frozen=True)
class Result:
    """Every table notebook 09 shows, by part (1: ``agreement``; 2: ``loo``, ``loo_table``;
    3: ``gains``, ``gain_tables`` by task; 4: ``stability`` by model, ``subsets``; 5: ``sweep``)."""

    model: str
    damping: float
    agreement: pd.DataFrame
    loo: pd.DataFrame
    loo_table: pd.DataFrame
    gains: dict
    gain_tables: dict
    stability: dict
    stability_tasks: tuple
    subsets: dict
    sweep: pd.DataFrame

    @property
    def gain_summary(self) -> pd.DataFrame:
        """Part 3's correlations of every task, index ``(task, method, aggregation)``."""
        return pd.concat(self.gain_tables, names=["task"])

    @property
    def gain_frame(self) -> pd.DataFrame:
        """Part 3's losses before and after, index ``(task, layer)``."""
        return pd.concat(self.gains, names=["task"])

    @property
    def stability_summary(self) -> pd.DataFrame:
        """Part 4's bootstrap summary, index ``(model, task)``."""
        return pd.concat({m: s[1] for m, s in self.stability.items()}, names=["model"])

    @property
    def subset_summary(self) -> pd.Series:
        """Part 4's agreement between disjoint validation subsets."""
        return pd.Series(self.subsets, name="disjoint validation subsets")


def loader(model_name: str, load_kwargs: dict | None = None):
    """``load(device)``: the ``(model, tokenizer)`` of ``model_name`` on ``device``, loaded the
    first time a part computes and shared by the parts after it (each leaves the weights as
    it found them: adapters detached, fine-tuned weights restored); one load per device.
    ``load_kwargs``: more arguments of :func:`layerif.load_model` (the model's ``dtype``)."""
    loaded = {}

    def load(device="auto"):
        key = str(resolve_device(device))
        if key not in loaded:
            loaded[key] = load_model(model_name, device=device, **(load_kwargs or {}))
        return loaded[key]

    return load


def run(params: dict, profile: str = "smoke", results=None) -> Result:
    """Notebook 09 with its parameters (``params/<profile>/09_influence_validation.yaml``).

    Reads notebook 01's scores; everything else is loaded from ``results`` (default: the
    profile's folder) or computed and saved (never under :class:`layerif.store.read_only`)."""
    results = Path(results or store.results_dir(profile))
    model, n_boot, alloc = params["model_name"], params["n_boot"], params["alloc"]
    options = load_options(params)
    load = loader(model, options)
    approx = approximation.ApproxConfig(**params["approx"])
    grid = approximation.study_grid(results, model, approx, load=load, load_kwargs=options)
    loo = retraining.study_loo(results, model, retraining.LooConfig(**params["loo"]), load=load,
                               load_kwargs=options)
    gain_cfg = retraining.GainConfig(**params["gain"])
    gains = {t: retraining.study_gains(results, model, t, gain_cfg, load=load, load_kwargs=options)
             for t in params["gain_tasks"]}
    tasks = tuple(params["stability_tasks"])
    return Result(
        model=model, damping=approx.damping,
        agreement=approximation.approximation_table(grid, **alloc), loo=loo,
        loo_table=retraining.loo_summary(loo, n_boot=n_boot), gains=gains,
        gain_tables={t: retraining.gains_summary(results, model, t, g, n_boot)
                     for t, g in gains.items()},
        stability={m: approximation.score_stability(results, m, tasks, n_boot, **alloc)
                   for m in params["stability_models"]},
        stability_tasks=tasks,
        subsets=validation.subset_stability(approximation.subset_scores(grid), **alloc),
        sweep=validation.sweep_table(approximation.sweep_scores(grid), **alloc))


# -- verdicts ------------------------------------------------------------------------------
def parts(result: Result, gain_methods=GAIN_METHODS) -> pd.DataFrame:
    """Every part's verdict rows (:data:`.validation_verdicts.COLUMNS`), part 3 for
    ``gain_methods``."""
    return pd.concat([
        vv.approximation_verdict(result.agreement, result.damping, result.model),
        vv.loo_verdicts(result.loo_table, "datainf", result.model),
        vv.gain_verdicts(result.gain_tables, gain_methods, model=result.model),
        vv.stability_verdicts(result.stability, result.subsets, result.model),
        vv.sweep_verdict(result.sweep, result.model)], ignore_index=True)


def verdict_frame(result: Result) -> pd.DataFrame:
    """The verdicts table notebook 09 shows."""
    return parts(result)[["part", "model", "subject", "value", "low", "high", "interval",
                          "verdict"]]


def verdicts(result: Result, level: float = 0.05) -> list[Verdict]:
    """Notebook 10's rows: every part, part 3 for DataInf only (the paper's scores). The
    intervals are 95% bootstrap intervals or ranges: ``level`` is not used."""
    return [Verdict(claim=v["claim"], model=v["model"] or result.model, where=WHERE[v["part"]][0],
                    paper=WHERE[v["part"]][1], ours=f"{v['value']:+.2f} ({v['subject']})",
                    test=f"{v['statistic']}; {v['criterion']}", p=float("nan"),
                    interval=f"{interval(v['low'], v['high'])} ({v['interval']})",
                    verdict=v["verdict"], notebook=NOTEBOOK, statistic=float(v["value"]))
            for _, v in parts(result, ("datainf",)).iterrows()]


# -- what the numbers say --------------------------------------------------------------------
def _approximation_lines(result: Result) -> list[str]:
    default = result.agreement.xs(result.damping, level="damping")
    di, hf = default.loc["datainf"], default.loc["hessian_free"]
    sweep = result.agreement.xs("datainf", level="method")
    return [f"At the default damping {result.damping}: DataInf vs exact per-example Spearman "
            f"{di['pooled_spearman']:.2f} pooled, {di['median_block_spearman']:.2f} median within a "
            f"block; block scores ('+ve') Spearman {di['scores_positive']:.2f}; experts moved "
            f"{di['experts_moved']:.1%}, sparsity differs by at most {di['sparsity_max_diff']:.3f}. "
            f"Hessian-free vs exact: {hf['pooled_spearman']:.2f} pooled, block scores "
            f"{hf['scores_positive']:.2f}, experts moved {hf['experts_moved']:.1%}.",
            f"Over the damping sweep {list(sweep.index)}: DataInf's pooled Spearman with exact "
            f"ranges {sweep['pooled_spearman'].min():.2f}..{sweep['pooled_spearman'].max():.2f}, "
            f"its block scores' {sweep['scores_positive'].min():.2f}.."
            f"{sweep['scores_positive'].max():.2f}."]


def _loo_lines(result: Result) -> list[str]:
    return [f"block {block}, {name}: Spearman with the retrained change {r['spearman']:.2f} "
            f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}], Pearson {r['pearson']:.2f}, per seed "
            f"{r['spearman_per_seed']:.2f} (n = {int(r['n'])} examples)"
            for (block, name), r in result.loo_table.iterrows() if name in PREDICTORS]


def _sweep_lines(result: Result) -> list[str]:
    s = result.sweep
    return [f"n = {n}: Spearman with n = {int(r['reference_n'])} is {r['spearman']:.2f}; expert "
            f"allocation Spearman {r['experts_spearman']:.2f}, {r['experts_moved']:.1%} of experts "
            f"move, sparsity differs by at most {r['sparsity_max_diff']:.3f}."
            for n, r in s.drop(index=s.index.max()).iterrows()]


_NUMBERS = {"approximation": _approximation_lines, "retraining": _loo_lines,
            "n_sweep": _sweep_lines}


def summary(result: Result, part: str) -> str:
    """What part ``part`` (a key of :data:`WHERE`) says: its numbers, then its verdicts."""
    check(part in WHERE, "part", part, f"one of {list(WHERE)}")
    rows = parts(result)
    lines = _NUMBERS[part](result) if part in _NUMBERS else []
    return "\n".join([*lines, *rows.loc[rows["part"] == part, "sentence"]])


def conclusion(result: Result, part: str):
    """:func:`summary` of ``part`` as rendered Markdown bullets."""
    return bullets(summary(result, part))


def retrainings(params: dict) -> int:
    """Part 2's trainings: per seed and block, one on all examples and one without each."""
    loo = params["loo"]
    return len(loo["seeds"]) * len(loo["blocks"]) * (loo["n_train"] + 1)


def sizes(params: dict):
    """Every part's size, from the notebook's parameters (Markdown bullets)."""
    a, loo, g = params["approx"], params["loo"], params["gain"]
    return bullets([
        f"Approximation, validation subsets and n sweep: {a['task']}, {a['n_train']} training "
        f"examples (n sweep {', '.join(map(str, [*a['sizes'], a['n_train']]))}), {a['n_val']} "
        f"validation examples in {a['val_subsets']} disjoint subsets, {a['max_length']} tokens, "
        f"damping {', '.join(f'{d:g}' for d in a['dampings'])}.",
        f"Leave one out: {loo['task']}, {loo['n_train']} training examples each left out once, "
        f"{loo['n_val']} validation examples, blocks {loo['blocks']}, {len(loo['seeds'])} seeds, "
        f"{loo['steps']} full-batch Adam steps per training: {retrainings(params)} trainings.",
        f"Block-alone fine-tuning: {', '.join(params['gain_tasks'])}, blocks "
        f"{', '.join(map(str, g['blocks']))} ({len(g['blocks'])} blocks), {g['steps']} full-batch "
        f"Adam steps on {g['n_train']} examples each.",
        f"Stability: {params['n_boot']} bootstrap replicates of notebook 01's matrices for "
        f"{len(params['stability_tasks'])} tasks and {len(params['stability_models'])} models.",
        "Wall time: the run record of this notebook (notebook 10's reproduction table) keeps it; "
        "the parts' own seconds are not stored, so none is given here."])


# -- figures -------------------------------------------------------------------------------
def figure_agreement(result: Result):
    """Part 1: pooled Spearman of each method with the exact inverse over the damping sweep."""
    return plots.layer_lines(result.agreement["pooled_spearman"].unstack("method"),
                             xlabel="damping", ylabel="Spearman with exact (per example x block)",
                             title="Agreement with the exact inverse across the damping sweep")


def figure_loo(result: Result):
    """Part 2: DataInf's prediction against the retrained change (seed means)."""
    means = result.loo.groupby("example").mean()
    return plots.scatter(means["datainf"], means["actual"], labels=list(means.index),
                         xlabel="DataInf prediction (trained point)",
                         ylabel="actual change of validation loss (seed mean)",
                         title="Leave one out: predicted vs retrained")


def figure_gain_rho(result: Result):
    """Part 3: Spearman(|S_l|, gain) per method and aggregation, one bar per task."""
    table = {k: pd.DataFrame({t: g[k] for t, g in result.gain_tables.items()})
             for k in ("spearman", "ci_low", "ci_high")}
    short = {"datainf": "DataInf", "hessian_free": "H-free", "positive": "+ve"}
    names = [f"{short.get(m, m)} {short.get(a, a)}" for m, a in table["spearman"].index]
    rho, low, high = (table[k].set_axis(names) for k in ("spearman", "ci_low", "ci_high"))
    return plots.grouped_bars(rho, errors=(low.fillna(rho), high.fillna(rho)), reference=(0.0, "no correlation"),
                              ylabel="Spearman(|S_l|, gain) across blocks",
                              title="Block-alone fine-tuning gain vs |S_l|")


def figure_gain_lines(result: Result):
    """Part 3: the gain of fine-tuning each block alone, one line per task."""
    return plots.layer_lines(pd.DataFrame({t: g["gain"] for t, g in result.gains.items()}),
                             ylabel="validation-loss gain", title="Gain of fine-tuning one block")


def figure_stability(result: Result) -> list:
    """Part 4: per model (one panel each), the block scores on the first task with bootstrap
    intervals."""
    task, out = result.stability_tasks[0], []
    for model, (boot, _) in result.stability.items():
        b = boot.loc[task]
        out.append(plots.grouped_bars(
            b[["score"]], errors=(b[["score_low"]].set_axis(["score"], axis=1),
                                  b[["score_high"]].set_axis(["score"], axis=1)),
            xlabel="layer", ylabel="'+ve' score S_l (95% CI)",
            title=f"{model}, {task}: block scores over resampled training examples"))
    return out


def figure_sweep(result: Result):
    """Part 5: scores and allocations at each n against the largest n."""
    return plots.layer_lines(result.sweep[["spearman", "experts_spearman", "experts_moved"]],
                             xlabel="n_train", title="Scores and allocations at n vs the largest n")
