"""How a trained LoRA-MoE adapter uses its experts: the routers' load on some text.

:func:`router_load` runs the model over token rows and counts, for every routed layer, how
many top-k assignments of the real (non-padding) tokens went to each expert. Its summary
per block says how many of the allocated experts actually take work -- the question behind
"how many experts per block are used" after training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models import eval_mode, transformer_blocks
from .attach import moe_layers

__all__ = ["load_summary", "router_load"]


def _block_of(model: nn.Module) -> dict[str, int]:
    """Module path of every LoRA-MoE layer -> index of the block that holds it."""
    out = {}
    for i, (path, _) in enumerate(transformer_blocks(model)):
        for name, _ in moe_layers(model):
            if name.startswith(path + "."):
                out[name] = i
    return out


def router_load(model: nn.Module, batches) -> pd.DataFrame:
    """Top-k assignments per expert of every routed layer, over some token batches.

    Args:
        model: a causal LM carrying a LoRA-MoE adapter (:func:`layerif.moe.attach`); run in
            eval mode without gradients, its mode restored after.
        batches: an iterable of ``(input_ids, attention_mask)`` LongTensor pairs; tokens with
            mask 0 are not counted.

    Returns:
        One row per (module path, expert): ``layer`` (block index), ``experts`` (E),
        ``expert``, ``count`` (assignments: each token counts ``top_k`` times) and ``share``
        (count over the layer's assignments). Layers with one expert have no router and
        are left out.
    """
    routed = [(n, m) for n, m in moe_layers(model) if m.router is not None]
    if not routed:
        return pd.DataFrame(columns=["path", "layer", "experts", "expert", "count", "share"])
    counts = {n: torch.zeros(m.n_experts, dtype=torch.long) for n, m in routed}
    current: dict = {}

    def hook(name):
        def count(module, args, _output):
            h = args[0].reshape(-1, module.in_features)
            keep = current["mask"].reshape(-1).to(h.device).bool()
            _, _, top_i = module.route(h[keep])
            counts[name] += torch.bincount(top_i.reshape(-1), minlength=module.n_experts).cpu()
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in routed]
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for ids, mask in batches:
                current["mask"] = mask
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    blocks = _block_of(model)
    rows = [{"path": n, "layer": blocks[n], "experts": len(c), "expert": e, "count": int(c[e]),
             "share": float(c[e] / max(1, int(c.sum())))} for n, c in counts.items() for e in range(len(c))]
    return pd.DataFrame(rows)


def load_summary(load: pd.DataFrame, min_share: float = 0.05) -> pd.DataFrame:
    """Per block: experts allocated, experts in use (share >= ``min_share`` of the
    assignments, averaged over the block's routed layers) and the effective number of
    experts ``exp(entropy of the shares)`` (E when perfectly balanced, 1 when one expert
    takes everything), averaged over the block's routed layers."""
    if load.empty:
        return pd.DataFrame(columns=["experts", "used", "effective"]).rename_axis("layer")

    def per_layer(g: pd.DataFrame) -> pd.Series:
        p = g["share"].to_numpy(dtype=float)
        nz = p[p > 0]
        return pd.Series({"layer": g["layer"].iloc[0], "experts": g["experts"].iloc[0],
                          "used": float((p >= min_share).sum()),
                          "effective": float(np.exp(-(nz * np.log(nz)).sum()))})

    layers = pd.DataFrame([per_layer(g) for _, g in load.groupby("path", sort=False)])
    layers["layer"] = layers["layer"].astype(int)
    out = layers.groupby("layer")[["experts", "used", "effective"]].mean()
    out["experts"] = out["experts"].astype(int)
    return out
