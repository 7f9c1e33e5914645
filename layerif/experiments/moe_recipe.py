"""Notebook 03's fine-tuning recipe, chosen per model on validation examples (issue 22).

One recipe does not suit every model: with the cpu recipe, fine-tuning Gemma-3-270M on SST-2
scores below its base model, and then no allocation can be ranked. So the recipe is chosen per
model among a few candidates (``params["recipe_search"]["candidates"]``: fields of
:class:`~layerif.train.TrainConfig` changed on top of ``params["train"]``). Each candidate
fine-tunes one neutral method (``recipe_search.method``; the plain LoRA with the experts'
parameters is one adapter, so the recipe favours no allocation) on the same training examples
notebook 03's runs train on, on one task (``recipe_search.task``), and is scored on
``recipe_search.n_val`` examples of that task's **validation** split -- never the test examples
notebook 03 reports. The base model is scored on the same examples. The candidate with the
highest validation accuracy (ties: the one listed first) is the recipe of all the model's runs,
on every task of its plan (:func:`tuned`, called by :func:`layerif.experiments.moe.run`).
When even the chosen candidate does not score above the base model on those validation
examples, fine-tuning does not help the model at these sizes, and comparing allocations under
that recipe would measure the recipe: :func:`no_gain` gives the reason and notebook 03 trains
none of the model's allocations (its verdict rows read *untestable here*), unless the search
sets ``skip_if_no_gain: false``.

Each trial is a :class:`~layerif.experiments.moe.MoEStudy` run (the same training and evaluation
code) stored under ``<results>/moe_recipe/<model>/<task>/<method>/<recipe>`` with its own
identity kind (model, task, adapter and training configs, training and validation ids,
dtype) and its seconds in the manifest. A model whose chosen recipe is not ``train``'s
stores its runs beside the ones of ``train`` (``seed-0--<recipe>``: :class:`MoEStudy`'s
``recipe_tag``). Without ``recipe_search`` (None or absent) nothing is searched: every run
gets the one recipe of ``train``, in its folders, as before.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import store
from .._config import check
from ..train import TrainConfig
from .moe_runs import MoERun, MoESetting, MoEStudy, method_folder, recipe
from .moe_compare import BASE

__all__ = ["FIELDS", "KIND", "RecipeTrials", "choose", "no_gain", "recipe_name", "recipe_slug",
           "search", "search_spec", "tuned"]

KIND = "moe_recipe_trial"
#: The :class:`TrainConfig` fields a candidate may change (the seed is each run's own).
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", "progress"))
SPEC_KEYS = ("method", "task", "n_val", "candidates")


def search_spec(params: Mapping) -> dict | None:
    """``params["recipe_search"]`` checked (None when absent or null).

    Raises:
        ValueError: a key missing, ``n_val`` not a positive int, or a candidate that is not a
            mapping of :data:`FIELDS`.
    """
    spec = params.get("recipe_search")
    if spec is None:
        return None
    check(isinstance(spec, Mapping) and set(SPEC_KEYS) <= set(spec), "recipe_search", spec,
          f"null or a mapping with the keys {list(SPEC_KEYS)}")
    check(isinstance(spec["n_val"], int) and spec["n_val"] >= 1, "recipe_search.n_val",
          spec["n_val"], "an int >= 1")
    candidates = spec["candidates"]
    check(isinstance(candidates, list) and len(candidates) > 0, "recipe_search.candidates",
          candidates, "a non-empty list of mappings of TrainConfig fields")
    for c in candidates:
        check(isinstance(c, Mapping) and set(c) <= set(FIELDS), "recipe_search.candidates",
              c, f"a mapping of TrainConfig fields among {list(FIELDS)}")
    check(isinstance(spec.get("skip_if_no_gain", True), bool), "recipe_search.skip_if_no_gain",
          spec.get("skip_if_no_gain"), "true or false")
    return dict(spec)


def recipe_slug(overrides: Mapping) -> str:
    """A candidate as a folder name, fields sorted (``{"lr": 0.001, "epochs": 2}`` ->
    ``"epochs-2_lr-0.001"``: the same folder whatever order the parameters come in)."""
    return store.slug("_".join(f"{k}-{v}" for k, v in sorted(overrides.items())) or "train")


def recipe_name(overrides: Mapping) -> str:
    """A candidate as a short name, fields sorted (``{"lr": 0.001, "epochs": 2}`` ->
    ``"epochs=2, lr=0.001"``; ``{}``: ``"train as given"``)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "train as given"


class RecipeTrials(MoEStudy):
    """The recipe search of one model: :class:`MoEStudy` runs of ``recipe_search.method`` on
    ``recipe_search.task`` whose held-out examples are the validation split's first ``n_val``,
    stored apart from notebook 03's runs (:attr:`overrides` is the trial's candidate)."""

    eval_split = "validation"

    def __init__(self, results: str | Path, model_name: str, params: Mapping,
                 load_kwargs: dict | None = None):
        spec = search_spec(params)
        check(spec is not None, "recipe_search", None, "a mapping (see search_spec)")
        moe_config, train_config = recipe(params)
        super().__init__(results, model_name, params["labels"], moe_config, train_config,
                         params["n_train"], spec["n_val"], progress=False, load_kwargs=load_kwargs)
        self.method, self.task, self.overrides = spec["method"], spec["task"], {}

    def identity(self, setting: MoESetting) -> dict:
        return {**super().identity(setting), "kind": KIND}

    def folder(self, setting: MoESetting) -> Path:
        out = (self.results / "moe_recipe" / store.slug(self.model_name) / store.slug(setting.task)
               / method_folder(setting.method))
        if setting.method == BASE:
            return out
        return out / recipe_slug(self.overrides)

    def trial(self, overrides: Mapping | None) -> MoERun:
        """One candidate trained and scored on the validation examples, or loaded when stored
        (``None``: the base model, not trained)."""
        trial = copy.copy(self)  # shares the model and the examples; its own recipe
        trial.overrides = dict(overrides or {})
        trial.train_config = self.train_config.replace(**trial.overrides)
        return trial.run(MoESetting(BASE if overrides is None else self.method, self.task))


def search(params: Mapping, model_name: str, results: str | Path,
           load_kwargs: dict | None = None) -> pd.DataFrame:
    """Every candidate of ``params["recipe_search"]`` and the base model, scored on validation
    examples for one model (:class:`RecipeTrials`). One row per trial (index ``trial``: the
    candidates in order, then the base model): method, recipe, the candidate's fields, val
    accuracy, n_val, seconds, status (computed | loaded)."""
    trials = RecipeTrials(results, model_name, params, load_kwargs)
    candidates = search_spec(params)["candidates"]
    rows = [_row(trials.trial(c), trials.method, c) for c in candidates]
    rows.append(_row(trials.trial(None), BASE, {}))
    table = pd.DataFrame(rows).rename_axis("trial")
    fields = [f for f in FIELDS if f in table.columns]
    table[fields] = table[fields].convert_dtypes()
    return table


def _row(run: MoERun, method: str, overrides: Mapping) -> dict:
    return {"method": method, "recipe": recipe_name(overrides) if method != BASE else "",
            **overrides, "val accuracy": run.accuracy, "n_val": len(run.examples),
            "train_seconds": run.info["train_seconds"], "eval_seconds": run.info["eval_seconds"],
            "status": run.info["status"]}


def choose(table: pd.DataFrame) -> dict:
    """The chosen trial of a :func:`search` table: the candidate (a row whose ``method`` is not
    the base model) with the highest ``val accuracy``, the first listed among equals.

    Returns:
        ``{"trial": its index label, "recipe", "val accuracy", "base val accuracy" (NaN without
        a base row), "beats base": its val accuracy is above the base model's}``.
    """
    check(len(table) > 0 and {"method", "val accuracy"} <= set(table.columns), "table",
          list(table.columns), "a search table with rows and the columns method, val accuracy")
    is_base = table["method"] == BASE
    candidates = table.loc[~is_base, "val accuracy"]
    check(len(candidates) > 0, "table", table["method"].tolist(), "at least one candidate row")
    best = candidates.index[int(candidates.to_numpy().argmax())]  # argmax: the first maximum
    base = float(table.loc[is_base, "val accuracy"].iloc[0]) if is_base.any() else float("nan")
    accuracy = float(table.at[best, "val accuracy"])
    return {"trial": best, "recipe": table.at[best, "recipe"] if "recipe" in table else None,
            "val accuracy": accuracy, "base val accuracy": base, "beats base": accuracy > base}


def tuned(params: Mapping, model_name: str, results: str | Path,
          load_kwargs: dict | None = None) -> tuple[pd.DataFrame, TrainConfig, str]:
    """The recipe of one model's runs, the search behind it and the runs' folder tag
    (:class:`MoEStudy`'s ``recipe_tag``): without ``recipe_search`` an empty table, ``params``'
    one recipe (:func:`layerif.experiments.moe.recipe`) and no tag; else :func:`search`'s table
    (plus columns ``beats base`` and ``chosen``), ``train`` changed by the :func:`choose`-n
    candidate, and the candidate's :func:`recipe_slug` when that differs from ``train`` (the
    runs of ``train`` itself keep their folders)."""
    train_config, spec = recipe(params)[1], search_spec(params)
    if spec is None:
        return pd.DataFrame(), train_config, ""
    table = search(params, model_name, results, load_kwargs)
    choice = choose(table)
    table["beats base"] = (table["val accuracy"] > choice["base val accuracy"]) & (table["method"] != BASE)
    table["chosen"] = table.index == choice["trial"]
    candidate = spec["candidates"][choice["trial"]]
    chosen = train_config.replace(**candidate)
    return table, chosen, "" if chosen == train_config else recipe_slug(candidate)


def no_gain(table: pd.DataFrame, params: Mapping) -> str | None:
    """Why a model's allocations are not trained under its searched recipe, or None.

    A :func:`tuned` table whose chosen candidate does not score above the base model on the
    validation examples (``beats base`` false): fine-tuning with every candidate leaves the
    model no better than without it, so an allocation comparison would rank recipes' damage,
    not allocations. None when nothing was searched (an empty table) or the search sets
    ``skip_if_no_gain: false``.
    """
    spec = search_spec(params)
    if table.empty or spec is None or not spec.get("skip_if_no_gain", True):
        return None
    chosen = table.loc[table["chosen"]].iloc[0]
    if bool(chosen["beats base"]):
        return None
    base = table.loc[table["method"] == BASE, "val accuracy"].iloc[0]
    return (f"no candidate recipe beats the base model on {int(chosen['n_val'])} {spec['task']} "
            f"validation examples (best: {chosen['recipe']}, {chosen['val accuracy']:.3f} vs base "
            f"{base:.3f}), so no allocation was trained")
