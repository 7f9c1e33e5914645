"""Attaching LoRA-MoE layers to a model from a per-block expert allocation.

:func:`attach` swaps every target linear of block ``l`` for a
:class:`~layerif.moe.layer.LoRAMoELinear` with ``n_l`` experts, ``n_l`` taken from the
allocation (a ``pd.Series`` of ints indexed by block, as :mod:`layerif.allocate` returns).

Design choice -- a plain module swap, not a peft custom module. peft's LoRA layer holds one
``(A, B)`` pair per adapter name and sums every active adapter densely; its custom-module
hook would still need our own forward, router and per-block expert count, and its
``rank_pattern`` cannot express "n experts in this block". Its save/load would not record the
allocation either. A short wrapper around the frozen base layer is easier to read next
to the paper's equations, has no dependency on peft internals, and keeps the allocation with
the weights (:func:`layerif.moe.save_adapter` writes it into the result's manifest). Plain
LoRA baselines keep using peft; :func:`layerif.train.finetune` trains both.

:func:`balance_loss` sums the routers' load-balancing losses of the last training forward;
padding tokens are left out when the model was called with an ``attention_mask`` (a
forward pre-hook on the model shares the mask with its MoE layers).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import pandas as pd
import torch
from torch import nn

from .._config import ConfigBase, check, field
from ..models import linear_modules, transformer_blocks
from ..rng import seeded
from .layer import DISPATCH, LoRAMoELinear, _MaskHolder

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "MoEConfig", "attach", "balance_loss", "default_targets", "detach",
           "moe_layers", "moe_table"]

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The attention and MLP projections of each architecture (config ``model_type``).
TARGETS: dict[str, tuple[str, ...]] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
                                "gemma2", "gemma3", "gemma3_text", "olmo", "olmo2")},
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


@dataclasses.dataclass
class MoEConfig(ConfigBase):
    """Hyper-parameters of the LoRA-MoE adapter (the allocation is passed separately).

    Presets: ``smoke`` and ``paper`` (there is no ``cpu`` preset: this study's cpu profile
    trains the paper's adapter and cuts only the training, in ``params/cpu/03_lora_moe.yaml``).
    No field is run-time (``field(..., runtime=True)``): all are part of a saved adapter's
    identity. ``dispatch`` included: sparse, dense and batched compute the same function but
    sum in another order, so their outputs differ in the last bits (about 3e-6 on a float32
    layer with 8 experts) and trained weights drift apart over steps; a result records which
    made it. ``"auto"`` resolves by device (:meth:`LoRAMoELinear.path`); on a CPU it is the
    rule every stored ``auto`` result was computed with.
    """

    rank: int = field(8, help="LoRA rank r of every expert")
    alpha: float = field(16.0, help="LoRA alpha; experts are scaled by alpha / rank")
    dropout: float = field(0.05, help="dropout on the experts' input (shared by the experts)")
    targets: tuple[str, ...] | None = field(
        None, help="linear-module names to adapt; None = the architecture's TARGETS entry")
    top_k: int | None = field(
        None, help="experts per token; None = 2 where a block has >1 expert, else 1")
    balance_coef: float = field(
        0.0, help="Switch load-balancing loss coefficient (0.001 when on; MoLA's code: off)")
    dispatch: str = field(
        "auto", help="'sparse' (each expert sees its top-k tokens only), 'dense' (all experts, "
                     "unselected gated to 0), 'batched' (dense in fewer kernels) or 'auto' "
                     "(by device: on a CPU sparse unless top_k == experts, the stored results' "
                     "rule; elsewhere batched)")
    seed: int | None = field(
        None, help="seed of the experts' and routers' initialisation (a private RNG stream); "
                   "None draws from the global torch RNG")

    def __post_init__(self):
        check(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an int >= 1")
        check(self.alpha > 0, "alpha", self.alpha, "a positive number")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "a float in [0, 1)")
        check(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
              "top_k", self.top_k, "None or an int >= 1")
        check(self.balance_coef >= 0, "balance_coef", self.balance_coef, "a float >= 0")
        check(self.dispatch in DISPATCH, "dispatch", self.dispatch, f"one of {DISPATCH}")
        check(self.seed is None or isinstance(self.seed, int), "seed", self.seed, "None or an int")
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = (self.targets,)
            self.targets = tuple(self.targets)
            check(len(self.targets) > 0 and all(isinstance(t, str) and t for t in self.targets),
                  "targets", self.targets, "None or a non-empty sequence of module names")

    @classmethod
    def smoke(cls) -> "MoEConfig":
        """Rank 4 on the tiny test model: seconds per step."""
        return cls(rank=4, alpha=8.0, seed=0)

    @classmethod
    def paper(cls) -> "MoEConfig":
        """The paper's adapter (MoLA's code): rank 8, alpha 16, dropout 0.05, top-2, no
        balance loss, every projection of the block (q, k, v, o, gate, up, down)."""
        return cls(rank=8, alpha=16.0, dropout=0.05, targets=None, top_k=2, balance_coef=0.0,
                   seed=0)


def moe_layers(model: nn.Module) -> list[tuple[str, LoRAMoELinear]]:
    """``(module path, layer)`` of every LoRA-MoE linear in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRAMoELinear)]


def balance_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the routers' load-balancing losses of the last training forward (or None)."""
    losses = [m.balance for _, m in moe_layers(model) if m.balance is not None]
    return torch.stack([l.to(losses[0].device) for l in losses]).sum() if losses else None


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention and MLP projection names for ``model``'s architecture.

    Unknown architectures fall back to every linear module of the first block.
    """
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        mtype = getattr(cfg, "model_type", None)
        if mtype in TARGETS:
            return TARGETS[mtype]
    names = tuple(dict.fromkeys(n.split(".")[-1] for n, _ in linear_modules(transformer_blocks(model)[0][1])))
    log.info("no target map for model_type=%r; adapting every block linear: %s",
             getattr(config, "model_type", None), names)
    return names


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _per_block(experts, n_blocks: int) -> pd.Series:
    """Validate an allocation and return it as an int Series indexed 0..L-1 (``layer``)."""
    s = experts.copy() if isinstance(experts, pd.Series) else pd.Series(list(experts))
    if len(s) != n_blocks:
        raise ValueError(f"experts has {len(s)} entries but the model has {n_blocks} blocks: "
                         "expected one expert count per transformer block")
    if sorted(s.index.tolist()) != list(range(n_blocks)):
        raise ValueError(f"experts.index={s.index.tolist()} is invalid: expected block indices "
                         f"0..{n_blocks - 1}")
    s = s.sort_index()
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna() | (values != values.round()) | (values < 1)
    if bad.any():
        i = bad.idxmax()
        value = s[i].item() if hasattr(s[i], "item") else s[i]
        raise ValueError(f"experts[{i}]={value!r} is invalid: expected an int >= 1 per block")
    return values.astype(int).rename("experts").rename_axis("layer")


def attach(model: nn.Module, experts, config: MoEConfig | None = None, **overrides) -> nn.Module:
    """Replace the target linears of every block by LoRA-MoE layers, in place.

    Args:
        model: a causal LM (not a ``PeftModel``); all its own parameters are frozen (until
            :func:`detach`).
        experts: expert count per block -- a ``pd.Series`` of ints indexed by block index
            (the allocation functions' output) or a sequence in block order.
        config: the adapter's hyper-parameters (:class:`MoEConfig`; default ``MoEConfig()``):
            LoRA rank / alpha / dropout of every expert, targets (module names, last name
            component or a longer suffix such as ``"mlp.c_proj"``; None = :data:`TARGETS`),
            top_k (None = 2 where a block has more than one expert, else 1; an int is capped
            at each block's count), balance_coef (used by :func:`layerif.train.finetune`),
            dispatch (same results, different cost, see :mod:`layerif.moe.layer`) and the
            initialisation seed.
        **overrides: fields of ``config`` to change (``attach(m, n, rank=4)``).

    Returns:
        ``model`` (modified in place); only expert and router parameters are trainable.

    Raises:
        ValueError: the allocation does not match the blocks, a count is < 1, a target
            matches no module, a bad config field, or the model already carries an adapter.
    """
    cfg = (config or MoEConfig()).replace(**overrides) if overrides else (config or MoEConfig())
    if getattr(model, "_layerif_moe", None) is not None:
        raise ValueError("model already carries a LoRA-MoE adapter; detach it or use a fresh model")
    if hasattr(model, "peft_config"):
        raise ValueError("model is a PeftModel: attach the LoRA-MoE to the base model instead")
    blocks = transformer_blocks(model)
    alloc = _per_block(experts, len(blocks))
    plan = _plan(model, blocks, cfg.targets or default_targets(model))
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    holder = _MaskHolder()
    with _init_rng(cfg.seed, next(model.parameters()).device):
        for i, block, rel, module in plan:
            n = int(alloc[i])
            k = min(cfg.top_k, n) if cfg.top_k is not None else (2 if n > 1 else 1)
            layer = LoRAMoELinear(module, n, k, cfg.rank, cfg.alpha, cfg.dropout, cfg.dispatch)
            layer.train(model.training)  # a new module is in train mode; follow the model's
            layer.track_balance, layer._mask = cfg.balance_coef > 0, holder
            _swap(block, rel, layer)
    hook = model.register_forward_pre_hook(_capture_mask, with_kwargs=True)
    model._layerif_moe = {"config": cfg, "experts": alloc, "mask": holder, "hook": hook,
                          "trainable": trainable, "swapped": [(i, rel) for i, _, rel, _ in plan]}
    return model


def detach(model: nn.Module) -> nn.Module:
    """Undo :func:`attach`: the original linears back in place, the mask hook removed, each
    base parameter's ``requires_grad`` as it was. The adapter's weights are dropped (save
    them first with :func:`layerif.moe.save_adapter`). Returns ``model``."""
    state = getattr(model, "_layerif_moe", None)
    if state is None:
        raise ValueError("model carries no LoRA-MoE adapter: nothing to detach")
    blocks = transformer_blocks(model)
    for i, rel in state["swapped"]:
        layer = blocks[i][1].get_submodule(rel)
        _swap(blocks[i][1], rel, layer.base_layer)
    state["hook"].remove()
    del model._layerif_moe
    for n, p in model.named_parameters():
        p.requires_grad_(state["trainable"].get(n, p.requires_grad))
    return model


def _plan(model, blocks, names) -> list[tuple[int, nn.Module, str, nn.Module]]:
    """(block index, block, relative path, linear) of every target; checked before any change."""
    plan = [(i, block, rel, module) for i, (_, block) in enumerate(blocks)
            for rel, module in linear_modules(block) if _matches(rel, names)]
    missing = [t for t in names if not any(_matches(rel, (t,)) for _, _, rel, _ in plan)]
    if missing:
        raise ValueError(f"targets={missing} match no linear module of the blocks; available: "
                         f"{[n for n, _ in linear_modules(blocks[0][1])]}")
    return plan


def _swap(block: nn.Module, rel: str, new: nn.Module) -> None:
    parent, _, leaf = rel.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, new)


def _init_rng(seed: int | None, device: torch.device):
    """A seeded private RNG stream for the adapter's initialisation (or nothing for None)."""
    if seed is None:
        return contextlib.nullcontext()
    return seeded(seed, device)


def _capture_mask(model, args, kwargs):
    # Looked up on the model (not closed over) so that a deep copy keeps its own holder.
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    model._layerif_moe["mask"].value = mask if isinstance(mask, torch.Tensor) else None


def moe_table(model: nn.Module) -> pd.DataFrame:
    """Per-block table of the attached adapter: path, experts, top_k, modules, parameters."""
    state = getattr(model, "_layerif_moe", None)
    if state is None:
        raise ValueError("model carries no LoRA-MoE adapter: call layerif.moe.attach first")
    rows = []
    for i, (path, block) in enumerate(transformer_blocks(model)):
        layers = [m for m in block.modules() if isinstance(m, LoRAMoELinear)]
        rows.append({"layer": i, "path": path, "experts": int(state["experts"][i]),
                     "top_k": layers[0].top_k if layers else None, "modules": len(layers),
                     "trainable_params": sum(p.numel() for m in layers for p in m.parameters()
                                             if p.requires_grad)})
    return pd.DataFrame(rows).set_index("layer")
