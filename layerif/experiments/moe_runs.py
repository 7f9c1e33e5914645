"""The LoRA-MoE runs of one model: every fine-tuned and evaluated model is a stored result.

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

:func:`recipe` reads the adapter and training recipe from notebook 03's parameters.
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
from ..evaluate.choices import choice_logliks
from ..models import load_model, model_id
from ..moe import MoEConfig, attach, detach, moe_table
from ..moe.usage import load_summary, router_load
from ..tokens import collate, pad_token_id
from ..train import TrainConfig, finetune, tokenize_texts
from .allocation import block_alpha, expert_allocations
from .moe_compare import BASE
from .moe_tables import LORA
from .scoring import aggregated_scores, label_examples

__all__ = ["BASE", "KIND", "LORA", "MODEL_ONLY", "MoERun", "MoESetting", "MoEStudy",
           "method_folder", "recipe"]

KIND = "moe_run"
#: The task of an allocation computed from the model alone (AlphaLoRA, MoLA, a given CSV).
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


def recipe(params: Mapping) -> tuple[MoEConfig, TrainConfig]:
    """The adapter and the training recipe of notebook 03's parameters (``moe_preset``,
    ``train_preset`` with the fields of ``train`` changed)."""
    return (MoEConfig.preset(params["moe_preset"]),
            TrainConfig.preset(params["train_preset"], **params.get("train", {})))


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
