"""LoRA-MoE with a per-block number of experts (MoLA-style), attached from an allocation.

Every target linear ``W0`` of block ``l`` gets ``n_l`` LoRA experts ``(A_e, B_e)`` of rank
``r`` and, when ``n_l > 1``, a router ``Linear(d_in, n_l, bias=False)``:

    p   = softmax(router(x))                      (float32, or float64 for a float64 model)
    S   = top-k of p, renormalised to sum to 1    (k = 2 where n_l > 1, else 1)
    y   = W0 x + sum_{e in S} p_e / sum_S p * (alpha / r) * B_e A_e dropout(x)

Design choice -- a plain module swap, not a peft custom module. peft's LoRA layer holds one
``(A, B)`` pair per adapter name and sums every active adapter densely; its custom-module
hook would still need our own forward, router and per-block expert count, and its
``rank_pattern`` cannot express "n experts in this block". Its save/load would not record the
allocation either. A ~100-line wrapper around the frozen base layer is easier to read next
to the paper's equations, has no dependency on peft internals, and keeps the allocation with
the weights (:func:`save_adapter` writes it into the result's manifest). Plain LoRA baselines
keep using peft; :func:`layerif.train.finetune` trains both.

Dispatch. ``"sparse"`` sends each token to its ``k`` experts only: the ``N * k`` (token,
expert) assignments are sorted by expert, each expert multiplies its own rows, the gate is
applied in rank space, and one ``index_add_`` scatters the results back -- the adapter costs
``k`` LoRAs per token whatever ``n_l``. ``"dense"`` multiplies every token by all stacked
experts in two matmuls (``[N, d_in] @ [d_in, E*r]`` then ``[N, E*r] @ [E*r, d_out]``) with
the non-selected experts' gates at exactly 0: FLOPs grow with ``E`` but x is read and the
output written once, no host sync, no gather. Both give the same outputs and gradients
(non-selected experts get exactly zero gradient either way). At rank 8 adapters are
memory- and launch-bound, not FLOP-bound: ``python -m layerif.bench moe`` measured dense
faster than sparse for every E in 2..32 on a 576 -> 1536 projection, on CPU and on an H100
(where the dense cost was flat in E and the sparse cost grew with it). ``"auto"`` (default) is therefore dense while the stacked
experts stay low-rank (``E * r <= min(d_in, d_out)``, so their FLOPs stay below the frozen
layer's) or all experts are selected anyway, and sparse beyond.

A block with one expert has no router: its softmax over one logit is identically 1, so a
router there would hold parameters that never receive gradient (MoLA's code creates one).

The Switch-style load-balancing loss of one router is ``E * sum_e f_e * P_e`` with ``f_e``
the fraction of the ``N * k`` top-k assignments that went to expert ``e`` and ``P_e`` the
mean router probability of ``e`` (1 when perfectly balanced). :func:`balance_loss` sums it
over the routers of the last forward pass; padding tokens are left out when the model was
called with an ``attention_mask``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ._config import ConfigBase, check, field
from .models import linear_modules, model_id, transformer_blocks
from .provenance import read_manifest, write_manifest

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "LoRAMoELinear", "MoEConfig", "attach", "balance_loss", "default_targets",
           "load_adapter", "moe_layers", "moe_table", "save_adapter", "switch_balance_loss"]

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The attention and MLP projections of each architecture (config ``model_type``).
TARGETS: dict[str, tuple[str, ...]] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
                                "gemma2", "gemma3", "gemma3_text", "olmo", "olmo2")},
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
DISPATCH = ("auto", "sparse", "dense")
ADAPTER_FILE = "adapter.safetensors"
KIND = "moe_adapter"


@dataclasses.dataclass
class MoEConfig(ConfigBase):
    """Hyper-parameters of the LoRA-MoE adapter (the allocation is passed separately)."""

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
        "auto", help="'sparse' (top-k tokens per expert), 'dense' (all experts, gated) or 'auto'")

    def __post_init__(self):
        check(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an int >= 1")
        check(self.alpha > 0, "alpha", self.alpha, "a positive number")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "a float in [0, 1)")
        check(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
              "top_k", self.top_k, "None or an int >= 1")
        check(self.balance_coef >= 0, "balance_coef", self.balance_coef, "a float >= 0")
        check(self.dispatch in DISPATCH, "dispatch", self.dispatch, f"one of {DISPATCH}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = (self.targets,)
            self.targets = tuple(self.targets)
            check(len(self.targets) > 0 and all(isinstance(t, str) and t for t in self.targets),
                  "targets", self.targets, "None or a non-empty sequence of module names")

    @classmethod
    def smoke(cls):
        return cls(rank=4, alpha=8.0)

    @classmethod
    def cpu(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls()


def switch_balance_loss(probs: torch.Tensor, selected: torch.Tensor, n_experts: int,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style load-balancing loss ``E * sum_e f_e * P_e`` of one router.

    Args:
        probs: ``[N, E]`` router probabilities (softmax over experts) of N tokens.
        selected: ``[N, k]`` indices of the experts each token was dispatched to.
        n_experts: ``E``.
        mask: optional ``[N]`` 0/1 weights; tokens with 0 (padding) are left out.

    Returns:
        A scalar: ``f_e`` = share of the ``N * k`` assignments that went to expert ``e``,
        ``P_e`` = mean of ``probs[:, e]``. Differentiable through ``probs`` only. Computed
        without host synchronisation (no boolean indexing, no ``bincount``).
    """
    if probs.ndim != 2 or probs.shape[1] != n_experts:
        raise ValueError(f"probs.shape={tuple(probs.shape)} is invalid: expected [N, {n_experts}]")
    m = probs.new_ones(probs.shape[0]) if mask is None else mask.reshape(-1).to(probs.dtype)
    k = selected.shape[-1]
    n = m.sum().clamp_min(1.0)
    counts = probs.new_zeros(n_experts).scatter_add_(0, selected.reshape(-1), m.repeat_interleave(k))
    return n_experts * (counts / (n * k) * (probs * m[:, None]).sum(0) / n).sum()


class _MaskHolder:
    """The attention mask of the current forward call, shared by a model's MoE layers."""

    value: torch.Tensor | None = None


def _features(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if type(base).__name__ == "Conv1D":  # GPT-2: weight stored as [d_in, d_out]
        return base.weight.shape[0], base.weight.shape[1]
    raise ValueError(f"base={type(base).__name__} is invalid: expected nn.Linear or Conv1D")


class LoRAMoELinear(nn.Module):
    """A frozen linear layer plus ``n_experts`` routed LoRA experts (see module docstring).

    Args:
        base: the pre-trained ``nn.Linear`` (or GPT-2 ``Conv1D``); kept as ``base_layer``.
        n_experts: number of experts ``E`` (>= 1).
        top_k: experts per token, ``1 <= top_k <= n_experts``.
        rank, alpha, dropout: LoRA rank, alpha (scaling ``alpha / rank``) and input dropout.
        dispatch: ``"auto"``, ``"sparse"`` or ``"dense"`` (see module docstring).

    Attributes:
        experts_A: ``[E, r, d_in]`` (kaiming-uniform per expert, like ``nn.Linear``).
        experts_B: ``[E, r, d_out]`` (zeros, so the adapter starts as the identity map);
            expert ``e`` adds ``scaling * (x @ A[e].T) @ B[e]``.
        router: ``Linear(d_in, E, bias=False)``, or None when ``E == 1``.
        track_balance: record the balance loss in training forwards (set by ``attach``
            when ``balance_coef > 0``, and by ``finetune`` while it needs it).
        balance: the balance loss of the last tracked training forward, else None.
    """

    def __init__(self, base: nn.Module, n_experts: int, top_k: int, rank: int = 8,
                 alpha: float = 16.0, dropout: float = 0.05, dispatch: str = "auto"):
        super().__init__()
        check(dispatch in DISPATCH, "dispatch", dispatch, f"one of {DISPATCH}")
        check(isinstance(n_experts, int) and n_experts >= 1, "n_experts", n_experts, "an int >= 1")
        check(isinstance(top_k, int) and 1 <= top_k <= n_experts, "top_k", top_k,
              f"an int in [1, n_experts={n_experts}]")
        d_in, d_out = _features(base)
        w = base.weight
        # Half-precision bases get float32 adapters, as peft does: AdamW on bf16 LoRA weights
        # loses most small updates.
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.base_layer = base
        self.n_experts, self.top_k, self.rank, self.alpha = n_experts, top_k, rank, alpha
        self.in_features, self.out_features = d_in, d_out
        self.scaling = alpha / rank
        self.dispatch = dispatch
        # auto: the stacked experts stay low-rank (E*r <= min(d_in, d_out)), so computing
        # them all costs at most the frozen layer's FLOPs and beats gather/scatter (bench).
        self.dense = dispatch == "dense" or (dispatch == "auto" and (
            top_k == n_experts or n_experts * rank <= min(d_in, d_out)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.experts_A = nn.Parameter(torch.empty(n_experts, rank, d_in, device=w.device, dtype=dtype))
        self.experts_B = nn.Parameter(torch.zeros(n_experts, rank, d_out, device=w.device, dtype=dtype))
        with torch.no_grad():
            for e in range(n_experts):  # per expert, so that fan_in is d_in
                nn.init.kaiming_uniform_(self.experts_A[e], a=math.sqrt(5))
        self.router = (nn.Linear(d_in, n_experts, bias=False, device=w.device, dtype=dtype)
                       if n_experts > 1 else None)
        self.track_balance = False
        self.balance: torch.Tensor | None = None
        self._mask: _MaskHolder | None = None

    def __getstate__(self):
        # The last balance loss is transient and part of an autograd graph: never copy it.
        return {**self.__dict__, "balance": None}

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.n_experts}, "
                f"top_k={self.top_k}, rank={self.rank}, alpha={self.alpha}, "
                f"dispatch={'dense' if self.dense else 'sparse'}")

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities ``[N, E]`` (at least float32), top-k weights ``[N, k]``
        renormalised to sum to 1, and the selected experts ``[N, k]``."""
        logits = self.router(h.to(self.router.weight.dtype))
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_w / top_w.sum(-1, keepdim=True), top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = x.reshape(-1, self.in_features)
        xa = self.dropout(h).to(self.experts_A.dtype)
        E, r = self.n_experts, self.rank
        self.balance = None
        if self.router is None:
            return self._add(out, (xa @ self.experts_A[0].T) * self.scaling, self.experts_B[0])
        probs, top_w, top_i = self.route(h)
        if self.track_balance and self.training and torch.is_grad_enabled():
            self.balance = switch_balance_loss(probs, top_i, E, self._token_mask(h.shape[0]))
        top_w = (top_w * self.scaling).to(xa.dtype)  # scaling applied in rank space
        if self.dense:  # all experts in one matmul pair; unselected experts have gate 0
            gates = torch.zeros(h.shape[0], E, dtype=xa.dtype, device=xa.device).scatter(1, top_i, top_w)
            z = (xa @ self.experts_A.reshape(E * r, -1).T).reshape(-1, E, r) * gates[:, :, None]
            return self._add(out, z.reshape(-1, E * r), self.experts_B.reshape(E * r, -1))
        return out + self._sparse(xa, top_w, top_i).to(out.dtype).reshape(out.shape)

    def _add(self, out, z, B):
        # out + z @ B, fused into one addmm when the dtypes agree.
        if out.dtype == z.dtype:
            return torch.addmm(out.reshape(-1, self.out_features), z, B).reshape(out.shape)
        return out + (z @ B).to(out.dtype).reshape(out.shape)

    def _sparse(self, xa, top_w, top_i):
        # Sort the N*k (token, expert) assignments by expert; each expert sees its tokens only.
        # The gate is applied to the rank-r activations (cheaper than to the d_out outputs).
        k = self.top_k
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        rows, gates = xa[token].split(counts), top_w.reshape(-1)[order].split(counts)
        ys = torch.cat([((rows[e] @ self.experts_A[e].T) * gates[e][:, None]) @ self.experts_B[e]
                        for e in range(self.n_experts) if counts[e]])
        delta = torch.zeros(xa.shape[0], self.out_features, dtype=ys.dtype, device=ys.device)
        return delta.index_add_(0, token, ys)

    def _token_mask(self, n_tokens: int) -> torch.Tensor | None:
        mask = self._mask.value if self._mask is not None else None
        if mask is None or mask.numel() != n_tokens:
            return None  # no mask given, or incremental decoding: use every token
        return mask.reshape(-1)


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


def attach(model: nn.Module, experts, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05,
           targets=None, top_k: int | None = None, balance_coef: float = 0.0,
           dispatch: str = "auto") -> nn.Module:
    """Replace the target linears of every block by LoRA-MoE layers, in place.

    Args:
        model: a causal LM (not a ``PeftModel``); all its own parameters are frozen.
        experts: expert count per block -- a ``pd.Series`` of ints indexed by block index
            (the allocation functions' output) or a sequence in block order.
        rank, alpha, dropout: LoRA hyper-parameters of every expert.
        targets: module names to adapt (last name component, or a longer suffix such as
            ``"mlp.c_proj"``); None = :data:`TARGETS` for the architecture.
        top_k: experts per token; None = 2 where a block has more than one expert, else 1;
            an int is capped at each block's expert count.
        balance_coef: coefficient of the load-balancing loss that
            :func:`layerif.train.finetune` adds (recorded with the adapter).
        dispatch: ``"auto"``, ``"sparse"`` or ``"dense"`` expert computation (same results;
            see the module docstring for the cost trade-off).

    Returns:
        ``model`` (modified in place); only expert and router parameters are trainable.

    Raises:
        ValueError: the allocation does not match the blocks, a count is < 1, a target
            matches no module, or the model already carries an adapter.
    """
    cfg = MoEConfig(rank=rank, alpha=float(alpha), dropout=float(dropout),
                    targets=None if targets is None else tuple([targets] if isinstance(targets, str) else targets),
                    top_k=top_k, balance_coef=float(balance_coef), dispatch=dispatch)
    if getattr(model, "_layerif_moe", None) is not None:
        raise ValueError("model already carries a LoRA-MoE adapter; attach to a fresh model")
    if hasattr(model, "peft_config"):
        raise ValueError("model is a PeftModel: attach the LoRA-MoE to the base model instead")
    blocks = transformer_blocks(model)
    alloc = _per_block(experts, len(blocks))
    names = cfg.targets or default_targets(model)
    plan = [(i, block, rel, module) for i, (_, block) in enumerate(blocks)
            for rel, module in linear_modules(block) if _matches(rel, names)]
    missing = [t for t in names if not any(_matches(rel, (t,)) for _, _, rel, _ in plan)]
    if missing:  # checked before anything is modified
        raise ValueError(f"targets={missing} match no linear module of the blocks; available: "
                         f"{[n for n, _ in linear_modules(blocks[0][1])]}")
    for p in model.parameters():
        p.requires_grad_(False)
    holder = _MaskHolder()
    for i, block, rel, module in plan:
        n = int(alloc[i])
        k = min(cfg.top_k, n) if cfg.top_k is not None else (2 if n > 1 else 1)
        layer = LoRAMoELinear(module, n, k, cfg.rank, cfg.alpha, cfg.dropout, cfg.dispatch)
        layer.track_balance, layer._mask = cfg.balance_coef > 0, holder
        parent, _, leaf = rel.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, leaf, layer)
    model._layerif_moe = {"config": cfg, "experts": alloc, "mask": holder}
    model.register_forward_pre_hook(_capture_mask, with_kwargs=True)
    return model


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
