"""Evaluate a model end to end and keep the result in the store: ``layerif evaluate``.

:func:`evaluation_table` lays out :func:`layerif.evaluate.evaluate_suite` (perplexity on
held-out BoolQ passages, zero-shot accuracy) as one long table; ``layerif prune`` evaluates
a pruned model with it too. :func:`evaluate_and_save` loads a model, evaluates it and saves
the table under its identity (:func:`layerif.store.cached`: loaded instead when the folder
already holds the same identity).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from .. import store
from .suite import EvalConfig, evaluate_suite

__all__ = ["KIND", "NONFINITE_OK", "SavedEvaluation", "default_out", "evaluate_and_save",
           "evaluation_identity", "evaluation_table"]

KIND = "model_evaluation"
#: The one column of :func:`evaluation_table` whose NaN is a value: the perplexity row has
#: no standard error.
NONFINITE_OK = ("stderr",)


def evaluation_table(model: nn.Module, tokenizer, evaluation: EvalConfig,
                     progress: bool = True) -> pd.DataFrame:
    """:func:`layerif.evaluate.evaluate_suite` (perplexity on held-out BoolQ passages, and
    zero-shot accuracy when ``evaluation.tasks`` is not empty) as one long table.

    Returns:
        A DataFrame indexed by ``(task, metric)`` with columns ``value``, ``stderr`` and
        ``n``: the row ``("boolq_passages", "perplexity")`` (``n`` = predicted tokens, no
        stderr), then ``acc``, ``acc_norm`` and ``margin`` per task (``n`` = examples scored).
    """
    result = evaluate_suite(model, tokenizer, evaluation, progress=progress)
    rows = [("boolq_passages", "perplexity", result.perplexity, math.nan,
             evaluation.ppl_samples * (evaluation.ppl_len - 1))]
    if len(result.examples):
        for task, r in result.summary().iterrows():
            for metric in ("acc", "acc_norm", "margin"):
                rows.append((str(task), metric, float(r[metric]), float(r[f"{metric}_stderr"]),
                             int(r["n"])))
    frame = pd.DataFrame(rows, columns=["task", "metric", "value", "stderr", "n"])
    return frame.set_index(["task", "metric"])


@dataclass
class SavedEvaluation:
    """What :func:`evaluate_and_save` returns."""

    evaluation: pd.DataFrame  #: indexed by (task, metric); columns value, stderr, n
    out: Path                 #: the result folder
    status: str               #: "computed" or "loaded"


def evaluation_identity(model_name: str, evaluation: EvalConfig, dtype=None) -> dict:
    """The store identity of a model's evaluation: the config's identity (run-time fields
    left out), the model (a local checkpoint by its weights) and the perplexity text."""
    data = {"perplexity": "boolq passages (layerif.data.perplexity_tokens, seed 0)"}
    return store.identity(KIND, {"evaluation": evaluation.identity()}, model_name, data,
                          dtype=dtype)


def default_out(profile: str, model_name: str, evaluation: EvalConfig,
                root: str | Path | None = None, dtype=None) -> Path:
    """``results/<profile>/evaluated/<model>/<first 10 hex digits of the config's sha256>``
    (``-<dtype>`` appended for a model loaded in another dtype than float32): one folder per
    evaluation config and dtype, so evaluating with other tasks, sizes or dtype never meets
    a folder of another identity (the model's name through :func:`layerif.store.slug`)."""
    key = hashlib.sha256(json.dumps(evaluation.identity(), sort_keys=True, default=str).encode())
    name = key.hexdigest()[:10] + (f"-{store.identity_dtype(dtype)}" if store.identity_dtype(dtype) else "")
    return store.results_dir(profile, root) / "evaluated" / store.slug(model_name) / name


def evaluate_and_save(model_name: str, evaluation: EvalConfig, out: str | Path,
                      device: str = "auto", overwrite: bool = False,
                      progress: bool = True, load_kwargs: dict | None = None) -> SavedEvaluation:
    """Load ``model_name``, evaluate it under ``evaluation`` and save the table in ``out``.

    Args:
        model_name: an embedded model name, a local checkpoint directory or a hub id.
        evaluation: the tasks and sizes (e.g. ``EvalConfig(**params["evaluation"])`` with a
            profile's ``params/<profile>/05_pruning.yaml``, as ``layerif evaluate`` does).
        out: the result folder (the table's CSV, schema and ``manifest.json``).
        device: where the model runs (``"auto"``: CUDA if present).
        overwrite: replace a saved result of another identity.
        progress: progress bars.
        load_kwargs: more arguments of :func:`layerif.load_model` (``dtype``, part of the
            identity, and ``device_map``: :func:`layerif.notebook_params.load_options`).

    Raises:
        ValueError: ``evaluation`` is not an EvalConfig, or the evaluation is not finite
            (a NaN perplexity or accuracy is never saved).
        layerif.store.ResultMismatch: ``out`` holds another identity and not ``overwrite``.
        layerif.store.CorruptResult: ``out`` holds a damaged result and not ``overwrite``.
    """
    from ..models import load_model

    if not isinstance(evaluation, EvalConfig):
        raise ValueError(f"evaluation={evaluation!r} is invalid: expected an EvalConfig")
    out = Path(out)
    computed = []

    def compute() -> pd.DataFrame:
        model, tokenizer = load_model(model_name, device=device, **load_kwargs)
        computed.append(True)
        return evaluation_table(model, tokenizer, evaluation, progress=progress)

    load_kwargs = load_kwargs or {}
    ident = evaluation_identity(model_name, evaluation, load_kwargs.get("dtype"))
    table = store.cached(out, ident, compute,
                         overwrite=overwrite, allow_nonfinite=NONFINITE_OK)
    return SavedEvaluation(table, out, "computed" if computed else "loaded")
