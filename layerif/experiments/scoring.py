"""Layer scores for every task of the study (notebook 01), saved and resumed through the store.

Layout under a results folder: ``scores/<model>/<task label>/<method>/`` holds one
:class:`layerif.LayerScores`. A task label is the task name, with ``:<template>`` appended when
the template is not the task's default (``openbookqa:instruct``), and ``pruning_pool`` for the
pool drawn evenly from the pruning tasks (:func:`pruning_pool`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import data, distributed, plots, stats, store
from .._config import check
from ..models import load_model
from ..notebook_params import load_options
from ..scores import LayerScores, ScoreConfig, layer_scores, score_identity
from .prose import bullets
from .verdict import Verdict, interval, profile_reading, profile_verdict

__all__ = ["NOTEBOOK", "POOL", "PRUNING_TASKS", "Profiles", "aggregated_scores",
           "check_sizes", "conclusion", "fingerprint", "label_examples", "load_scores", "profile_figures",
           "profile_interval", "profile_similarity", "pruning_pool", "run", "score_config", "score_frame",
           "score_tasks", "scores_dir", "similarity_figures", "summary", "task_examples",
           "task_label", "verdicts"]

NOTEBOOK = "01_layer_scores"

PRUNING_TASKS = ("boolq", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte",
                 "openbookqa")
POOL = "pruning_pool"


def task_label(task: str, template: str | None = "instruct") -> str:
    """Notebook 01's result label of ``task``: ``task:template`` when the task offers
    ``template`` and it is not its default (``openbookqa:instruct``); other tasks, tasks scored
    in their default template and the pool keep their name."""
    if task == POOL or template is None:
        return task
    info = data.task_info(task)
    if template not in info["templates"] or template == info["default_template"]:
        return task
    return f"{task}:{template}"


def _split_label(label: str) -> tuple[str, str | None]:
    task, _, template = label.partition(":")
    return task, template or None


def check_sizes(tasks, n_train, n_val) -> None:
    """Raise before anything is computed unless every task can be scored with these sizes.

    Each size must be an int >= 1, and >= the number of pruning tasks for :data:`POOL` (one
    example per task); each task a registry task name or :data:`POOL`.
    """
    known = data.list_tasks(include_hub=True)
    for task in tasks:
        check(task == POOL or task in known, "task", task, f"one of {known + [POOL]}")
    least = len(PRUNING_TASKS) if POOL in tasks else 1
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        check(isinstance(n, int) and not isinstance(n, bool) and n >= least, name, n,
              f"an int >= {least}" + (f" ({POOL} draws one example per pruning task)"
                                      if least > 1 else ""))


def pruning_pool(split: str, n: int, tasks=PRUNING_TASKS, seed: int = 0) -> list:
    """``n`` examples drawn evenly from ``tasks`` (round robin in task order), zero-shot format.

    The authors pruned every task with one score vector and did not say which data made it;
    this pool is our documented choice. Task ``i`` contributes ``n // T`` examples, plus one
    for the first ``n % T`` tasks; each task's examples are its first in the seeded order of
    :func:`layerif.data.load_task`, so a larger pool extends a smaller one.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < len(tasks):
        raise ValueError(f"n={n!r} is invalid: expected an int >= {len(tasks)} (one per task)")
    per = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
    parts = [data.load_task(t, split, n=k, seed=seed) for t, k in zip(tasks, per)]
    return [parts[t][i] for i in range(max(per)) for t in range(len(tasks)) if i < len(parts[t])]


def label_examples(label: str, split: str, n: int, seed: int = 0) -> list:
    """The first ``n`` examples of one split of a task label (``"openbookqa:instruct"``, the
    pruning pool, ...) in the registry's seeded order."""
    if label == POOL:
        return pruning_pool(split, n, seed=seed)
    task, template = _split_label(label)
    return data.load_task(task, split, n=n, seed=seed, template=template)


def task_examples(label: str, n_train: int, n_val: int, seed: int = 0) -> tuple[list, list]:
    """Training and validation examples of a task label (see the module docstring)."""
    return label_examples(label, "train", n_train, seed), label_examples(label, "validation", n_val, seed)


def scores_dir(results: str | Path, model: str, label: str, method: str) -> Path:
    """Where the scores of ``model`` on a task label by ``method`` live."""
    return Path(results) / "scores" / store.slug(model) / store.slug(label) / method


def _ids(examples) -> list[str]:
    return [e.id for e in examples]


def score_tasks(model_name: str, tasks, config: ScoreConfig, results: str | Path,
                methods=("datainf", "hessian_free"), template: str | None = "instruct",
                overwrite: bool = False, progress: bool = True, tag: str | None = None,
                load_kwargs: dict | None = None) -> pd.DataFrame:
    """Score ``model_name`` on each task by each method; compute only what is not saved.

    Args:
        model_name: an embedded model name or a local / hub id (:func:`layerif.load_model`).
        tasks: task names (or :data:`POOL`); each is scored with ``template`` where the task
            has it (the LoRA-MoE tasks' instruction format), else its default.
        config: sizes and targets (``n_train``, ``n_val`` are required here).
        results: the profile's results folder.
        methods: variants computed from shared gradient passes.
        template: template for the tasks that offer it (None: each task's default).
        overwrite: replace a saved result of another identity (otherwise that raises).
        progress: progress bars.
        tag: saved under the label ``<task>--<tag>`` (scores of the same task with other
            targets, e.g. ``tag="all-linear"`` for ``config.modules="all"``, beside the
            default ones).
        load_kwargs: more arguments of :func:`layerif.load_model` (the model's ``dtype``:
            :func:`layerif.notebook_params.load_options`).

    Under torchrun every rank calls this; the examples are sharded across the ranks
    (:func:`layerif.layer_scores`) and rank 0 reads and writes the store.

    Returns:
        One row per (task, method): ``path``, ``status`` (loaded | computed), ``seconds``
        (wall time of the shared computation, 0 when loaded), ``n_train``, ``n_val``.
    """
    if config.n_train is None or config.n_val is None:
        raise ValueError(f"config.n_train={config.n_train!r}, config.n_val={config.n_val!r}: "
                         "the study needs explicit sizes")
    check_sizes(tasks, config.n_train, config.n_val)
    model = tokenizer = None
    rows = []
    for task in tasks:
        label = task_label(task, template)
        train, val = task_examples(label, config.n_train, config.n_val, config.seed)
        label = label if tag is None else f"{label}--{tag}"
        folders = {m: scores_dir(results, model_name, label, m) for m in methods}
        idents = {m: score_identity(config.replace(method=m), model_name, label, _ids(train),
                                    _ids(val), dtype=(load_kwargs or {}).get("dtype"))
                  for m in methods}
        found = {m: _saved(folders[m], idents[m], overwrite) for m in methods}
        # rank 0's store decides for all ranks (they compute together)
        missing = distributed.broadcast_object([m for m in methods if found[m] is None])
        seconds = 0.0
        if missing:
            if model is None:
                model, tokenizer = load_model(model_name, device=config.device, **(load_kwargs or {}))
            start = time.perf_counter()
            computed = layer_scores(model, tokenizer, train, val, config, methods=tuple(missing),
                                    task=label, progress=progress)
            seconds = time.perf_counter() - start
            for m, s in computed.items():  # rank 0 writes; the others wait until it has
                s.save(folders[m], overwrite=overwrite, seconds=seconds / len(computed))
            distributed.barrier()
        rows += [{"task": label, "method": m, "status": "computed" if m in missing else "loaded",
                  "seconds": round(seconds, 1), "n_train": len(train), "n_val": len(val),
                  "path": str(folders[m])} for m in methods]
    return pd.DataFrame(rows).set_index(["task", "method"])


def _saved(folder: Path, ident: dict, overwrite: bool) -> LayerScores | None:
    """The scores saved in ``folder`` under ``ident`` through :func:`layerif.store.cached`
    (None when absent or ``overwrite``; under :func:`layerif.store.read_only` an absent one
    raises). Computing is left to :func:`score_tasks`: one gradient pass serves every method."""
    return store.cached(folder, ident, lambda: None, overwrite=overwrite, load=LayerScores.load,
                        save_as=lambda *_: None)


def load_scores(results: str | Path, model: str, label: str, method: str) -> LayerScores:
    """The saved scores of one (model, task label, method)."""
    return LayerScores.load(scores_dir(results, model, label, method))


def score_frame(runs: pd.DataFrame, aggregation: str = "positive", method: str = "datainf",
                normalise: bool = False) -> pd.DataFrame:
    """Task x layer table of block scores from the rows of :func:`score_tasks`.

    Args:
        runs: the table :func:`score_tasks` returned (or several concatenated).
        aggregation: ``positive`` | ``top`` | ``all``.
        method: which variant.
        normalise: divide each task's row by its largest ``|S_l|`` (profiles comparable
            across tasks whose scores differ in scale).
    """
    rows = {}
    for (task, m), row in runs.iterrows():
        if m == method:
            s = LayerScores.load(row["path"]).aggregate(aggregation)
            rows[task] = s / s.abs().max() if normalise and s.abs().max() > 0 else s
    frame = pd.DataFrame(rows).T
    frame.columns.name, frame.index.name = "layer", "task"
    return frame


def fingerprint(results: str | Path, model: str, labels, methods=("datainf",)) -> dict:
    """sha256 of each saved score's identity: what a derived result records as its input."""
    import hashlib
    import json

    out = {}
    for label in labels:
        for m in methods:  # the manifest alone holds the identity: no tensors are read
            ident = store.saved_identity(store.load_manifest(scores_dir(results, model, label, m)))
            out[f"{label}/{m}"] = hashlib.sha256(json.dumps(ident, sort_keys=True)
                                                 .encode()).hexdigest()[:16]
    return out


def aggregated_scores(results: str | Path, model: str, labels, method: str = "datainf",
                      aggregations=("positive", "top", "all")) -> pd.DataFrame:
    """Block scores of saved results: index (task, aggregation), columns = layers."""
    rows = {}
    for label in labels:
        s = load_scores(results, model, label, method)
        for agg in aggregations:
            rows[(label, agg)] = s.aggregate(agg)
    frame = pd.DataFrame(rows).T
    frame.index.names, frame.columns.name = ["task", "aggregation"], "layer"
    return frame


def profile_similarity(profiles: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Spearman across blocks between every two tasks' profiles (rows of :func:`score_frame`),
    and its off-diagonal summary (tasks, mean, min, max)."""
    corr = profiles.T.corr(method="spearman")
    off = corr.to_numpy()[~np.eye(len(corr), dtype=bool)]
    summary = pd.Series({"tasks": len(corr), "mean pairwise Spearman": off.mean(),
                         "min": off.min(), "max": off.max()} if off.size else
                        {"tasks": len(corr)}, name="profile similarity")
    return corr, summary


# ------------------------------------------------------------------ notebook 01

@dataclass(frozen=True)
class Profiles:
    """What notebook 01 shows: the rows of :func:`score_tasks` (index model, task, method), each
    model's "+ve" profiles divided by their largest |S_l| (task x layer), the Spearman between
    its tasks' profiles and their summary (one row per model), and the first model's first
    task's per-block table."""

    runs: pd.DataFrame
    profiles: dict
    similarity: dict
    summary: pd.DataFrame
    block_table: pd.DataFrame


def score_config(params: dict, model_name: str, **sizes) -> ScoreConfig:
    """The :class:`ScoreConfig` of notebook 01's ``params`` (``params/<profile>/
    01_layer_scores.yaml``) for ``model_name``: its ``max_length``, ``batch_size`` and
    ``memory_budget_gb`` (default 8 GB), and the model's entry of ``sizes`` (the first
    model's when it has none) with ``sizes`` given here replacing those; ScoreConfig's
    defaults for what ``params`` does not say. Notebook 01 and ``layerif scores`` use it."""
    table = params.get("sizes") or {}
    size = {**table.get(model_name, next(iter(table.values()), {})), **sizes}
    fixed = {k: params[k] for k in ("max_length", "batch_size") if k in params}
    return ScoreConfig(memory_budget_gb=params.get("memory_budget_gb", 8.0), **fixed, **size)


def run(params: dict, profile: str = "smoke", results=None) -> Profiles:
    """Notebook 01: score every task of ``params`` on every model of ``params["sizes"]``."""
    results = Path(results or store.results_dir(profile))
    runs = {m: score_tasks(m, params["tasks"], score_config(params, m), results,
                           load_kwargs=load_options(params)) for m in params["sizes"]}
    profiles = {m: score_frame(r, "positive", normalise=True) for m, r in runs.items()}
    similar = {m: profile_similarity(f) for m, f in profiles.items()}
    first = next(iter(runs))
    return Profiles(pd.concat(runs, names=["model"]).drop(columns="path"), profiles,
                    {m: corr for m, (corr, _) in similar.items()},
                    pd.DataFrame({m: row for m, (_, row) in similar.items()}).T,
                    load_scores(results, first, runs[first].index[0][0], "datainf").table())


def profile_figures(result: Profiles) -> list:
    """Fig. 1: one heatmap of normalised "+ve" scores (task x layer) per model."""
    return [plots.heatmap(f, title=f"{m}: +ve score / max |score|, per task",
                          cbar_label="S_l / max|S|", cmap="magma")
            for m, f in result.profiles.items()]


def similarity_figures(result: Profiles) -> list:
    """The Spearman between every two tasks' profiles, one matrix per model."""
    return [plots.correlation(c, title=f"{m}: Spearman between task profiles")
            for m, c in result.similarity.items()]


def summary(result: Profiles) -> str:
    """What the numbers say: per model, the tasks' profile similarity and its reading
    (:func:`.verdict.profile_reading`)."""
    return "\n".join(
        f"{m}: {int(r['tasks'])} tasks, mean Spearman between task profiles "
        f"{r['mean pairwise Spearman']:.2f} (range {r['min']:.2f} to {r['max']:.2f}): "
        f"{profile_reading(r['mean pairwise Spearman'])}." for m, r in result.summary.iterrows())


def conclusion(result: Profiles):
    """:func:`summary` as rendered Markdown."""
    return bullets(summary(result))


def profile_interval(profiles: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval (at ``level``) of the mean pairwise Spearman between task profiles
    (rows), resampling blocks (columns) with replacement."""
    reps = []
    for idx in stats.bootstrap_indices(profiles.shape[1], n_boot, seed):
        part = profiles.iloc[:, idx].T.reset_index(drop=True).T
        reps.append(profile_similarity(part)[1].get("mean pairwise Spearman", np.nan))
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    return stats.percentile_ci(reps, level) if len(reps) >= 10 else (np.nan, np.nan)


def verdicts(result: Profiles, level: float = 0.05, n_boot: int = 1000) -> list[Verdict]:
    """Fig. 1: one model gives different layer profiles on different tasks, per model; the
    interval (bootstrap over blocks) is at ``1 - level``, read by
    :func:`.verdict.profile_verdict`."""
    rows = []
    for model, frame in result.profiles.items():
        mean, tasks = result.summary.loc[model, ["mean pairwise Spearman", "tasks"]]
        lo, hi = profile_interval(frame, n_boot, level=1 - level)
        rows.append(Verdict(
            "the same model gives task-specific layer profiles", model, "Fig. 1 (Fig. 4)",
            "no number (heatmaps)", f"mean pairwise Spearman {mean:.2f} over {int(tasks)} tasks",
            "bootstrap over blocks: interval below 0.5 = distinct, above 0.8 = shared", np.nan,
            interval(lo, hi), profile_verdict(lo, hi), NOTEBOOK, float(mean)))
    return rows
