"""The LoRA-MoE linear layer and its load-balancing loss (pure maths, no model surgery).

A frozen linear ``W0`` gets ``E`` LoRA experts ``(A_e, B_e)`` of rank ``r`` and, when
``E > 1``, a router ``Linear(d_in, E, bias=False)``:

    p   = softmax(router(x))                      (float32, or float64 for a float64 model)
    S   = top-k of p, renormalised to sum to 1    (k = 2 where E > 1, else 1)
    y   = W0 x + sum_{e in S} p_e / sum_S p * (alpha / r) * B_e A_e dropout(x)

Dispatch. ``"sparse"`` (what ``"auto"`` picks whenever ``k < E``) sends each token only to
its ``k`` experts: the ``N * k`` (token, expert) assignments are sorted by expert, each
expert's ``A_e`` multiplies the rows of its own tokens (``k * N * r * d_in`` FLOPs in all,
whatever ``E``), and the gated rank-``r`` activations are copied into their (token, expert)
slot of an ``[N, E * r]`` buffer that is zero elsewhere; one matmul with the stacked
``[E * r, d_out]`` B matrices then writes every token's output at once. That last step
multiplies zeros for the ``E - k`` unselected experts, but at rank 8 it is cheaper than
gathering and scattering ``d_out``-wide rows per expert (an earlier revision did that: on a
576 -> 1536 projection with E = 5 it cost 1.9x one LoRA against 1.4x now, CPU), and the
zeros give the unselected experts exactly zero gradient.
``"dense"`` multiplies every token by all experts (``[N, d_in] @ [d_in, E * r]``) and
zeroes the unselected gates: no gather, no host synchronisation, FLOPs that grow with
``E`` -- often the faster choice at low rank and on launch-bound GPUs, so it is offered,
but it is not the default because it computes what top-k routing is meant to skip.
``"auto"`` uses dense only when every expert is selected anyway (``k == E``). All modes
give the same outputs and gradients up to rounding.

A layer with one expert has no router: its softmax over one logit is identically 1, so a
router there would hold parameters that never receive gradient (MoLA's code creates one).

The Switch-style load-balancing loss of one router is ``E * sum_e f_e * P_e`` with ``f_e``
the fraction of the ``N * k`` top-k assignments that went to expert ``e`` and ``P_e`` the
mean router probability of ``e`` (1 when perfectly balanced).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._config import check

__all__ = ["DISPATCH", "LoRAMoELinear", "switch_balance_loss"]

DISPATCH = ("auto", "sparse", "dense")


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
        # auto: top-k dispatch unless every expert is selected anyway (then dense is the same
        # computation without the gather).
        self.dense = dispatch == "dense" or (dispatch == "auto" and top_k == n_experts)
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
        if self.dense:  # all experts in one matmul; unselected experts have gate 0
            gates = torch.zeros(h.shape[0], E, dtype=xa.dtype, device=xa.device).scatter(1, top_i, top_w)
            z = (xa @ self.experts_A.reshape(E * r, -1).T).reshape(-1, E, r) * gates[:, :, None]
            z = z.reshape(-1, E * r)
        else:
            z = self._sparse(xa, top_w, top_i)
        return self._add(out, z, self.experts_B.reshape(E * r, -1))

    def _add(self, out, z, B):
        # out + z @ B, fused into one addmm when the dtypes agree.
        if out.dtype == z.dtype:
            return torch.addmm(out.reshape(-1, self.out_features), z, B).reshape(out.shape)
        return out + (z @ B).to(out.dtype).reshape(out.shape)

    def _sparse(self, xa, top_w, top_i):
        """Rank activations ``[N, E * r]`` of the top-k assignments, zero elsewhere."""
        n, (E, r, k) = xa.shape[0], (self.n_experts, self.rank, self.top_k)
        flat = top_i.reshape(-1)  # expert of assignment j = (token j // k, slot j % k)
        order = torch.argsort(flat, stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=E).tolist()  # one host sync per layer
        rows = xa.index_select(0, token).split(counts)  # index_select: cheaper backward than x[i]
        gates = top_w.reshape(-1)[order].split(counts)
        # An expert without tokens contributes an empty [0, r] block (so do all, for N = 0).
        z = torch.cat([(rows[e] @ self.experts_A[e].T) * gates[e][:, None] for e in range(E)])
        # Each gated activation goes to its (token, expert) slot; the other E - k slots of a
        # token stay zero, so the stacked-B matmul adds nothing (and no gradient) from them.
        slot = token * E + flat[order]
        return z.new_zeros(n * E, r).index_copy(0, slot, z).reshape(n, E * r)

    def _token_mask(self, n_tokens: int) -> torch.Tensor | None:
        mask = self._mask.value if self._mask is not None else None
        if mask is None or mask.numel() != n_tokens:
            return None  # no mask given, or incremental decoding: use every token
        return mask.reshape(-1)
