"""Saving and loading a LoRA-MoE adapter together with its allocation and config.

An adapter is a :mod:`layerif.store` result of kind ``moe_adapter``: its identity's config is
the :class:`~layerif.moe.attach.MoEConfig` plus ``experts`` (the per-block allocation), with
the model id and the training data slice the caller names.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import store
from ..block_csv import read_block_column
from ..models import model_id
from .attach import MoEConfig, attach, moe_layers, moe_table

log = logging.getLogger(__name__)

__all__ = ["ADAPTER_FILE", "KIND", "adapter_identity", "load_adapter", "read_experts",
           "save_adapter"]

ADAPTER_FILE = "adapter.safetensors"
KIND = "moe_adapter"


def read_experts(path: str | Path) -> pd.Series:
    """Experts per block from a CSV (``layerif allocate experts --out`` writes one: first
    column the block index ``layer``, then ``score`` and ``experts``; or any table whose first
    column is the block index and which has an ``experts`` column or a single other column).

    Returns:
        ``pd.Series[int]`` named ``experts``, indexed by block (``layer``), sorted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not such a CSV, a non-integer block index, or a count that is not a
            whole number >= 1 (2.5, NaN, text): the message names the file and the row.
    """
    values = read_block_column(path, "experts", lambda v: v >= 1 and v.is_integer(),
                               "a whole number >= 1 of experts per block",
                               "layerif allocate experts")
    return values.astype(int)


def _adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    # The experts and routers only, whatever else the user may have unfrozen.
    return {f"{name}.{p_name}": p for name, layer in moe_layers(model)
            for p_name, p in layer.named_parameters() if not p_name.startswith("base_layer.")}


def _manifest_config(model: nn.Module) -> dict:
    state = getattr(model, "_layerif_moe", None)
    if state is None:
        raise ValueError("model carries no LoRA-MoE adapter (attach one with layerif.moe.attach)")
    return {**state["config"].identity(), "experts": [int(v) for v in state["experts"].tolist()]}


def adapter_identity(model: nn.Module, data: dict | None = None) -> dict:
    """The store identity of ``model``'s adapter (:func:`layerif.store.identity`).

    Args:
        model: a model carrying an adapter from :func:`attach`.
        data: the training data slice (task, example ids, ...); None records ``{}``.

    Returns:
        Kind ``moe_adapter``, config = MoE config + ``experts``, the model id and ``data``, and
        the model's dtype when it is not float32; pass it to
        :func:`layerif.store.load_if_matching` to resume a training run.
    """
    return store.identity(KIND, _manifest_config(model), model_id(model), data or {},
                          dtype=getattr(model, "dtype", None))


def save_adapter(model: nn.Module, directory: str | Path, data: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Save the experts and routers with their allocation and config, atomically.

    Args:
        model: a model carrying an adapter from :func:`attach`.
        directory: result folder (``manifest.json`` + ``adapter.safetensors``).
        data: the training data slice, part of the identity (:func:`adapter_identity`).
        overwrite: replace a result of another identity saved there.

    Returns:
        The directory.

    Raises:
        layerif.store.ResultMismatch: ``directory`` holds an adapter of another config,
            allocation, model or data slice and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    ident = adapter_identity(model, data)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in _adapter_params(model).items()}
    extra = {"trainable_params": int(sum(t.numel() for t in tensors.values())),
             "paths": moe_table(model)["path"].tolist()}
    return store.save(directory, ident, lambda folder: save_file(tensors, str(folder / ADAPTER_FILE)),
                      extra=extra, overwrite=overwrite)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Attach (if needed) and load an adapter saved by :func:`save_adapter`.

    Raises:
        FileNotFoundError: no result is saved in ``directory``.
        ValueError: the result is not an adapter, the model already carries an adapter with
            another allocation or config, or the saved tensors do not fit the model.
    """
    manifest = store.load_manifest(directory, kind=KIND)
    config = dict(manifest["config"])
    experts = pd.Series(config.pop("experts"), dtype=int).rename_axis("layer")
    if getattr(model, "_layerif_moe", None) is None:
        attach(model, experts, config=MoEConfig.from_dict(config))
    elif adapter_identity(model)["config"] != manifest["config"]:
        raise ValueError(f"model carries an adapter made with {adapter_identity(model)['config']}, "
                         f"but {directory} holds one made with {manifest['config']}")
    if manifest.get("model_id") != model_id(model):
        log.warning("adapter was trained on %r, loading into %r", manifest.get("model_id"), model_id(model))
    _copy_saved(model, directory)
    return model


def _copy_saved(model: nn.Module, directory: str | Path) -> None:
    """Copy the saved tensors into the model's adapter parameters (shapes checked)."""
    from safetensors.torch import load_file

    params = _adapter_params(model)
    saved = load_file(str(Path(directory) / ADAPTER_FILE))
    if set(saved) != set(params):
        raise ValueError(f"{directory} holds tensors {sorted(set(saved) ^ set(params))[:4]}... "
                         "that do not match the model's adapter parameters")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise ValueError(f"{name}: saved shape {tuple(saved[name].shape)} != {tuple(p.shape)}")
            p.copy_(saved[name].to(p.device, p.dtype))
