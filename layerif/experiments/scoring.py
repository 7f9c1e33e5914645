"""Layer scores for every task of the study (notebook 01), saved and resumed through the store.

Layout under a results folder: ``scores/<model>/<task label>/<method>/`` holds one
:class:`layerif.LayerScores`. A task label is the task name, with ``:<template>`` appended when
the template is not the task's default (``openbookqa:instruct``), and ``pruning_pool`` for the
pool drawn evenly from the pruning tasks (:func:`pruning_pool`).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .. import data, distributed, store
from ..models import load_model
from ..scores import LayerScores, ScoreConfig, layer_scores
from .cache import slug

__all__ = ["POOL", "PRUNING_TASKS", "MOE_TASKS", "aggregated_scores", "fingerprint", "label_examples",
           "pruning_pool", "profile_similarity", "score_frame", "score_tasks", "scores_dir",
           "task_examples", "load_scores"]

MOE_TASKS = ("mrpc", "sst2", "sciq", "csqa", "openbookqa")
PRUNING_TASKS = ("boolq", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte",
                 "openbookqa")
POOL = "pruning_pool"


def _label(task: str, template: str | None) -> str:
    if task == POOL or template is None or template == data.task_info(task)["default_template"]:
        return task
    return f"{task}:{template}"


def _split_label(label: str) -> tuple[str, str | None]:
    task, _, template = label.partition(":")
    return task, template or None


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
    return Path(results) / "scores" / slug(model) / slug(label) / method


def _ids(examples) -> list[str]:
    return [e.id for e in examples]


def score_tasks(model_name: str, tasks, config: ScoreConfig, results: str | Path,
                methods=("datainf", "hessian_free"), template: str | None = "instruct",
                overwrite: bool = False, progress: bool = True, tag: str | None = None) -> pd.DataFrame:
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

    Under torchrun every rank calls this; the examples are sharded across the ranks
    (:func:`layerif.layer_scores`) and rank 0 reads and writes the store.

    Returns:
        One row per (task, method): ``path``, ``status`` (loaded | computed), ``seconds``
        (wall time of the shared computation, 0 when loaded), ``n_train``, ``n_val``.
    """
    if config.n_train is None or config.n_val is None:
        raise ValueError(f"config.n_train={config.n_train!r}, config.n_val={config.n_val!r}: "
                         "the study needs explicit sizes")
    model = tokenizer = None
    rows = []
    for task in tasks:
        tmpl = template if task != POOL and template in _templates(task) else None
        label = _label(task, tmpl)
        train, val = task_examples(label, config.n_train, config.n_val, config.seed)
        label = label if tag is None else f"{label}--{tag}"
        found = {}
        for m in methods:
            cfg = config.replace(method=m)
            found[m] = None if overwrite else LayerScores.load_if_matching(
                scores_dir(results, model_name, label, m), cfg, model_name,
                label, _ids(train), _ids(val))
        # rank 0's store decides for all ranks (they compute together)
        missing = distributed.broadcast_object([m for m in methods if found[m] is None])
        seconds = 0.0
        if missing:
            if model is None:
                model, tokenizer = load_model(model_name, device=config.device)
            start = time.perf_counter()
            computed = layer_scores(model, tokenizer, train, val, config, methods=tuple(missing),
                                    task=label, progress=progress)
            seconds = time.perf_counter() - start
            for m, s in computed.items():  # rank 0 writes; the others wait until it has
                s.save(scores_dir(results, model_name, label, m), overwrite=overwrite)
            distributed.barrier()
        for m in methods:
            rows.append({"task": label, "method": m, "status": "loaded" if m not in missing
                         else "computed", "seconds": round(seconds, 1), "n_train": len(train),
                         "n_val": len(val), "path": str(scores_dir(results, model_name, label, m))})
    return pd.DataFrame(rows).set_index(["task", "method"])


def _templates(task: str) -> tuple[str, ...]:
    return tuple(data.task_info(task)["templates"])


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
    import numpy as np

    corr = profiles.T.corr(method="spearman")
    off = corr.to_numpy()[~np.eye(len(corr), dtype=bool)]
    summary = pd.Series({"tasks": len(corr), "mean pairwise Spearman": off.mean(),
                         "min": off.min(), "max": off.max()} if off.size else
                        {"tasks": len(corr)}, name="profile similarity")
    return corr, summary
