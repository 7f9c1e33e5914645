"""The paired comparisons of the LoRA-MoE study (notebook 03): one method against others on
the same held-out examples, per task (McNemar's exact test on correctness, the paired t on the
gold margin; one seed) and across tasks and budgets (the paper's Table 7: its paired t-test
over per-setting accuracies, a paired bootstrap over the pooled examples, the gold margin's
paired t, and the MDE / n needed of the t over settings). Tables and figures built from them
are :mod:`.moe_tables`'."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from .. import stats

if TYPE_CHECKING:
    from .moe_runs import MoERun, MoESetting

__all__ = ["BASE", "paired_by_task", "versus"]

#: The model without fine-tuning: its runs are compared at every budget.
BASE = "Base model"


def _examples(runs, method: str, task: str, per_block: float, seed: int | None) -> pd.DataFrame | None:
    """Per-example correctness (mean over the seeds when ``seed`` is None) and margin."""
    hits = [r.examples[["correct", "margin"]].astype(float) for s, r in runs.items()
            if s.method == method and s.task == task and (s.per_block == per_block or method == BASE)
            and (seed is None or s.seed == seed)]
    if not hits:
        return None
    return sum(hits) / len(hits)


def paired_by_task(runs: Mapping[MoESetting, MoERun], ours: str, baselines=None,
                   per_block: float = 5.0, seed: int = 0) -> pd.DataFrame:
    """``ours`` against each baseline (default: every other method, in the order first run) per
    task, on the same examples and seed: accuracy difference and McNemar's exact p, and the
    sensitive measure beside them, the gold margin's mean difference (nats) and its paired t
    p (index task, baseline)."""
    if baselines is None:
        baselines = [m for m in dict.fromkeys(s.method for s in runs) if m != ours]
    rows = {}
    tasks = list(dict.fromkeys(s.task for s in runs))
    for task in tasks:
        mine = _examples(runs, ours, task, per_block, seed)
        for base in baselines:
            theirs = _examples(runs, base, task, per_block, seed)
            if mine is None or theirs is None:
                continue
            if not mine.index.equals(theirs.index):
                raise ValueError("runs are invalid: expected evaluations of the same examples "
                                 "in the same order")
            mc = stats.mcnemar(mine["correct"].to_numpy() > 0.5, theirs["correct"].to_numpy() > 0.5)
            margin = stats.paired_margin(mine, theirs)
            rows[(task, base)] = {"difference": mc.estimate, "McNemar p": mc.pvalue, "n": mc.n,
                                  "margin difference": margin.estimate, "margin p": margin.pvalue}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.names = ["task", "baseline"]
    return out


def versus(runs: Mapping[MoESetting, MoERun], ours: str, families: Mapping[str, tuple[str, ...]],
           per_blocks=None, seed_spread_value: float = np.nan, n_boot: int = 2000,
           effects: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The paper's Table 7: ``ours`` against each baseline family across tasks and budgets.

    A family is one or more methods (``{"MoLA": ("MoLA 2468", "MoLA 5555", ...)}``); per
    (task, budget) cell its accuracy is the mean over its methods present at that budget
    and over seeds. Columns: average accuracy over the cells both have, the difference, the
    paper's paired t-test over the cells, and a paired bootstrap over the examples of all
    cells (each example's correctness averaged over the family's methods and the seeds),
    with its 95% interval; ``margin *``: the sensitive measure on the same pooled examples,
    the gold margin's mean difference (nats) with its paired t interval and p
    (:func:`layerif.stats.paired_margin`); ``seed spread`` repeats the mean seed-to-seed range for scale;
    ``MDE (t over settings)`` is the smallest difference the paired t-test over the cells
    detects with 80% power (:mod:`layerif.power`). With ``effects`` (family -> an accuracy
    difference, a fraction), ``n needed (t over settings)``: the cells that would detect it.
    ``per_blocks`` defaults to every budget run.
    """
    if per_blocks is None:
        per_blocks = sorted({s.per_block for s in runs if s.method != BASE})
    cells, pooled = {}, {}
    tasks = list(dict.fromkeys(s.task for s in runs))
    for name, methods in {ours: (ours,), **families}.items():
        for task in tasks:
            for pb in per_blocks:
                parts = [e for m in methods if (e := _examples(runs, m, task, pb, None)) is not None]
                if parts:
                    cells.setdefault(name, {})[(task, pb)] = float((sum(parts) / len(parts))["correct"].mean())
                    pooled.setdefault(name, {})[(task, pb)] = sum(parts) / len(parts)
    rows = {ours: {"average accuracy": np.mean(list(cells.get(ours, {}).values()))}}
    for name in families:
        common = [k for k in cells.get(name, {}) if k in cells.get(ours, {})]
        if not common:
            continue
        a = np.array([cells[ours][k] for k in common])
        b = np.array([cells[name][k] for k in common])
        effect = None if effects is None else effects.get(name)
        t = stats.paired_t(a, b, effect=effect) if len(common) >= 2 else None
        ea = pd.concat([pooled[ours][k]["correct"] for k in common]).to_numpy()
        eb = pd.concat([pooled[name][k]["correct"] for k in common]).to_numpy()
        boot = stats.bootstrap_diff_ci(ea, eb, paired=True, n_boot=n_boot)
        margin = stats.paired_margin(*(pd.concat([pooled[n][k]["margin"] for k in common]).to_numpy()
                                       for n in (ours, name)))
        rows[name] = {"average accuracy": b.mean(), f"{ours} - baseline": a.mean() - b.mean(),
                      "t-test p (per setting)": t.pvalue if t else np.nan, "settings": len(common),
                      "bootstrap CI low": boot.ci_low, "bootstrap CI high": boot.ci_high,
                      "bootstrap p": boot.pvalue, "examples": len(ea),
                      "margin difference": margin.estimate, "margin CI low": margin.ci_low,
                      "margin CI high": margin.ci_high, "margin p": margin.pvalue,
                      "seed spread": seed_spread_value,
                      "MDE (t over settings)": t.mde if t else np.nan}
        if effects is not None:
            rows[name]["n needed (t over settings)"] = t.n_needed if t else np.nan
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out
