"""Read the study's saved results back without computing anything (notebook 10).

Each reader rebuilds what a notebook asked the store for -- the same settings, from the same
parameters (:func:`layerif.study.load_params`) -- checks that every one of them is saved under
its identity, and only then loads them. A result that is absent, or saved under another
identity (its notebook's parameters or inputs changed since), raises :class:`MissingResult`
naming the notebook and the command that produces it; nothing is trained, pruned or scored
here. (Models are loaded: a result's identity includes allocations computed from the model.)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import data, store
from ..evaluate import EvalConfig
from ..moe import MoEConfig
from ..prune import PruneConfig
from ..train import TrainConfig
from . import pruning, retraining
from .agreement import study_agreement
from .cache import slug
from .moe import MoEStudy, grid as moe_grid
from .scoring import POOL, load_scores, scores_dir

__all__ = ["MissingResult", "agreement", "moe_runs", "pruning_evals", "score_labels", "scores",
           "validation"]


class MissingResult(FileNotFoundError):
    """A result a claim needs is not saved (or is saved under another identity)."""

    def __init__(self, notebook, what: list[str], profile: str | None = None):
        self.notebooks = [notebook] if isinstance(notebook, str) else list(notebook)
        self.notebook, self.what = self.notebooks[0], list(what)
        shown = "; ".join(self.what[:4]) + (f" (+{len(self.what) - 4} more)" if len(self.what) > 4 else "")
        names = " ".join(self.notebooks)
        run = f"`layerif run {names}" + (f" --profile {profile}`" if profile else "`")
        super().__init__(f"{'notebooks' if len(self.notebooks) > 1 else 'notebook'} {names} "
                         f"saved no {shown}: {run}")


def score_labels(tasks, template: str = "instruct") -> list[str]:
    """Notebook 01's result labels of ``tasks`` (:func:`~.scoring.score_tasks`' rule): a task
    offering ``template`` is scored with it, labelled ``task:template`` unless that is the
    task's default template; other tasks and the pool keep their name."""
    labels = []
    for task in tasks:
        info = {} if task == POOL else data.task_info(task)
        use = template in info.get("templates", ()) and template != info.get("default_template")
        labels.append(f"{task}:{template}" if use else task)
    return labels


def scores(results: str | Path, model: str, labels, method: str = "datainf",
           profile: str | None = None):
    """``{label: LayerScores}`` of notebook 01's saved scores."""
    absent = [f"{model} {label} {method} scores" for label in labels
              if not (scores_dir(results, model, label, method) / store.MANIFEST).exists()]
    if absent:
        raise MissingResult("01_layer_scores", absent, profile)
    return {label: load_scores(results, model, label, method) for label in labels}


def agreement(results: str | Path, model: str, params: dict, profile: str | None = None) -> pd.DataFrame:
    """Notebook 06's saved Table 3 agreement of one model."""
    folder = Path(results) / "agreement" / slug(model)
    if not (folder / store.MANIFEST).exists():
        raise MissingResult("06_ablation_hessian_free", [f"{model} agreement table"], profile)
    try:
        return study_agreement(results, model, params["tasks"], params.get("per_block", 5.0),
                               params.get("beta", 2.5), params["n_boot"])
    except store.ProvenanceError as err:
        raise MissingResult("06_ablation_hessian_free",
                            [f"{model} agreement table of these parameters ({err})"], profile) from None


def _absent_evals(run: pruning.PruningRun, settings) -> list[str]:
    absent = []
    for s in settings:
        try:
            ratios, per_matrix = (None, None) if s.method == pruning.DENSE else run.ratios(s)
            ident = run.identity(s, ratios, per_matrix)
            found = store.load_if_matching(run.folder(s), ident)
        except (FileNotFoundError, store.ProvenanceError):
            found = None
        if found is None:
            absent.append(f"{run.model_name} {s.method} {s.label()} {s.sparsity:g}")
    return absent


def pruning_evals(results: str | Path, model: str, notebook: str, params: dict, settings,
                  evaluation: dict | None = None, profile: str | None = None) -> dict:
    """``{Setting: Evaluation}`` of saved pruned models, as a pruning notebook made them.

    Args:
        notebook: the notebook that saves them (05, 07, 08), for the error.
        params: that notebook's parameters (``prune``, ``evaluation``, ``owl_calibration``).
        evaluation: fields of the notebook's :class:`EvalConfig` changed (task-specific runs).
    """
    eval_config = EvalConfig(**params["evaluation"])
    if evaluation:
        eval_config = eval_config.replace(**evaluation)
    run = pruning.PruningRun(results, model, PruneConfig(**params["prune"]), eval_config,
                             params.get("owl_calibration", (32, 256)), progress=False)
    settings = list(dict.fromkeys(settings))
    absent = _absent_evals(run, settings)
    if absent:
        raise MissingResult(notebook, absent, profile)
    return {s: run.evaluate(s)[0] for s in settings}


def moe_runs(results: str | Path, model: str, params: dict, profile: str | None = None) -> dict:
    """``{MoESetting: MoERun}`` of notebook 03's saved runs of one model (its ``plans`` entry)."""
    plan = params["plans"][model]
    study = MoEStudy(results, model, params["labels"], MoEConfig.preset(params["moe_preset"]),
                     TrainConfig.preset(params["train_preset"], **params.get("train", {})),
                     params["n_train"], params["n_eval"], progress=False)
    settings = moe_grid(**plan)
    absent = []
    for s in settings:
        try:
            found = store.load_if_matching(study.folder(s), study.identity(s))
        except (FileNotFoundError, store.ProvenanceError):
            found = None
        if found is None:
            absent.append(f"{model} {s.task} {s.method} {s.per_block:g}/block seed {s.seed}")
    if absent:
        raise MissingResult("03_lora_moe", absent, profile)
    return study.run_all(settings)


def validation(results, params: dict, profile: str | None) -> None:
    """Raise :class:`.MissingResult` unless every result notebook 09 reads is saved (its
    ``study_*`` functions would compute an absent one)."""
    model, loo = params["model_name"], retraining.LooConfig(**params["loo"])
    folder = Path(results) / "validation" / slug(model)
    parts = {"grid": f"{model} influence grid",
             **{f"loo/block{b}-seed{s}": f"{model} leave-one-out block {b} seed {s}"
                for b in loo.blocks for s in loo.seeds},
             **{f"gains/{slug(t)}": f"{model} {t} block gains" for t in params["gain_tasks"]}}
    absent = [what for sub, what in parts.items() if not (folder / sub / store.MANIFEST).exists()]
    if absent:
        raise MissingResult("09_influence_validation", absent, profile)
    for method in ("datainf", "hessian_free"):
        scores(results, model, params["gain_tasks"], method, profile)
    for m in params["stability_models"]:
        scores(results, m, params["stability_tasks"], profile=profile)
