"""Saving and loading a LoRA-MoE adapter together with its allocation and config."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..models import model_id
from ..provenance import read_manifest, write_manifest
from .attach import MoEConfig, attach, moe_layers, moe_table

log = logging.getLogger(__name__)

__all__ = ["ADAPTER_FILE", "KIND", "load_adapter", "save_adapter"]

ADAPTER_FILE = "adapter.safetensors"
KIND = "moe_adapter"


def _adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    # The experts and routers only, whatever else the user may have unfrozen.
    return {f"{name}.{p_name}": p for name, layer in moe_layers(model)
            for p_name, p in layer.named_parameters() if not p_name.startswith("base_layer.")}


def _manifest_config(model: nn.Module) -> dict:
    state = model._layerif_moe
    return {**state["config"].to_dict(), "experts": [int(v) for v in state["experts"].tolist()]}


def save_adapter(model: nn.Module, directory: str | Path, data: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Save the experts and routers with their allocation and config (manifest).

    Args:
        model: a model carrying an adapter from :func:`attach`.
        directory: result folder (``manifest.json`` + ``adapter.safetensors``).
        data: the training data slice, recorded in the manifest.
        overwrite: replace a result saved there with another config or allocation.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    if getattr(model, "_layerif_moe", None) is None:
        raise ValueError("model carries no LoRA-MoE adapter: nothing to save")
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in _adapter_params(model).items()}
    table = moe_table(model)
    write_manifest(directory, KIND, _manifest_config(model), model_id=model_id(model), data=data,
                   extra={"trainable_params": int(sum(t.numel() for t in tensors.values())),
                          "paths": table["path"].tolist()}, overwrite=overwrite)
    save_file(tensors, str(Path(directory) / ADAPTER_FILE))
    return Path(directory)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Attach (if needed) and load an adapter saved by :func:`save_adapter`.

    Raises:
        ValueError: the model already carries an adapter with another allocation or config,
            or the saved tensors do not fit the model.
    """
    from safetensors.torch import load_file

    manifest = read_manifest(directory, kind=KIND)
    config = dict(manifest["config"])
    experts = pd.Series(config.pop("experts"), dtype=int).rename_axis("layer")
    if getattr(model, "_layerif_moe", None) is None:
        attach(model, experts, **MoEConfig.from_dict(config).to_dict())
    elif _manifest_config(model) != manifest["config"]:
        raise ValueError(f"model carries an adapter made with {_manifest_config(model)}, but "
                         f"{directory} holds one made with {manifest['config']}")
    if manifest.get("model_id") != model_id(model):
        log.warning("adapter was trained on %r, loading into %r", manifest.get("model_id"), model_id(model))
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
    return model
