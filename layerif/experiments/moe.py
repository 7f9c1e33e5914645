"""LoRA-MoE fine-tuning per expert allocation (notebook 03): every trained model is a stored result.

A :class:`MoESetting` names one fine-tuned model: the allocation method, the task, the
experts per block and the seed. :class:`MoEStudy` holds what the settings of one model share
-- the base model, the allocations (computed from notebook 01's DataInf scores exactly as
notebook 02 does), the training and evaluation examples of each task, the adapter and
training recipes -- and :meth:`MoEStudy.run` attaches the adapter, fine-tunes, evaluates on
held-out examples, measures the routers' load and detaches it again (``detach`` gives back
the exact base model, so one loaded model serves every run). Each run is saved under
``<results>/moe/<model>/<task>/<per_block>/<method>/seed-<seed>`` with its identity (method,
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
from ..moe import MoEConfig, attach, detach, moe_table
from ..moe.usage import load_summary, router_load
from ..train import TrainConfig, collate, finetune, tokenize_texts
from .allocation import block_alpha, expert_allocations
from .cache import slug
from .scoring import aggregated_scores, label_examples

__all__ = ["BASE", "CLI_SIZES", "KIND", "LORA", "MoERun", "MoESetting", "MoEStudy", "grid",
           "method_folder", "read_experts", "single_run"]

KIND = "moe_run"
BASE = "Base model"
LORA = "LoRA (same parameters)"
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
        n_eval: held-out evaluation examples per task (the registry's ``test`` split).
        beta: the exponent of LayerIF's and AlphaLoRA's mapping.
        per_block: the budgets the allocations are computed for.
        allocations: the allocation table itself (index method, task, per_block; columns the
            blocks and ``total``, as :func:`expert_allocations` returns); None computes it
            from notebook 01's saved scores.
    """

    def __init__(self, results: str | Path, model_name: str, labels, moe_config: MoEConfig,
                 train_config: TrainConfig, n_train: int, n_eval: int, beta: float = 2.5,
                 per_block=(2.5, 5.0, 7.0), allocations: pd.DataFrame | None = None,
                 device: str = "auto", progress: bool = True):
        self.results, self.model_name, self.labels = Path(results), model_name, list(labels)
        self.moe_config, self.train_config = moe_config, train_config.replace(progress=False)
        self.n_train, self.n_eval, self.beta = int(n_train), int(n_eval), float(beta)
        self.per_block, self.progress = tuple(float(p) for p in per_block), progress
        self.model, self.tokenizer = load_model(model_name, device=device)
        self._allocations = allocations
        self._examples: dict[str, tuple[list, list]] = {}
        self.log = pd.DataFrame()

    def allocations(self) -> pd.DataFrame:
        """Experts per block of every method, task and budget (notebook 02's table)."""
        if self._allocations is None:
            scores = aggregated_scores(self.results, self.model_name, self.labels)
            alpha = block_alpha(self.model, self.results)
            self._allocations = expert_allocations(scores, alpha, self.per_block, self.beta)
        return self._allocations

    def examples(self, task: str) -> tuple[list, list]:
        """The training and held-out evaluation examples of a task label."""
        if task not in self._examples:
            self._examples[task] = (label_examples(task, "train", self.n_train),
                                    label_examples(task, "test", self.n_eval))
        return self._examples[task]

    def experts(self, setting: MoESetting) -> pd.Series | None:
        """The per-block expert counts of a setting (ones for :data:`LORA`, None for :data:`BASE`)."""
        if setting.method == BASE:
            return None
        table = self.allocations()
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
        return len(self.allocations().columns) - 1  # the table's last column is "total"

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
                               "eval_ids": [e.id for e in test]})

    def folder(self, setting: MoESetting) -> Path:
        return (self.results / "moe" / slug(self.model_name) / slug(setting.task)
                / f"{setting.per_block:g}" / method_folder(setting.method) / f"seed-{setting.seed}")

    def run(self, setting: MoESetting, overwrite: bool = False) -> MoERun:
        """Train and evaluate one setting, or load it when saved with the same identity."""
        ident, folder = self.identity(setting), self.folder(setting)
        if not overwrite:
            manifest = store.load_if_matching(folder, ident)
            if manifest is not None:
                return _from_saved(store.load_frame(folder), {**manifest["extra"], "status": "loaded"})
        frame, extra = self._train_and_evaluate(setting)
        store.save_frame(folder, frame, ident, extra=extra, overwrite=overwrite)
        return _from_saved(frame, {**extra, "status": "computed"})

    def _train_and_evaluate(self, setting: MoESetting) -> tuple[pd.DataFrame, dict]:
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
        return frame, extra

    def _batches(self, examples, batch_size: int = 8):
        rows = tokenize_texts(self.tokenizer, examples, self.train_config.max_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
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


#: ``layerif moe`` sizes per profile when not given: (training examples, evaluation examples).
CLI_SIZES = {"smoke": (4, 6), "cpu": (32, 64), "paper": (100_000, 100_000)}


def read_experts(path: str | Path) -> pd.Series:
    """Experts per block from a CSV (``layerif allocate experts --out``: first column the
    block index, an ``experts`` column or a single column)."""
    frame = pd.read_csv(path, index_col=0)
    column = "experts" if "experts" in frame.columns else frame.columns[-1]
    check(len(frame.columns) == 1 or "experts" in frame.columns, "allocation", str(path),
          "a CSV with an 'experts' column or a single column")
    return frame[column].astype(int).rename("experts").rename_axis("layer")


def single_run(model_name: str, task: str, method: str | None = None, allocation=None,
               profile: str = "cpu", per_block: float = 5.0, seed: int = 0,
               n_train: int | None = None, n_eval: int | None = None, results=None,
               device: str = "auto", overwrite: bool = False) -> tuple[MoERun, Path]:
    """One fine-tune and evaluation, as ``layerif moe`` runs it: the profile's adapter
    (``MoEConfig`` smoke, else paper) and recipe (``TrainConfig`` preset), an allocation
    ``method`` computed from the task's saved scores (LayerIF) or the model (AlphaLoRA, MoLA),
    or ``allocation`` (a CSV of experts per block, or a Series); saved in the profile's store.

    Returns ``(run, folder)``.
    """
    check((method is None) != (allocation is None), "method/allocation", (method, allocation),
          "exactly one of an allocation method and an allocation CSV")
    from .. import study  # the results folder of a profile

    moe_cfg = MoEConfig.preset("smoke" if profile == "smoke" else "paper")
    defaults = CLI_SIZES[profile]
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
    moe_study = MoEStudy(results or study.results_dir(profile), model_name, [task], moe_cfg,
                         TrainConfig.preset(profile), n_train or defaults[0], n_eval or defaults[1],
                         allocations=table, device=device)
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


def _from_saved(frame: pd.DataFrame, extra: dict) -> MoERun:
    load = pd.DataFrame(extra.get("load") or {})
    if not load.empty:
        load = load.set_index("layer")
    history = pd.Series(extra.get("history", []), dtype=float, name="loss").rename_axis("step")
    return MoERun(frame, history, load, extra)
