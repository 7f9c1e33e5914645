"""Notebook 03's claims (Tables 1, 4, 7) decided by the study's one rule for a comparison.

**Claim**, per model and baseline family of Table 7: LayerIF's experts beat the family by the
paper's effect d, the LayerIF-minus-family average accuracy in points of the table of the
model this one stands in for (:data:`.moe_tables.PAPER_TABLES`): Table 7 (Mistral-7B, the
average over budgets and tasks) for SmolLM2; Table 4 (Gemma-7B, its Average row) for
Gemma-3-270M, whose text claims only "superior average performance" -- a sign, so d is the
difference the table prints.

**Measure**: accuracy in points, LayerIF minus the family, over the (task, budget) settings
both ran (:func:`.moe_compare.versus`). **Interval**: the paired bootstrap over the pooled
held-out examples. **MDE and n needed**: the paired t-test over the settings, each a
fine-tune (the binding constraint: more held-out examples do not shrink the run-to-run
spread), n counted in settings. Verdict: :func:`.verdict.decide_effect`.

**Testable tasks**: a task is left out of the comparison when (a) no model compared (LayerIF
or the family, at any budget) clears notebook 03's chance bar (chance or always giving the
most frequent answer, :func:`.moe_tables.chance_check`): the task cannot rank them; or (b)
fine-tuning made the model worse than its base: the paired t-test over the task's examples
of the compared models' mean correctness minus the base model's has its interval below 0
(:func:`.verdict.untestable_reason`). The base model at chance is no reason here: fine-tuning
is what teaches the task (SmolLM2's base is below the majority bar on SST-2 and trains to
80-86%). A comparison with no testable task is *untestable here*; its row shows the numbers
over every task. A model notebook 03 trained nothing for (no candidate recipe beat its base
model on validation examples: :func:`.moe_recipe.no_gain`) is *untestable here* with that
reason and no numbers.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from .. import paper, stats
from . import moe_tables as tables
from .moe_compare import BASE, versus
from .moe_tables import FAMILIES, MoEResult
from .verdict import Verdict, decide_effect, decided, untestable_reason

__all__ = ["TABLE4_FAMILIES", "paper_effect", "task_reasons", "verdicts"]

NOTEBOOK = "03_lora_moe"
#: Table 4's (Gemma-7B) column of each Table 7 family.
TABLE4_FAMILIES = {"AlphaLora": "AlphaLora", "Mola": "MoLA(3,5,7,8)"}
TEST = ("paired bootstrap over examples (interval); MDE and n needed: paired t over settings "
        "(each a fine-tune)")


def paper_effect(model: str, family: str) -> tuple[float, str, str]:
    """The paper's d in accuracy points for LayerIF vs ``family`` on the paper model that
    ``model`` stands in for, the paper's numbers as the row prints them, and which d it is."""
    if tables.PAPER_TABLES.get(model) == "table4":
        t4 = paper.table("table4")
        mine, theirs = t4.at["Average", "LayerIF (+ve)"], t4.at["Average", TABLE4_FAMILIES[family]]
        return (mine - theirs, f"{mine:.2f} vs {theirs:.2f} (table4, Average)",
                "d: Table 4's Average difference (its text claims only 'superior', a sign)")
    t7 = paper.table("table7")
    mine, theirs = t7.at["LayerIF", "Average Accuracy"], t7.at[family, "Average Accuracy"]
    return (mine - theirs, f"{mine:.2f} vs {theirs:.2f} (table7, Average Accuracy)",
            "d: Table 7's Average Accuracy difference")


def _where(model: str) -> str:
    return "Table 4" if tables.PAPER_TABLES.get(model) == "table4" else "Tables 1, 7; Fig. 2"


def _correct(runs: Mapping, methods, task: str) -> pd.Series | None:
    """Per-example correctness on ``task``, averaged over the runs of ``methods`` (every
    budget and seed); None when none ran."""
    hits = [r.examples["correct"].astype(float) for s, r in runs.items()
            if s.method in methods and s.task == task]
    return sum(hits) / len(hits) if hits else None


def task_reasons(result: MoEResult, model: str, methods, level: float = 0.05) -> dict[str, str]:
    """The tasks of ``model`` left out of a comparison of ``methods`` (the module docstring's
    (a) and (b)), each with its reason; the tasks not named are testable."""
    runs, chance = result.runs[model], result.models[model]["chance"]
    reasons = {}
    for task in dict.fromkeys(s.task for s in runs):
        rows = chance[chance.index.get_level_values("task") == task]
        rows = rows[rows.index.get_level_values("method").isin(methods)]
        found = []
        if len(rows) and not rows["above bar"].any():
            found.append(f"no model compared is above the chance bar {rows['bar'].max():.2f} "
                         f"(one-sided binomial; best {rows['acc'].max():.2f}, n = {int(rows['n'].max())})")
        trained, base = _correct(runs, methods, task), _correct(runs, (BASE,), task)
        if trained is not None and base is not None:
            found.append(untestable_reason(trained_vs_base=stats.paired_t(
                trained.to_numpy(), base.reindex(trained.index).to_numpy()), level=level))
        if any(found):
            reasons[task] = " and ".join(f for f in found if f)
    return reasons


def verdicts(result: MoEResult, level: float = 0.05) -> list[Verdict]:
    """One row per model and Table 7 family (the module docstring's rule), decided at
    ``level`` (the bootstrap interval is 95%, as notebook 03 computes it)."""
    rows, ours = [], result.ours
    for model, found in result.models.items():
        for family in found["table7"].drop(index=ours).index:
            rows.append(_row(result, model, family, level))
    rows += [_untrained(model, family, why) for model, why in result.skipped.items()
             for family in FAMILIES]
    return rows


def _untrained(model: str, family: str, why: str) -> Verdict:
    """The row of a comparison notebook 03 did not train (``why``: the reason)."""
    d, printed, which = paper_effect(model, family)
    decision = decide_effect(float("nan"), float("nan"), d, untestable=why)
    return decided(decision, float("nan"), float("nan"), unit="points", n_unit="settings",
                   claim=f"LayerIF allocation beats {family} (LoRA-MoE)", model=model,
                   where=_where(model), paper=printed, ours="not trained: " + why,
                   test="; ".join([TEST, which, f"untestable: {why}"]), p=float("nan"),
                   notebook=NOTEBOOK)


def _row(result: MoEResult, model: str, family: str, level: float) -> Verdict:
    ours, found = result.ours, result.models[model]
    d, printed, which = paper_effect(model, family)
    methods = (ours, *FAMILIES[family])
    reasons = task_reasons(result, model, methods, level)
    runs = result.runs[model]
    kept = {s: r for s, r in runs.items() if s.task not in reasons}
    if not any(s.method in FAMILIES[family] for s in kept):
        kept = runs   # nothing testable: the numbers over every task, for the record
    r = versus(kept, ours, {family: FAMILIES[family]}, None, found["noise"],
                      effects={family: d / 100}).loc[family]
    diff, noise = 100 * r[f"{ours} - baseline"], found["noise"]
    spread = f"seed spread {100 * noise:.1f}" if pd.notna(noise) else "seed spread not measured"
    left = "".join(f"; {t} left out: {why}" for t, why in reasons.items()) if kept is not runs else ""
    untestable = ("every task left out: " + "; ".join(f"{t}: {why}" for t, why in reasons.items())
                  if kept is runs and reasons else None)
    lo, hi = 100 * r["bootstrap CI low"], 100 * r["bootstrap CI high"]
    decision = decide_effect(lo, hi, d, mde=100 * r["MDE (t over settings)"],
                             n_needed=r["n needed (t over settings)"], untestable=untestable)
    return decided(decision, lo, hi, unit="points", n_unit="settings",
                   claim=f"LayerIF allocation beats {family} (LoRA-MoE)", model=model,
                   where=_where(model), paper=printed,
                   ours=f"{diff:+.1f} points over {int(r['settings'])} settings ({spread}{left})",
                   test="; ".join([TEST, which] + ([f"untestable: {untestable}"] if untestable else [])),
                   p=float(r["bootstrap p"]), notebook=NOTEBOOK, statistic=float(diff))
