"""Tables, paired tests and figures of the LoRA-MoE study (notebook 03), from :class:`MoERun` results.

Accuracies are shares of held-out examples answered correctly (log-likelihood ranking of the
choices). Every comparison pairs two methods on the same examples: per task with McNemar's
exact test (one seed), and across tasks and budgets (the paper's Table 7) with the paper's
paired t-test over per-setting accuracies and a paired bootstrap over the examples. The
seed-to-seed spread of one method is shown beside every difference between methods: a
difference smaller than that spread is not a difference this study can see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from .. import paper, plots, stats
from .moe_compare import BASE, paired_by_task, versus

if TYPE_CHECKING:
    from .moe_runs import MoERun, MoESetting

__all__ = ["AVERAGE", "BASE", "FAMILIES", "LORA", "MoEResult", "PAPER_COLUMNS", "PAPER_TABLES",
           "RUN_COLUMNS", "SHOWN", "TASK_ROWS", "accuracy_table", "budget_figures", "budget_note",
           "accuracy_shown", "budget_table", "chance_check", "identical_allocations", "seed_counts",
           "stand_in", "table7_comparison", "loss_curves", "loss_figures", "model_tables",
           "notebook_tables", "paper_comparison", "runs_frame", "seed_spread", "tasks_at_chance",
           "table", "usage_table"]

#: The two rows that are not allocations: the model without fine-tuning (``BASE``, from
#: :mod:`.moe_compare`), and one LoRA per projection with the experts' trainable parameters.
LORA = "LoRA (same parameters)"
AVERAGE = "Average"
#: The columns of :func:`runs_frame` the notebook shows.
RUN_COLUMNS = ["accuracy", "trainable_params", "final loss", "train_seconds"]
#: The paper's Table 7 rows (baseline families) as our method names.
FAMILIES = {"AlphaLora": ("AlphaLoRA",),
            "Mola": ("MoLA 2468", "MoLA 5555", "MoLA 8642", "MoLA 1234", "MoLA 46810", "MoLA 3578")}


def runs_frame(runs: Mapping[MoESetting, MoERun]) -> pd.DataFrame:
    """One row per run (index task, method, per_block, seed): accuracy, examples, trainable
    parameters, final training loss and seconds."""
    rows = [{"task": s.task, "method": s.method, "per_block": s.per_block, "seed": s.seed,
             "accuracy": r.accuracy, "n": len(r.examples),
             "trainable_params": r.info.get("trainable_params", 0),
             "final loss": float(r.history.iloc[-1]) if len(r.history) else np.nan,
             "train_seconds": r.info["train_seconds"], "eval_seconds": r.info["eval_seconds"]}
            for s, r in runs.items()]
    return pd.DataFrame(rows).set_index(["task", "method", "per_block", "seed"]).sort_index()


def _at(runs: Mapping[MoESetting, MoERun], per_block: float) -> dict[MoESetting, MoERun]:
    """The runs at one budget, plus the base model's (it has no budget)."""
    return {s: r for s, r in runs.items() if s.per_block == per_block or s.method == BASE}


def accuracy_table(runs: Mapping[MoESetting, MoERun], per_block: float = 5.0) -> pd.DataFrame:
    """Accuracy (seed mean) per task (rows, plus :data:`AVERAGE`) and method (columns) at one
    budget; methods in the order first met."""
    frame = runs_frame(_at(runs, per_block))["accuracy"]
    table = frame.groupby(["task", "method"], sort=False).mean().unstack("method")
    order = list(dict.fromkeys(s.method for s in _at(runs, per_block)))
    table = table[[m for m in order if m in table.columns]]
    table.loc[AVERAGE] = table.mean(axis=0, skipna=False)
    table.columns.name = None
    return table


def seed_counts(runs: Mapping[MoESetting, MoERun], per_block: float = 5.0) -> pd.DataFrame:
    """Seeds behind each cell of :func:`accuracy_table` (task x method)."""
    frame = runs_frame(_at(runs, per_block))["accuracy"]
    return frame.groupby(["task", "method"], sort=False).size().unstack("method")


def accuracy_shown(result: "MoEResult", mark: str = "†") -> pd.DataFrame:
    """Table 1 / 4 as shown: accuracy (%) to one decimal per (model, task) and method, a
    cell that is a mean over several seeds marked ``mark`` (the others are one seed), a
    method the model did not run blank, each model's Average over its tasks."""
    parts = {}
    for model, t in result.models.items():
        acc, seeds = t["accuracy"], t["seeds"].reindex_like(t["accuracy"])
        shown = acc.mul(100).map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        parts[model] = shown.where(~(seeds > 1), shown + mark)
    return pd.concat(parts, names=["model"]).fillna("")


def identical_allocations(allocations: pd.DataFrame, settings) -> pd.DataFrame:
    """Runs whose experts per block are the same allocation (e.g. LayerIF +ve and LayerIF
    All when nearly every influence is helpful): among the rows of ``allocations`` (index
    method, task, per_block) that are in ``settings`` (the ``(method, task, per_block)``
    trained), one row per (task, per_block) with the identical methods joined by " = "."""
    rows = allocations.drop(columns="total")
    rows = rows[[key in set(settings) for key in rows.index]]
    found = {}
    for (task, pb), group in rows.groupby(level=["task", "per_block"], sort=False):
        keys = group.apply(lambda r: tuple(r.astype(int)), axis=1)
        for _, same in keys.groupby(keys):
            if len(same) > 1:
                found[(task, pb)] = " = ".join(same.index.get_level_values("method"))
    index = pd.MultiIndex.from_tuples(list(found), names=["task", "per_block"])
    return pd.DataFrame({"identical allocations": list(found.values())}, index=index)


def chance_check(runs: Mapping[MoESetting, MoERun], level: float = 0.05) -> pd.DataFrame:
    """Per (task, method): is the accuracy above what answering without the skill scores?

    The bar is the higher of chance (mean of 1 / number of choices) and always giving the most
    frequent gold answer; the test is the one-sided exact binomial test of the accuracy against
    it (:func:`layerif.stats.above_rate`), seed 0. A task where every method sits at the bar
    cannot rank the methods.
    """
    rows = {}
    for s, r in runs.items():
        if s.seed != 0:
            continue
        ex = r.examples
        chance = float((1.0 / ex["n_choices"]).mean())
        majority = float(ex["label"].value_counts(normalize=True).iloc[0])
        bar = max(chance, majority)
        test = stats.above_rate(ex["correct"].to_numpy(dtype=bool), min(bar, 0.999))
        rows[(s.task, s.method, s.per_block)] = {
            "acc": test.estimate, "bar": bar, "chance": chance, "majority answer": majority,
            "p (acc > bar)": test.pvalue, "above bar": test.pvalue < level, "n": test.n}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.names = ["task", "method", "per_block"]
    return out.sort_index()


def seed_spread(runs: Mapping[MoESetting, MoERun]) -> pd.DataFrame:
    """Per (task, method, budget) trained with two or more seeds: accuracy of each seed and
    the range (max - min)."""
    acc = runs_frame(runs)["accuracy"].unstack("seed")
    acc = acc[acc.notna().sum(axis=1) >= 2]
    acc.columns = [f"seed {c}" for c in acc.columns]
    acc["range"] = acc.max(axis=1) - acc.min(axis=1)
    return acc


def budget_table(runs: Mapping[MoESetting, MoERun], families: Mapping[str, tuple[str, ...]]) -> pd.DataFrame:
    """Fig. 2: average accuracy (seed mean) per budget (rows) and family (columns; a family's
    methods averaged where several run at a budget), over the tasks run at every budget only,
    so that the rows average the same tasks."""
    acc = runs_frame({s: r for s, r in runs.items() if s.method != BASE})["accuracy"]
    acc = acc.groupby(["task", "method", "per_block"]).mean()
    by_budget = acc.reset_index().groupby("per_block")["task"].agg(set)
    common = set.intersection(*by_budget) if len(by_budget) else set()
    acc = acc[acc.index.get_level_values("task").isin(common)]
    out = {}
    for name, methods in families.items():
        part = acc[acc.index.get_level_values("method").isin(methods)]
        if len(part):
            out[name] = part.groupby(["per_block", "task"]).mean().groupby("per_block").mean()
    table = pd.DataFrame(out)
    table.index.name = "experts per block"
    table.attrs["tasks"] = sorted(common)
    return table


def loss_curves(runs: Mapping[MoESetting, MoERun], task: str, per_block: float = 5.0,
                seed: int = 0) -> pd.DataFrame:
    """Training loss per optimizer step (rows) of every method (columns) on one task
    (``attrs["task"]``)."""
    curves = {s.method: r.history for s, r in runs.items()
              if s.task == task and s.per_block == per_block and s.seed == seed and len(r.history)}
    frame = pd.DataFrame(curves)
    frame.index.name = "step"
    frame.attrs["task"] = task
    return frame


def usage_table(runs: Mapping[MoESetting, MoERun], per_block: float = 5.0, seed: int = 0) -> pd.DataFrame:
    """The routers' load after training, per (task, method): over the blocks with a router,
    the mean experts allocated, the mean experts taking >= 5% of the assignments and the
    mean effective number of experts (exp of the assignment entropy)."""
    rows = {}
    for s, r in runs.items():
        if s.per_block != per_block or s.seed != seed or s.method in (BASE, LORA) or r.load.empty:
            continue
        rows[(s.task, s.method)] = {"routed blocks": len(r.load),
                                    "experts allocated": r.load["experts"].mean(),
                                    "experts used (>= 5%)": r.load["used"].mean(),
                                    "effective experts": r.load["effective"].mean()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    if len(out):
        out.index.names = ["task", "method"]
    return out


#: Our task labels -> the paper's rows (SST-2 stands in for CoLA, SciQ for ScienceQA).
TASK_ROWS = {"mrpc": "MRPC", "csqa": "Common Q", "openbookqa:instruct": "Openbook Q",
             "sst2": "Cola", "sciq": "Text Science Q"}
#: The paper's table each model stands in for (Table 1: Mistral-7B, Table 4: Gemma-7B).
PAPER_TABLES = {"smollm2-135m": "table1", "gemma3-270m": "table4"}
#: Our method names -> the paper's column labels (Tables 1 and 4).
PAPER_COLUMNS = {"AlphaLoRA": "AlphaLora", "MoLA 2468": "MoLA(2468)", "MoLA 5555": "MoLA(5555)",
                 "MoLA 8642": "MoLA(8642)", "MoLA 3578": "MoLA(3,5,7,8)",
                 "LayerIF +ve": "LayerIF (+ve)", "LayerIF Top 25%": "LayerIF (Top 25%)",
                 "LayerIF All": "LayerIF (All)"}


def paper_comparison(table: pd.DataFrame, table_id: str, task_rows: Mapping[str, str],
                     note: str, at_chance=()) -> pd.DataFrame:
    """:func:`layerif.paper.compare` of an :func:`accuracy_table` (fractions) with the paper's
    Table 1 or 4 (percent): the methods the paper printed, the tasks run here, no average
    (ours averages fewer tasks than the paper's); cells we did not run are dropped. On the
    tasks in ``at_chance`` (no trained model above the chance bar) ours is kept but the
    difference is left empty: a model at chance is not a smaller effect, it is no signal."""
    printed = paper.table(table_id).columns
    columns = {c: PAPER_COLUMNS[c] for c in table.columns
               if c in PAPER_COLUMNS and PAPER_COLUMNS[c] in printed}
    ours = table.drop(index=AVERAGE, errors="ignore")[list(columns)]
    rows = {k: v for k, v in task_rows.items() if k in ours.index}
    out = paper.compare(ours, table_id, rows=rows, columns=columns, note=note, scale=100)
    out = out.dropna(subset=["ours"])
    blank = out.index.get_level_values("row").isin([rows[t] for t in at_chance if t in rows])
    out.loc[blank, "difference"] = np.nan
    out.loc[blank, "note"] = out.loc[blank, "note"] + "; at chance here: no difference shown"
    return out


def tasks_at_chance(chance: pd.DataFrame, base: str = BASE) -> list[str]:
    """Tasks of a :func:`chance_check` on which no trained method (every method but ``base``)
    clears the bar: they cannot rank allocations, and a gap to the paper there is noise."""
    trained = chance[chance.index.get_level_values("method") != base]
    above = trained["above bar"].groupby(level="task").any()
    return sorted(above.index[~above])


@dataclass(frozen=True)
class MoEResult:
    """What notebook 03 shows (:func:`notebook_tables`): ``models`` maps each model to its
    tables by name (:data:`SHOWN`; :func:`table` stacks one over the models) and ``noise`` (its
    mean seed-to-seed range, NaN when not measured); ``log`` is the run log, ``table7_paper``
    the first model's Table 7 beside the paper's, ``ours`` the method compared with the others,
    ``recipes`` each model's recipe search (:func:`.moe_recipe.search`; empty: none),
    ``skipped`` the models of the plans that trained nothing, each with the reason
    (:func:`.moe_recipe.no_gain`)."""

    runs: dict
    models: dict
    log: pd.DataFrame
    table7_paper: pd.DataFrame
    sizes: str
    ours: str
    identical: pd.DataFrame = None
    recipes: pd.DataFrame = None
    skipped: dict = field(default_factory=dict)


#: The per-model tables of :class:`MoEResult`, in the notebook's order.
SHOWN = ("accuracy", "comparison", "chance", "spread", "table7", "paired", "fig2", "frames",
         "usage", "curves")


def model_tables(model: str, runs: Mapping, ours: str, n_eval: int, task: str) -> dict:
    """One model's tables of :data:`SHOWN` (and ``noise``) from its runs; ``task`` is the one
    whose loss curves are shown."""
    spread = seed_spread(runs)
    noise = float(spread["range"].mean()) if len(spread) else np.nan
    accuracy, chance = accuracy_table(runs, 5.0), chance_check(runs)
    return {"accuracy": accuracy, "seeds": seed_counts(runs, 5.0), "spread": spread, "noise": noise,
            "comparison": paper_comparison(accuracy, PAPER_TABLES.get(model, "table1"), TASK_ROWS,
                                           f"{model}; {n_eval} held-out examples per task",
                                           tasks_at_chance(chance)),
            "chance": chance, "table7": versus(runs, ours, FAMILIES, None, noise),
            "paired": paired_by_task(runs, ours), "frames": runs_frame(runs),
            "fig2": budget_table(runs, {"LayerIF": (ours,), **FAMILIES}),
            "usage": usage_table(runs), "curves": loss_curves(runs, task)}


def stand_in(models, table_id: str) -> str | None:
    """The model of ``models`` that stands in for the paper's model of ``table_id`` (by
    :data:`PAPER_TABLES` and the model each paper table names), or None: Table 7 is
    Mistral-7B's, so SmolLM2 (Table 1's stand-in), never Gemma-3-270M (Table 4's)."""
    wanted = paper.entry(table_id)["model"]
    return next((m for m in models if m in PAPER_TABLES
                 and paper.entry(PAPER_TABLES[m])["model"] == wanted), None)


def table7_comparison(table7: pd.DataFrame, ours: str, model: str) -> pd.DataFrame:
    """Our Table 7 beside the paper's: average accuracy (%) and the paired t-test's p per
    baseline family. p-values are not subtracted (no difference), and the reference row
    LayerIF, which has no p in either, is left out of the p-value rows."""
    mine = table7[["average accuracy", "t-test p (per setting)"]].rename(
        index={ours: "LayerIF"},
        columns={"average accuracy": "Average Accuracy", "t-test p (per setting)": "p-value"})
    mine["Average Accuracy"] *= 100
    out = paper.compare(mine, "table7", note=f"{model}; averages over the settings run here")
    out.loc[out.index.get_level_values("column") == "p-value", "difference"] = np.nan
    return out.dropna(subset=["paper", "ours"], how="all")


def notebook_tables(runs: Mapping, log: pd.DataFrame, params: Mapping, sizes: str,
                    identical: pd.DataFrame | None = None,
                    recipes: pd.DataFrame | None = None,
                    skipped: Mapping[str, str] | None = None) -> MoEResult:
    """Notebook 03's result from its runs (model -> ``{MoESetting: MoERun}``), run log and
    parameters (``ours``, ``n_eval``, each plan's first task for the loss curves)."""
    ours = params.get("ours", "LayerIF +ve")
    models = {m: model_tables(m, r, ours, params["n_eval"], params["plans"][m]["tasks"][0])
              for m, r in runs.items()}
    model = stand_in(models, "table7")  # Table 7 is Mistral-7B's: its stand-in's runs
    table7 = (table7_comparison(models[model]["table7"], ours, model) if model is not None
              else pd.DataFrame())
    if identical is None:
        identical = pd.DataFrame({"identical allocations": pd.Series(dtype=object)})
    recipes = pd.DataFrame() if recipes is None else recipes
    return MoEResult(runs, models, log, table7, sizes, ours, identical, recipes, dict(skipped or {}))


def table(result: MoEResult, name: str) -> pd.DataFrame:
    """One table of :data:`SHOWN` stacked over the models (index level ``model`` first)."""
    return pd.concat({m: t[name] for m, t in result.models.items()}, names=["model"])


def budget_note(result: MoEResult) -> str:
    """Which tasks Fig. 2's rows average, per model."""
    return "\n".join(f"{m}: average over {t['fig2'].attrs['tasks']} (the tasks run at every "
                     "budget)" for m, t in result.models.items())


def budget_figures(result: MoEResult) -> list:
    """Fig. 2: average accuracy (%) by experts per block, per model run at several budgets."""
    return [plots.layer_lines(t["fig2"].mul(100), title=f"{m}: average accuracy by experts per "
                              "block", ylabel="accuracy (%)", xlabel="experts per block")
            for m, t in result.models.items() if len(t["fig2"]) > 1]


def loss_figures(result: MoEResult) -> list:
    """Training loss per optimizer step of every method, per model (:func:`loss_curves`)."""
    return [plots.layer_lines(t["curves"], title=f"{m}, {t['curves'].attrs['task']}: training "
                              "loss per step (seed 0)", ylabel="loss", xlabel="optimizer step")
            for m, t in result.models.items()]
