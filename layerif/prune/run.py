"""Prune with a :class:`PruneConfig` end to end, and the ``layerif prune`` command's steps.

* :func:`prune` draws the calibration tokens the config describes and calls
  :func:`~layerif.prune.prune_model`;
* :func:`read_allocation` reads per-block ratios from a CSV (``layerif allocate sparsity
  --out`` writes one: index ``layer``, columns ``score`` and ``sparsity``);
* :func:`evaluate_pruned` is :func:`layerif.evaluate.run.evaluation_table` (perplexity on
  held-out BoolQ passages, zero-shot accuracy as one long table), named for this use;
* :func:`prune_and_evaluate` loads a model, prunes it, evaluates it and saves the sparsity
  report and the evaluation in the results store (:func:`layerif.store.cached`: loaded
  instead when a saved result has the same identity, a folder holding another refused).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from .. import store
from ..block_csv import read_block_column
from ..evaluate.run import NONFINITE_OK, evaluation_table
from ..evaluate.suite import EvalConfig
from .config import PruneConfig
from .sequential import prune_model

__all__ = ["KIND", "PrunedEvaluation", "default_out", "evaluate_pruned", "prune",
           "prune_and_evaluate", "pruned_identity", "read_allocation"]

KIND = "pruned_model"

def prune(model: nn.Module, tokenizer, sparsity, config: PruneConfig | None = None,
          per_matrix=None, progress: bool = True) -> pd.DataFrame:
    """Prune ``model`` in place as ``config`` says, drawing its calibration tokens.

    The calibration is ``layerif.data.calibration_tokens(tokenizer, config.n_samples,
    config.seq_len, seed=config.calibration_seed, source=config.calibration_source)``
    (not drawn for magnitude, which reads no activations).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        sparsity, per_matrix: as :func:`~layerif.prune.prune_model`.
        config: a :class:`PruneConfig` (default ``PruneConfig()``: Wanda, 128 x 2048 tokens).
        progress: show a progress bar over blocks.

    Returns:
        :func:`~layerif.prune.sparsity_report` of the pruned model.
    """
    config = PruneConfig() if config is None else config
    if not isinstance(config, PruneConfig):
        raise ValueError(f"config={config!r} is invalid: expected a PruneConfig")
    return prune_model(model, config, sparsity, config.calibration(tokenizer), per_matrix=per_matrix,
                       progress=progress)


def read_allocation(path: str | Path) -> pd.Series:
    """Per-block sparsity ratios from a CSV.

    Accepts what ``layerif allocate sparsity --out`` writes (first column ``layer``, then
    ``score`` and ``sparsity``: the ``sparsity`` column is read) or any table whose first
    column is the block index and which has one other column, the ratios.

    Returns:
        ``pd.Series[float]`` named ``"sparsity"``, indexed by block (``layer``), sorted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a CSV of that form, a non-integer block index, or a ratio outside
            ``[0, 1)``.
    """
    values = read_block_column(path, "sparsity", lambda v: 0.0 <= v < 1.0,
                               "ratios in [0, 1)", "layerif allocate sparsity")
    return values.astype(float)


def _check_allocation(allocation) -> pd.Series | float:
    if isinstance(allocation, pd.Series):
        return allocation.astype(float)
    real = isinstance(allocation, numbers.Real) and not isinstance(allocation, bool)
    if not (real and 0.0 < float(allocation) < 1.0):
        raise ValueError(f"--sparsity {allocation!r} is invalid: expected a global sparsity "
                         "in (0, 1), e.g. 0.5")
    return float(allocation)


def _check_blocks(ratios, n_blocks: int, model_name: str) -> None:
    if isinstance(ratios, pd.Series) and list(ratios.index) != list(range(n_blocks)):
        raise ValueError(
            f"--allocation has ratios for blocks {list(ratios.index)} but {model_name!r} has "
            f"{n_blocks} blocks: expected one ratio for each of blocks 0..{n_blocks - 1}")


#: A pruned model's evaluation table (``layerif.evaluate.run`` holds it: evaluation sits
#: below pruning, so the dependency points one way).
evaluate_pruned = evaluation_table


def pruned_identity(config: PruneConfig, allocation, model_name: str,
                    evaluation: EvalConfig, dtype=None) -> dict:
    """The store identity of a pruned model's evaluation: the config's identity, the
    allocation (every per-block ratio, or the global sparsity), the evaluation config, the
    model (a local checkpoint by its weights) and the perplexity text."""
    if isinstance(allocation, pd.Series):
        alloc = {"per_block": [round(float(r), 12) for r in allocation]}
    else:
        alloc = {"global": round(float(allocation), 12)}
    settings = {"prune": config.identity(), "allocation": alloc, "evaluation": evaluation.identity()}
    data = {"perplexity": "boolq passages (layerif.data.perplexity_tokens, seed 0)"}
    return store.identity(KIND, settings, model_name, data, dtype=dtype)


@dataclass
class PrunedEvaluation:
    """What :func:`prune_and_evaluate` returns."""

    report: pd.DataFrame      #: :func:`~layerif.prune.sparsity_report` of the pruned model
    evaluation: pd.DataFrame  #: :func:`evaluate_pruned`'s table
    out: Path                 #: the folder holding ``sparsity/`` and ``evaluation/``
    status: str               #: "computed" or "loaded"


def default_out(profile: str, model_name: str, method: str, label: str,
                root: str | Path | None = None) -> Path:
    """``results/<profile>/pruned/<model>/<method>/<label>`` (label: e.g. the allocation
    CSV's stem, or ``uniform-s0.5``), each part a folder name by :func:`layerif.store.slug`."""
    parts = [store.slug(p) for p in (model_name, method, label)]
    return store.results_dir(profile, root).joinpath("pruned", *parts)


def prune_and_evaluate(model_name: str, allocation: pd.Series | float, config: PruneConfig,
                       out: str | Path, evaluation: EvalConfig, device: str = "auto",
                       overwrite: bool = False, progress: bool = True,
                       load_kwargs: dict | None = None) -> PrunedEvaluation:
    """Load a model, prune it, evaluate it and save both tables in the results store.

    ``out/sparsity`` holds the :func:`~layerif.prune.sparsity_report` (global sparsity in
    its manifest's ``extra``) and ``out/evaluation`` the :func:`evaluate_pruned` table, both
    under :func:`pruned_identity`. A folder holding this identity is loaded; when either is
    missing the model is pruned and evaluated once and the missing table saved; a folder
    holding another identity is refused (:class:`layerif.store.ResultMismatch`) unless
    ``overwrite``, before anything is computed. Arguments are checked before the model
    loads (the block index of ``allocation`` right after).

    Args:
        model_name: an embedded model name, a local checkpoint directory or a hub id.
        allocation: per-block ratios (:func:`read_allocation`) or one global sparsity in (0, 1).
        config: the :class:`PruneConfig` (e.g. ``PruneConfig(**params["prune"], method="sparsegpt")``
            with a profile's ``params/<profile>/05_pruning.yaml``, as ``layerif prune`` does).
        out: the result folder.
        evaluation: what to evaluate (e.g. ``EvalConfig(**params["evaluation"])`` of that file).
        device: where the model runs (``"auto"``: CUDA if present).
        overwrite: replace results of another identity.
        progress: progress bars.
        load_kwargs: more arguments of :func:`layerif.load_model` (``dtype``, part of the
            identity, and ``device_map``: :func:`layerif.notebook_params.load_options`).
    """
    from ..models import load_model, transformer_blocks

    if not isinstance(config, PruneConfig):
        raise ValueError(f"config={config!r} is invalid: expected a PruneConfig")
    if not isinstance(evaluation, EvalConfig):
        raise ValueError(f"evaluation={evaluation!r} is invalid: expected an EvalConfig")
    allocation = _check_allocation(allocation)
    out = Path(out)
    load_kwargs = load_kwargs or {}
    ident = pruned_identity(config, allocation, model_name, evaluation, load_kwargs.get("dtype"))
    done: dict = {}

    def computed() -> dict:  # prune and evaluate once, for whichever table is missing
        if not done:
            model, tokenizer = load_model(model_name, device=device, **load_kwargs)
            _check_blocks(allocation, len(transformer_blocks(model)), model_name)
            report = prune(model, tokenizer, allocation, config, progress=progress)
            done.update(report=report, extra={"global_sparsity": report.attrs["global_sparsity"],
                                              "runtime": config.runtime()},
                        evaluation=evaluation_table(model, tokenizer, evaluation, progress=progress))
        return done

    def save_as(allow):
        return lambda folder, value, ident_, _extra, over: store.save_frame(
            folder, value, ident_, extra=done["extra"], overwrite=over, allow_nonfinite=allow)

    report = store.cached(out / "sparsity", ident, lambda: computed()["report"],
                          overwrite=overwrite, save_as=save_as(()))
    table = store.cached(out / "evaluation", ident, lambda: computed()["evaluation"],
                         overwrite=overwrite, save_as=save_as(NONFINITE_OK))
    return PrunedEvaluation(report, table, out, "computed" if done else "loaded")
