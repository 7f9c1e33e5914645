"""Notebook 03: LoRA-MoE fine-tuning per expert allocation; every trained model is a stored result.

A :class:`MoESetting` names one fine-tuned model: the allocation method, the task, the
experts per block and the seed. :class:`MoEStudy` holds what the settings of one model share
-- the base model, the allocations (computed from notebook 01's DataInf scores exactly as
notebook 02 does), the training and evaluation examples of each task, the adapter and
training recipes -- and :meth:`MoEStudy.run` attaches the adapter, fine-tunes, evaluates on
held-out examples, measures the routers' load and detaches it again (``detach`` gives back
the exact base model, so one loaded model serves every run). Each run is saved under
``<results>/moe/<model>/<task>/<per_block>/<method>/seed-<seed>`` (``--<recipe>`` added for
a recipe :mod:`.moe_recipe` chose other than ``train``'s) with its identity (method,
per-block experts, adapter and training configs, seed, the example ids), so an interrupted
study resumes and a re-run trains only what is missing.

Every method gets the same recipe, the same training examples in the same order (the
training seed), the same adapter initialisation seed and the same evaluation examples.
Two rows are not allocations: :data:`BASE`, the model without fine-tuning (is the training
doing anything?), and :data:`LORA`, one LoRA per projection whose rank gives it the experts'
trainable parameters (rank ``T * r / L``, the experts' alpha; the MoE has only its routers
more) -- does the mixture help at all at this scale? With alpha scaled to keep ``alpha / rank``
(a 5x larger update scale at 5 experts per block) it trained to 56% on SST-2, against 78% with
the experts' alpha (SmolLM2, the cpu sizes): the comparison is sensitive to that choice.

:func:`run` is the notebook's work (every model of its ``plans``, then its tables: moe_tables),
:func:`verdicts` its Table 7 rows (also notebook 10's), :func:`single_run` is ``layerif moe``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
from tqdm.auto import tqdm

from .. import baselines, store
from .._config import check
from ..evaluate.choices import choice_logliks
from ..models import load_model, model_id
from ..notebook_params import load_options
from ..moe import MoEConfig, attach, detach, moe_table
from ..moe.io import read_experts
from ..moe.usage import load_summary, router_load
from ..tokens import collate, pad_token_id
from ..train import TrainConfig, finetune, tokenize_texts
from . import moe_tables as tables
from . import moe_verdicts
from .allocation import block_alpha, expert_allocations
from .moe_compare import BASE
from .moe_tables import LORA, MoEResult
from .scoring import aggregated_scores, label_examples
from .prose import bullets
from .verdict import Verdict

__all__ = ["BASE", "KIND", "LORA", "NOTEBOOK", "MoEResult", "MoERun", "MoESetting", "MoEStudy",
           "grid", "method_folder", "recipe", "run", "single_run", "summary",
           "verdicts"]

NOTEBOOK = "03_lora_moe"
KIND = "moe_run"
MODEL_ONLY = "(model only)"


@dataclass(frozen=True)
class MoESetting:
    """One fine-tuned model of the study.

    Attributes:
        method: an allocation of :func:`layerif.experiments.allocation.expert_allocations`
            (``"LayerIF +ve"``, ``"LayerIF Top 25%"``, ``"LayerIF All"``, ``"AlphaLoRA"``,
            ``"MoLA 2468"`` ...), :data:`LORA` or :data:`BASE`.
        task: the task label of notebook 01 (``"openbookqa:instruct"``).
        per_block: average experts per block (the total is ``round(per_block * L)``).
        seed: seeds the adapter's initialisation, the data order and dropout.
    """

    method: str
    task: str
    per_block: float = 5.0
    seed: int = 0


@dataclass
class MoERun:
    """A trained and evaluated setting: per-example results (:func:`choice_logliks` rows),
    the loss per optimizer step, the routers' load per block and the run's facts."""

    examples: pd.DataFrame
    history: pd.Series
    load: pd.DataFrame
    info: dict

    @property
    def accuracy(self) -> float:
        return float(self.examples["correct"].mean())


class MoEStudy:
    """The LoRA-MoE runs of one model (see the module docstring).

    Args:
        results: the profile's results folder (notebook 01's scores are read from it).
        model_name: a model of :func:`layerif.load_model`.
        labels: the task labels whose scores define the LayerIF allocations.
        moe_config: the adapter recipe (its ``seed`` is replaced by each setting's).
        train_config: the training recipe (its ``seed`` is replaced by each setting's).
        n_train: training examples per task (the first of the task's seeded train split).
        n_eval: held-out evaluation examples per task (the registry's ``test`` split: :attr:`eval_split`).
        beta: the exponent of LayerIF's and AlphaLoRA's mapping.
        per_block: the budgets the allocations are computed for.
        allocations: the allocation table itself (index method, task, per_block; columns the
            blocks and ``total``, as :func:`expert_allocations` returns); None computes it
            (LayerIF's rows from notebook 01's saved scores, the model-only rows from the
            model alone).
        load_kwargs: more arguments of :func:`layerif.load_model` (the model's ``dtype``:
            :func:`layerif.notebook_params.load_options`).
        recipe_tag: a recipe chosen other than ``train_config``'s default (moe_recipe.tuned):
            appended to the trained runs' folders (``seed-0--<tag>``), beside the default's runs.
    """

    eval_split = "test"  # the split of the held-out examples (moe_recipe's trials: "validation")

    def __init__(self, results: str | Path, model_name: str, labels, moe_config: MoEConfig,
                 train_config: TrainConfig, n_train: int, n_eval: int, beta: float = 2.5,
                 per_block=(2.5, 5.0, 7.0), allocations: pd.DataFrame | None = None,
                 device: str = "auto", progress: bool = True, load_kwargs: dict | None = None,
                 recipe_tag: str = ""):
        self.results, self.model_name, self.labels = Path(results), model_name, list(labels)
        self.moe_config, self.train_config = moe_config, train_config.replace(progress=False)
        self.n_train, self.n_eval, self.beta = int(n_train), int(n_eval), float(beta)
        self.per_block, self.progress = tuple(float(p) for p in per_block), progress
        self.recipe_tag = recipe_tag
        self.model, self.tokenizer = load_model(model_name, device=device, **(load_kwargs or {}))
        self._given = allocations
        self._tables: dict[bool, pd.DataFrame] = {}
        self._examples: dict[str, tuple[list, list]] = {}
        self.log = pd.DataFrame()

    def allocations(self, scored: bool = True) -> pd.DataFrame:
        """Experts per block of every method, task and budget (notebook 02's table); with
        ``scored=False`` the model-only methods' rows (AlphaLoRA, MoLA), which need no scores."""
        if self._given is not None:
            return self._given
        if scored not in self._tables:
            alpha = block_alpha(self.model, self.results)
            scores = (aggregated_scores(self.results, self.model_name, self.labels) if scored
                      else pd.DataFrame(columns=alpha.index))
            self._tables[scored] = expert_allocations(scores, alpha, self.per_block, self.beta)
        return self._tables[scored]

    def examples(self, task: str) -> tuple[list, list]:
        """The training and held-out evaluation examples of a task label."""
        if task not in self._examples:
            self._examples[task] = (label_examples(task, "train", self.n_train),
                                    label_examples(task, self.eval_split, self.n_eval))
        return self._examples[task]

    def experts(self, setting: MoESetting) -> pd.Series | None:
        """The per-block expert counts of a setting (ones for :data:`LORA`, None for :data:`BASE`)."""
        if setting.method == BASE:
            return None
        table = self.allocations(setting.method.startswith("LayerIF"))
        if setting.method == LORA:
            return pd.Series(1, index=table.columns.drop("total").rename("layer"), name="experts")
        key = (setting.method, setting.task if setting.method.startswith("LayerIF") else MODEL_ONLY,
               float(setting.per_block))
        if key not in table.index and setting.method.startswith("MoLA "):
            return _mola(setting.method.removeprefix("MoLA "), self.n_blocks())
        if key not in table.index:
            raise ValueError(f"setting={setting} is invalid: no allocation {key}; available: "
                             f"{sorted(set(table.index.get_level_values('method')))}")
        return table.loc[key].drop("total").astype(int).rename("experts").rename_axis("layer")

    def n_blocks(self) -> int:
        return len(self.allocations(False).columns) - 1  # the table's last column is "total"

    def adapter_config(self, setting: MoESetting) -> MoEConfig:
        """The adapter of a setting: the study's, seeded; :data:`LORA` gets the matched rank."""
        cfg = self.moe_config.replace(seed=setting.seed)
        if setting.method != LORA:
            return cfg
        total = round(setting.per_block * self.n_blocks())
        rank = max(1, round(total * cfg.rank / self.n_blocks()))
        return cfg.replace(rank=rank, top_k=1)

    def identity(self, setting: MoESetting) -> dict:
        experts = self.experts(setting)
        config = {"method": setting.method, "per_block": float(setting.per_block),
                  "experts": None if experts is None else [int(e) for e in experts],
                  "moe": None if experts is None else self.adapter_config(setting).identity(),
                  "train": None if experts is None else
                  self.train_config.replace(seed=setting.seed).identity()}
        train, test = self.examples(setting.task)
        return store.identity(KIND, config, model_id(self.model),
                              {"task": setting.task, "train_ids": [e.id for e in train],
                               "eval_ids": [e.id for e in test]}, dtype=self.model.dtype)

    def folder(self, setting: MoESetting) -> Path:
        tag = f"--{self.recipe_tag}" if self.recipe_tag and setting.method != BASE else ""
        return (self.results / "moe" / store.slug(self.model_name) / store.slug(setting.task)
                / f"{setting.per_block:g}" / method_folder(setting.method)
                / f"seed-{setting.seed}{tag}")

    def run(self, setting: MoESetting, overwrite: bool = False) -> MoERun:
        """Train and evaluate one setting, or load it when saved with the same identity
        (:func:`layerif.store.cached`)."""
        return store.cached(self.folder(setting), self.identity(setting),
                            lambda: self._train_and_evaluate(setting), overwrite=overwrite,
                            load=_load_run, save_as=_save_run)

    def _train_and_evaluate(self, setting: MoESetting) -> MoERun:
        train, test = self.examples(setting.task)
        experts = self.experts(setting)
        start = time.perf_counter()
        history, load, params = pd.Series(dtype=float), pd.DataFrame(), 0
        if experts is not None:
            attach(self.model, experts, config=self.adapter_config(setting))
            try:
                history = finetune(self.model, self.tokenizer, train,
                                   self.train_config.replace(seed=setting.seed))["loss"]
                params = int(moe_table(self.model)["trainable_params"].sum())
                trained = time.perf_counter()
                frame = choice_logliks(self.model, self.tokenizer, test, progress=False)
                load = load_summary(router_load(self.model, self._batches(test)))
            finally:
                detach(self.model)
        else:
            trained = time.perf_counter()
            frame = choice_logliks(self.model, self.tokenizer, test, progress=False)
        extra = {"label": setting.method, "accuracy": float(frame["correct"].mean()),
                 "history": [float(x) for x in history], "trainable_params": params,
                 "load": load.reset_index().to_dict(orient="list"),
                 "train_seconds": round(trained - start, 2),
                 "eval_seconds": round(time.perf_counter() - trained, 2)}
        return _from_saved(frame, {**extra, "status": "computed"})

    def _batches(self, examples, batch_size: int = 8):
        rows = tokenize_texts(self.tokenizer, examples, self.train_config.max_length)
        pad = pad_token_id(self.tokenizer)
        for i in range(0, len(rows), batch_size):
            yield collate(rows[i:i + batch_size], pad)

    def run_all(self, settings, overwrite: bool = False) -> dict[MoESetting, MoERun]:
        """:meth:`run` for each setting, with a progress bar; also fills :attr:`log`."""
        out, log = {}, []
        bar = tqdm(list(settings), desc=f"{self.model_name}: LoRA-MoE runs", disable=not self.progress)
        for setting in bar:
            bar.set_postfix_str(f"{setting.task} {setting.method} {setting.per_block:g} s{setting.seed}")
            out[setting] = run = self.run(setting, overwrite)
            log.append({"task": setting.task, "method": setting.method, "per_block": setting.per_block,
                        "seed": setting.seed, "status": run.info["status"], "accuracy": run.accuracy,
                        "train_seconds": run.info["train_seconds"],
                        "eval_seconds": run.info["eval_seconds"]})
        self.log = pd.DataFrame(log)
        return out


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
    """Notebook 03: every setting of ``params["plans"]`` (:func:`grid`) of every model, trained
    or loaded (:meth:`MoEStudy.run_all`) with the model's recipe (:func:`.moe_recipe.tuned`:
    chosen on validation examples when ``params["recipe_search"]`` is set), and the tables."""
    check(len(params["plans"]) > 0, "plans", params["plans"], "at least one model's plan")
    from .moe_recipe import tuned  # moe_recipe builds on MoEStudy: imported here, not above
    results = Path(results or store.results_dir(profile))
    moe_config = recipe(params)[0]
    runs, logs, identical, searches = {}, {}, {}, {}
    for model, plan in params["plans"].items():
        searches[model], train_config, tag = tuned(params, model, results, load_options(params))
        study = MoEStudy(results, model, params["labels"], moe_config, train_config,
                         params["n_train"], params["n_eval"], progress=False,
                         load_kwargs=load_options(params), recipe_tag=tag)
        runs[model], logs[model] = study.run_all(grid(**plan)), study.log
        trained = {(s.method, s.task, s.per_block) for s in runs[model]}
        identical[model] = tables.identical_allocations(study.allocations(), trained)
    log = pd.concat(logs, names=["model", "run"])
    cold = log[["train_seconds", "eval_seconds"]].to_numpy().sum() / 60
    sizes = (f"{len(log)} runs of {', '.join(runs)}; {params['n_train']} training and "
             f"{params['n_eval']} held-out examples per task; cold cost of the runs (stored "
             f"training + evaluation seconds): {cold:.1f} min")
    return tables.notebook_tables(runs, log, params, sizes, pd.concat(identical, names=["model"]),
                                  pd.concat(searches, names=["model"]))


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


def recipe(params: Mapping) -> tuple[MoEConfig, TrainConfig]:
    """The adapter and the training recipe of notebook 03's parameters (``moe_preset``,
    ``train_preset`` with the fields of ``train`` changed)."""
    return (MoEConfig.preset(params["moe_preset"]),
            TrainConfig.preset(params["train_preset"], **params.get("train", {})))


def single_run(model_name: str, task: str, method: str | None = None, allocation=None,
               params: Mapping | None = None, per_block: float = 5.0, seed: int = 0,
               n_train: int | None = None, n_eval: int | None = None, results=None,
               device: str = "auto", overwrite: bool = False) -> tuple[MoERun, Path]:
    """One fine-tune and evaluation, as ``layerif moe`` runs it: the adapter, recipe and sizes
    of notebook 03's ``params`` for a profile (``layerif.study.load_params("03_lora_moe",
    profile)``, the one source of sizes), an allocation ``method`` computed from the task's
    saved scores (LayerIF) or the model alone (AlphaLoRA, MoLA, the plain LoRA), or
    ``allocation`` (a CSV of experts per block, or a Series); saved in the profile's store.

    Returns ``(run, folder)``.
    """
    check((method is None) != (allocation is None), "method/allocation", (method, allocation),
          "exactly one of an allocation method and an allocation CSV")
    need = {"profile", "moe_preset", "train_preset", "n_train", "n_eval"}
    check(isinstance(params, Mapping) and need <= set(params), "params", params,
          f"notebook 03's parameters with {sorted(need)} (params/<profile>/03_lora_moe.yaml)")
    table = None
    if allocation is not None:
        experts = allocation if isinstance(allocation, pd.Series) else read_experts(allocation)
        method = f"allocation {Path(str(allocation)).stem}" if not isinstance(allocation, pd.Series) \
            else "allocation"
        per_block = float(experts.sum()) / len(experts)
        table = experts.to_frame().T.set_axis(
            pd.MultiIndex.from_tuples([(method, MODEL_ONLY, per_block)],
                                      names=["method", "task", "per_block"]))
        table["total"] = int(experts.sum())
    moe_study = MoEStudy(results or store.results_dir(params["profile"]), model_name, [task],
                         *recipe(params), n_train or params["n_train"], n_eval or params["n_eval"],
                         allocations=table, device=device, load_kwargs=load_options(params))
    setting = MoESetting(method, task, float(per_block), seed)
    return moe_study.run(setting, overwrite), moe_study.folder(setting)


def _mola(pattern: str, n_blocks: int) -> pd.Series:
    """A MoLA pattern the budgets do not pair (``"3578"``: the paper's Gemma row, 5.75 per block)."""
    counts = [int(c) for c in pattern] if pattern.isdigit() and len(pattern) == 4 else pattern
    return baselines.mola(counts, n_blocks).rename_axis("layer")


def method_folder(method: str) -> str:
    """A method name as a folder name without spaces or ``%`` ("LayerIF Top 25%" ->
    "LayerIF-Top-25")."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", method).strip("-")


def _save_run(folder: Path, run: MoERun, ident: dict, _extra, overwrite: bool) -> None:
    extra = {k: v for k, v in run.info.items() if k != "status"}
    store.save_frame(folder, run.examples, ident, extra=extra, overwrite=overwrite)


def _load_run(folder: Path) -> MoERun:
    extra = store.load_manifest(folder)["extra"]
    return _from_saved(store.load_frame(folder), {**extra, "status": "loaded"})


def _from_saved(frame: pd.DataFrame, extra: dict) -> MoERun:
    load = pd.DataFrame(extra.get("load") or {})
    if not load.empty:
        load = load.set_index("layer")
    history = pd.Series(extra.get("history", []), dtype=float, name="loss").rename_axis("step")
    return MoERun(frame, history, load, extra)
