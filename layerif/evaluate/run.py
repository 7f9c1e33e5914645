"""Evaluate a (dense) model end to end and keep the result in the store: ``layerif evaluate``.

:func:`evaluate_and_save` loads a model, measures perplexity on held-out BoolQ passages and
zero-shot accuracy (:func:`layerif.evaluate.evaluate_suite`, laid out as one long table by
:func:`layerif.prune.evaluate_pruned`) and saves the table under its identity, loading it
instead when the folder already holds the same identity.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .suite import EvalConfig

__all__ = ["KIND", "SavedEvaluation", "default_out", "evaluate_and_save", "evaluation_identity"]

KIND = "model_evaluation"


@dataclass
class SavedEvaluation:
    """What :func:`evaluate_and_save` returns."""

    evaluation: pd.DataFrame  #: indexed by (task, metric); columns value, stderr, n
    out: Path                 #: the result folder
    status: str               #: "computed" or "loaded"


def evaluation_identity(model_name: str, evaluation: EvalConfig) -> dict:
    """The store identity of a model's evaluation: the config's identity (run-time fields
    left out), the model and the perplexity text."""
    from .. import store

    data = {"perplexity": "boolq passages (layerif.data.perplexity_tokens, seed 0)"}
    return store.identity(KIND, {"evaluation": evaluation.identity()}, model_name, data)


def default_out(profile: str, model_name: str, evaluation: EvalConfig,
                root: str | Path | None = None) -> Path:
    """``results/<profile>/evaluated/<model>/<first 10 hex digits of the config's sha256>``:
    one folder per evaluation config, so evaluating with other tasks or sizes never meets
    a folder of another identity."""
    from ..study import results_dir

    key = hashlib.sha256(json.dumps(evaluation.identity(), sort_keys=True, default=str).encode())
    model = re.sub(r"[^A-Za-z0-9_.=-]+", "-", model_name).strip("-.") or "model"
    return results_dir(profile, root) / "evaluated" / model / key.hexdigest()[:10]


def evaluate_and_save(model_name: str, evaluation: EvalConfig, out: str | Path,
                      device: str = "auto", overwrite: bool = False,
                      progress: bool = True) -> SavedEvaluation:
    """Load ``model_name``, evaluate it under ``evaluation`` and save the table in ``out``.

    Args:
        model_name: an embedded model name, a local checkpoint directory or a hub id.
        evaluation: the tasks and sizes (e.g. ``EvalConfig.preset("cpu")``).
        out: the result folder (the table's CSV, schema and ``manifest.json``).
        device: where the model runs (``"auto"``: CUDA if present).
        overwrite: replace a saved result of another identity.
        progress: progress bars.

    Raises:
        ValueError: ``evaluation`` is not an EvalConfig.
        layerif.store.ResultMismatch: ``out`` holds another identity and not ``overwrite``.
    """
    from .. import store
    from ..models import load_model
    from ..prune import evaluate_pruned

    if not isinstance(evaluation, EvalConfig):
        raise ValueError(f"evaluation={evaluation!r} is invalid: expected an EvalConfig")
    out = Path(out)
    ident = evaluation_identity(model_name, evaluation)
    if not overwrite and store.load_if_matching(out, ident) is not None:
        return SavedEvaluation(store.load_frame(out), out, "loaded")
    model, tokenizer = load_model(model_name, device=device)
    table = evaluate_pruned(model, tokenizer, evaluation, progress=progress)
    store.save_frame(out, table, ident, overwrite=overwrite)
    return SavedEvaluation(table, out, "computed")
