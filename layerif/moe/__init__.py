"""LoRA-MoE with a per-block number of experts (MoLA-style), attached from an allocation.

- :mod:`~layerif.moe.layer`: :class:`LoRAMoELinear` (top-k router, renormalised weights,
  sparse, dense or batched expert dispatch) and :func:`switch_balance_loss` -- the maths.
- :mod:`~layerif.moe.attach`: :class:`MoEConfig`, :func:`attach` (module swap from a
  per-block expert Series), :func:`detach` (its inverse), :func:`balance_loss`, :func:`moe_table`.
- :mod:`~layerif.moe.usage`: :func:`~layerif.moe.usage.router_load` -- how many top-k
  assignments each expert takes on some text, and its per-block summary.
- :mod:`~layerif.moe.io`: :func:`save_adapter` / :func:`load_adapter` with the allocation
  recorded in the manifest.
"""
from .attach import (TARGETS, MoEConfig, attach, balance_loss, default_targets, detach, moe_layers,
                     moe_table)
from .io import ADAPTER_FILE, KIND, load_adapter, save_adapter
from .layer import DISPATCH, LoRAMoELinear, switch_balance_loss

__all__ = ["ADAPTER_FILE", "DISPATCH", "KIND", "TARGETS", "LoRAMoELinear", "MoEConfig", "attach",
           "balance_loss", "default_targets", "detach", "load_adapter", "moe_layers", "moe_table",
           "save_adapter", "switch_balance_loss"]
