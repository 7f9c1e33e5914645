"""Which parameter tensors get gradients: full linear weights or LoRA A/B, per block.

Module selection is architecture-agnostic: blocks come from
:func:`layerif.models.transformer_blocks`, their linear layers from
:func:`layerif.models.linear_modules`, and ``"attention"`` means every linear layer whose
relative name has a component containing ``attn`` or ``attention`` (Llama's
``self_attn.q_proj``, GPT-2's ``attn.c_attn``, NeoX's ``attention.query_key_value``,
Falcon's ``self_attention.dense``, ...).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .models import is_conv1d, linear_modules, transformer_blocks
from .rng import seeded

__all__ = ["Unit", "attached_lora", "find_units", "select_modules", "units_table"]

MODULE_GROUPS = ("attention", "mlp", "all")


@dataclass(frozen=True)
class Unit:
    """One parameter tensor that receives per-example gradients.

    Attributes:
        layer: block index (depth order).
        path: the block's module path, e.g. ``model.layers.3``.
        module: the linear layer's name inside the block, e.g. ``self_attn.q_proj``.
        tensor: ``"weight"``, ``"lora_A"`` or ``"lora_B"``.
        name: the full parameter name.
        shape: the parameter's shape.
        transposed: the parameter is stored ``[d_in, d_out]`` (GPT-2 ``Conv1D``).
        linear: the module whose input/output are hooked (the layer itself for weights, the
            adapter's ``lora_A``/``lora_B`` linear for LoRA).
    """

    layer: int
    path: str
    module: str
    tensor: str
    name: str
    shape: tuple[int, ...]
    transposed: bool = False
    linear: nn.Module = field(default=None, repr=False, compare=False)

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def param(self) -> nn.Parameter:
        return self.linear.weight


def _is_attention(name: str) -> bool:
    return any("attn" in p.lower() or "attention" in p.lower() for p in name.split("."))


def select_modules(block: nn.Module, modules: str | tuple[str, ...] | list[str]) -> list[str]:
    """Relative names of the linear layers of ``block`` chosen by ``modules``.

    Args:
        block: one transformer block.
        modules: ``"attention"``, ``"mlp"`` (every linear outside attention), ``"all"``, or
            names, each matching a relative name exactly or its last component
            (``"q_proj"`` matches ``self_attn.q_proj``).

    Returns:
        Names in the block's module order (possibly empty).
    """
    names = [n for n, _ in linear_modules(block)]
    if isinstance(modules, str):
        if modules not in MODULE_GROUPS:
            raise ValueError(f"modules={modules!r} is invalid: expected one of {MODULE_GROUPS} "
                             "or a tuple of module names")
        if modules == "all":
            return names
        want_attn = modules == "attention"
        return [n for n in names if _is_attention(n) == want_attn]
    wanted = set(modules)
    return [n for n in names if n in wanted or n.split(".")[-1] in wanted]


def _lora_layer(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and len(module.lora_A) > 0


def find_units(model: nn.Module, target: str = "weights",
               modules: str | tuple[str, ...] = "attention") -> list[Unit]:
    """The gradient units of ``model``, block by block, in module order.

    Args:
        model: a causal LM (plain or with peft LoRA layers).
        target: ``"weights"`` (each selected linear's weight) or ``"lora"`` (the A and B
            matrices of the active adapters on the selected linears).
        modules: see :func:`select_modules`.

    Returns:
        list of :class:`Unit`.

    Raises:
        ValueError: unknown target, no module matched, or (LoRA) no adapter present, a
            merged adapter, or a non-vanilla variant such as DoRA.
    """
    if target not in ("weights", "lora"):
        raise ValueError(f"target={target!r} is invalid: expected 'weights' or 'lora'")
    prefix = {id(m): n for n, m in model.named_modules()}
    units: list[Unit] = []
    available: set[str] = set()
    for layer, (path, block) in enumerate(transformer_blocks(model)):
        available.update(n for n, _ in linear_modules(block))
        for rel in select_modules(block, modules):
            mod = block.get_submodule(rel)
            if target == "weights":
                lin = mod.base_layer if _lora_layer(mod) else mod
                transposed = is_conv1d(lin)
                units.append(Unit(layer, path, rel, "weight", prefix[id(lin)] + ".weight",
                                  tuple(lin.weight.shape), transposed, lin))
                continue
            if not _lora_layer(mod):
                continue
            if getattr(mod, "merged", False):
                raise ValueError(f"{path}.{rel}: LoRA adapter is merged; unmerge it first")
            for adapter in mod.active_adapters:
                if adapter not in mod.lora_A:
                    continue
                if adapter in getattr(mod, "lora_variant", {}):
                    raise ValueError(f"{path}.{rel}: adapter {adapter!r} is a LoRA variant "
                                     "(e.g. DoRA); only vanilla LoRA is supported")
                for kind in ("lora_A", "lora_B"):
                    lin = getattr(mod, kind)[adapter]
                    units.append(Unit(layer, path, rel, kind, prefix[id(lin)] + ".weight",
                                      tuple(lin.weight.shape), False, lin))
    if not units:
        what = "LoRA adapters on" if target == "lora" else "linear modules matching"
        raise ValueError(f"modules={modules!r}: found no {what} them in any block; "
                         f"linear modules are {sorted(available)}")
    return units


def units_table(units: list[Unit]) -> pd.DataFrame:
    """One row per unit: layer, path, module, tensor, name, numel (index ``unit``)."""
    rows = [dict(layer=u.layer, path=u.path, module=u.module, tensor=u.tensor, name=u.name,
                 numel=u.numel) for u in units]
    return pd.DataFrame(rows).rename_axis("unit")


def has_lora(model: nn.Module, modules: str | tuple[str, ...] = "attention") -> bool:
    """Whether any selected linear of any block already carries a LoRA adapter."""
    for _, block in transformer_blocks(model):
        for rel in select_modules(block, modules):
            if _lora_layer(block.get_submodule(rel)):
                return True
    return False


@contextmanager
def attached_lora(model: nn.Module, modules: str | tuple[str, ...] = "attention", rank: int = 8,
                  alpha: float = 16.0, seed: int = 0):
    """Temporarily attach fresh peft LoRA adapters to the selected linears of every block.

    The model is restored on exit (original modules and ``requires_grad`` flags). peft
    initialises B to zero, so the model's function is unchanged -- and the gradients of A
    are exactly zero until B is trained; warm the adapter up first (``layerif.train``) for
    informative A units.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = [f"{path}.{rel}" for path, block in transformer_blocks(model)
               for rel in select_modules(block, modules)]
    if not targets:
        raise ValueError(f"modules={modules!r} matched no linear module to attach LoRA to")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    originals = {t: model.get_submodule(t) for t in targets}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=targets)
    with seeded(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inject_adapter_in_model(config, model)
    try:
        yield model
    finally:
        for t, original in originals.items():
            parent, _, child = t.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, original)
        for p, flag in flags:
            p.requires_grad_(flag)
