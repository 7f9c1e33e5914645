"""Notebook 03: LoRA-MoE fine-tuning per expert allocation (Tables 1, 4, 7 and Fig. 2).

:func:`run` is the notebook's work: per model of its ``plans``, the recipe
(:func:`.moe_recipe.tuned`: chosen on validation examples when ``recipe_search`` is set; a
model no candidate recipe helps trains nothing, :func:`.moe_recipe.no_gain`), then every
setting of :func:`grid` trained or loaded (:class:`.moe_runs.MoEStudy`), then the tables
(:mod:`.moe_tables`). :func:`verdicts` gives its Table 7 rows (also notebook 10's),
:func:`single_run` is ``layerif moe``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import store
from .._config import check
from ..moe.io import read_experts
from ..notebook_params import load_options
from . import moe_tables as tables
from . import moe_verdicts
from .moe_recipe import no_gain, tuned
from .moe_runs import (BASE, KIND, LORA, MODEL_ONLY, MoERun, MoESetting, MoEStudy, method_folder,
                       recipe)
from .moe_tables import MoEResult
from .prose import bullets
from .verdict import Verdict

__all__ = ["BASE", "KIND", "LORA", "NOTEBOOK", "MoEResult", "MoERun", "MoESetting", "MoEStudy",
           "grid", "method_folder", "recipe", "recipe_table", "run", "single_run", "summary",
           "verdicts"]

NOTEBOOK = "03_lora_moe"


def grid(tasks, methods, seeds=(0,), spread: Mapping | None = None,
         budgets: Mapping | None = None, budget_tasks=None, per_block: float = 5.0) -> list[MoESetting]:
    """The settings of one model's study, without duplicates, in run order.

    Args:
        tasks: task labels of Table 1 / 4 (rows).
        methods: methods at ``per_block`` on every task (columns), each with every seed.
        seeds: the seeds every method runs with.
        spread: ``{"methods": [...], "seeds": [...]}``: extra seeds for some methods, on every
            task, to measure the seed-to-seed spread.
        budgets: ``{experts per block: [methods]}``: the other budgets of Fig. 2.
        budget_tasks: the tasks the other budgets run on (default ``tasks``).
    """
    check(len(tasks) > 0, "tasks", tasks, "a non-empty list of task labels")
    check(len(methods) > 0, "methods", methods, "a non-empty list of methods")
    out = [MoESetting(m, t, float(per_block), s) for s in seeds for t in tasks for m in methods]
    spread = spread or {}
    out += [MoESetting(m, t, float(per_block), s) for s in spread.get("seeds", ())
            for t in tasks for m in spread.get("methods", ())]
    for pb, names in (budgets or {}).items():
        out += [MoESetting(m, t, float(pb), s) for s in seeds for t in (budget_tasks or tasks)
                for m in names]
    return list(dict.fromkeys(out))


def run(params: Mapping, profile: str = "smoke", results=None) -> MoEResult:
    """Notebook 03: per model of ``params["plans"]``, its recipe (:func:`.moe_recipe.tuned`:
    chosen on validation examples when ``params["recipe_search"]`` is set), then every setting
    of its plan (:func:`grid`) trained or loaded (:meth:`MoEStudy.run_all`), and the tables. A
    model whose best recipe does not beat its base model (:func:`.moe_recipe.no_gain`) trains
    nothing: the reason is in the result's ``skipped``.

    Raises:
        ValueError: every model of the plans was skipped (nothing to compare).
    """
    check(len(params["plans"]) > 0, "plans", params["plans"], "at least one model's plan")
    results = Path(results or store.results_dir(profile))
    moe_config = recipe(params)[0]
    runs, logs, identical, searches, skipped = {}, {}, {}, {}, {}
    for model, plan in params["plans"].items():
        searches[model], train_config, tag = tuned(params, model, results, load_options(params))
        why = no_gain(searches[model], params)
        if why:
            skipped[model] = why
            continue
        study = MoEStudy(results, model, params["labels"], moe_config, train_config,
                         params["n_train"], params["n_eval"], progress=False,
                         load_kwargs=load_options(params), recipe_tag=tag)
        runs[model], logs[model] = study.run_all(grid(**plan)), study.log
        trained = {(s.method, s.task, s.per_block) for s in runs[model]}
        identical[model] = tables.identical_allocations(study.allocations(), trained)
    check(len(runs) > 0, "plans", list(params["plans"]),
          f"at least one model a recipe helps (skipped: {skipped})")
    log = pd.concat(logs, names=["model", "run"])
    cold = log[["train_seconds", "eval_seconds"]].to_numpy().sum() / 60
    sizes = (f"{len(log)} runs of {', '.join(runs)}; {params['n_train']} training and "
             f"{params['n_eval']} held-out examples per task; cold cost of the runs (stored "
             f"training + evaluation seconds): {cold:.1f} min"
             + "".join(f"; {m}: nothing trained (no recipe beats its base model)" for m in skipped))
    return tables.notebook_tables(runs, log, params, sizes, pd.concat(identical, names=["model"]),
                                  pd.concat(searches, names=["model"]), skipped)


def recipe_table(params: Mapping) -> pd.DataFrame:
    """The adapter and the fine-tuning recipe every method gets, one row per setting
    (``part``: adapter | training; the fields of :class:`MoEConfig` and :class:`TrainConfig`
    that define a run, i.e. without progress bars)."""
    moe_config, train_config = recipe(params)
    rows = [("adapter", k, v) for k, v in moe_config.identity().items()]
    rows += [("training", k, v) for k, v in train_config.identity().items()]
    rows += [("data", "training examples per task", params["n_train"]),
             ("data", "held-out examples per task", params["n_eval"])]
    frame = pd.DataFrame(rows, columns=["part", "setting", "value"]).set_index(["part", "setting"])
    frame["value"] = frame["value"].map(lambda v: "all" if v is None else str(v))
    return frame


def verdicts(result: MoEResult, level: float = 0.05) -> list[Verdict]:
    """Tables 1 / 4 / 7 and Fig. 2: LayerIF's experts beat each baseline family of Table 7, per
    model, by the paper's d (:func:`.verdict.decide_effect` on the paired bootstrap interval;
    MDE and n needed from the paired t over settings; tasks the comparison cannot test left
    out): :func:`.moe_verdicts.verdicts`."""
    return moe_verdicts.verdicts(result, level)


def summary(result: MoEResult, level: float = 0.05) -> str:
    """What the numbers say: each verdict row as a sentence, then per model how many of the
    per-task differences (one seed, McNemar) are significant at ``level``."""
    lines = [v.sentence() for v in verdicts(result, level)]
    paired = {m: t["paired"] for m, t in result.models.items() if len(t["paired"])}
    lines += [f"{m}: per task and baseline (one seed, McNemar), {int((p['McNemar p'] < level).sum())}"
              f" of {len(p)} differences significant at {level}." for m, p in paired.items()]
    lines += [f"{m}: {t} at {pb:g} experts per block: {names} give the same experts per "
              "block, so their rows are one allocation trained twice."
              for (m, t, pb), names in result.identical["identical allocations"].items()]
    return "\n".join(lines)


def conclusion(result: MoEResult, level: float = 0.05):
    """:func:`summary` as rendered Markdown."""
    return bullets(summary(result, level))


def single_run(model_name: str, task: str, method: str | None = None, allocation=None,
               params: Mapping | None = None, per_block: float = 5.0, seed: int = 0,
               n_train: int | None = None, n_eval: int | None = None, results=None,
               device: str = "auto", overwrite: bool = False) -> tuple[MoERun, Path]:
    """One fine-tune and evaluation, as ``layerif moe`` runs it: the adapter, recipe and sizes
    of notebook 03's ``params`` for a profile (``layerif.study.load_params("03_lora_moe",
    profile)``, the one source of sizes), an allocation ``method`` computed from the task's
    saved scores (LayerIF) or the model alone (AlphaLoRA, MoLA, the plain LoRA), or
    ``allocation`` (a CSV of experts per block, or a Series); saved in the profile's store.
    The recipe is the one notebook 03 trains the model with (:func:`.moe_recipe.tuned`: with
    ``recipe_search`` set, the search is loaded, or run first, and the run lands in the same
    folders as the notebook's); a model no candidate helps is trained all the same, with a
    warning giving :func:`.moe_recipe.no_gain`'s reason.

    Returns ``(run, folder)``.
    """
    check((method is None) != (allocation is None), "method/allocation", (method, allocation),
          "exactly one of an allocation method and an allocation CSV")
    need = {"profile", "moe_preset", "train_preset", "n_train", "n_eval"}
    check(isinstance(params, Mapping) and need <= set(params), "params", params,
          f"notebook 03's parameters with {sorted(need)} (params/<profile>/03_lora_moe.yaml)")
    table = None
    if allocation is not None:
        method, per_block, table = _given(allocation)
    results = Path(results or store.results_dir(params["profile"]))
    search, train_config, tag = tuned(params, model_name, results, load_options(params))
    why = no_gain(search, params)
    if why:
        warnings.warn(f"{model_name}: {why} in notebook 03; this run uses the best recipe anyway",
                      stacklevel=2)
    moe_study = MoEStudy(results, model_name, [task], recipe(params)[0], train_config,
                         n_train or params["n_train"], n_eval or params["n_eval"],
                         allocations=table, device=device, load_kwargs=load_options(params),
                         recipe_tag=tag)
    setting = MoESetting(method, task, float(per_block), seed)
    return moe_study.run(setting, overwrite), moe_study.folder(setting)


def _given(allocation) -> tuple[str, float, pd.DataFrame]:
    """A given allocation (a CSV of experts per block, or a Series) as ``(method, experts per
    block, allocation table)`` of :class:`MoEStudy`'s ``allocations``."""
    experts = allocation if isinstance(allocation, pd.Series) else read_experts(allocation)
    method = ("allocation" if isinstance(allocation, pd.Series)
              else f"allocation {Path(str(allocation)).stem}")
    per_block = float(experts.sum()) / len(experts)
    table = experts.to_frame().T.set_axis(
        pd.MultiIndex.from_tuples([(method, MODEL_ONLY, per_block)],
                                  names=["method", "task", "per_block"]))
    table["total"] = int(experts.sum())
    return method, per_block, table
