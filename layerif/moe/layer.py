"""The LoRA-MoE linear layer and its load-balancing loss (pure maths, no model surgery).

A frozen linear ``W0`` gets ``E`` LoRA experts ``(A_e, B_e)`` of rank ``r`` and, when
``E > 1``, a router ``Linear(d_in, E, bias=False)``:

    p   = softmax(router(x))                      (float32, or float64 for a float64 model)
    S   = top-k of p, renormalised to sum to 1    (k = 2 where E > 1, else 1)
    y   = W0 x + sum_{e in S} p_e / sum_S p * (alpha / r) * B_e A_e dropout(x)

Dispatch (all modes give the same outputs and gradients up to rounding):

* ``"sparse"`` sends each token only to its ``k`` experts: the ``N * k`` (token, expert)
  assignments are sorted by expert, each expert's ``A_e`` multiplies the rows of its own
  tokens (``k * N * r * d_in`` FLOPs in all, whatever ``E``; one small matmul per expert and
  one host synchronisation per layer), and the gated rank-``r`` activations are copied into
  their (token, expert) slot of an ``[N, E * r]`` buffer that is zero elsewhere; one matmul
  with the stacked ``[E * r, d_out]`` B matrices then writes every token's output at once
  (the zeros give the unselected experts exactly zero gradient).
* ``"dense"`` multiplies every token by all experts (``[N, d_in] @ [d_in, E * r]``) and
  zeroes the unselected gates: no gather, no host synchronisation, FLOPs that grow with ``E``.
* ``"batched"`` is the same computation as dense -- one GEMM over the stacked ``[E, r, d_in]``
  A's, masked by the routing weights, one GEMM over the stacked B's -- written with fewer
  kernels: the top-k weights are the softmax over the top-k logits (equal to the
  renormalised top-k probabilities; the full softmax is only computed when the balance loss
  needs it), ``alpha / r`` rides in ``addmm``'s ``alpha`` and a half-precision input is cast
  once for router and experts. Counted with :func:`layerif.bench.ops.count_ops` (aten ops of
  a training forward + backward, a proxy for GPU launches): one layer with 5 experts, top-2,
  39 ops against dense 48, sparse 99 and a peft LoRA 24; SmolLM2 with 5 experts on all 210
  projections 9275 against 11165 / 22064 / 6551 (1.42x / 1.70x / 3.37x the LoRA model).
* ``"auto"`` chooses by the input's device. **CPU**: sparse wherever ``k < E``, dense where
  every expert is selected anyway (``k == E``) -- the rule every stored result was computed
  with (a result's identity records ``dispatch="auto"``, so it stays, bit for bit). On a CPU
  at rank 8 the three are close: one 576 -> 1536 projection, 1024 tokens, forward +
  backward, E = 2 / 4 / 8 / 16 / 32, cost 1.07 / 1.14 / 1.30 / 1.47 / 2.09x one LoRA sparse,
  1.09 / 1.30 / 1.34 / 1.78 / 2.24x dense, 1.13 / 1.22 / 1.29 / 1.75 / 2.27x batched (best of
  10, interleaved; an earlier run without the input gradient had dense ahead, 1.04-1.86x vs
  1.20-2.59x), and a SmolLM2 training step with 5 experts per block 1.0-1.5x the LoRA step
  for each (a loaded machine: within its noise). **CUDA (and any other accelerator)**:
  batched. On one H200 (SmolLM2 shape) a training step cost 1.92x the LoRA step dense
  against 3.88x sparse, close to their op-count ratios (1.70x, 3.37x): the GPU is
  launch-bound at rank 8, so the path with the fewest kernels wins there; batched has not
  been timed on a GPU yet. Sparse wins where FLOPs dominate: at large ``E`` on a CPU (the
  cheapest at E = 16 and 32 above, by 15-20%) and, untested, at large ``E * r`` on a
  compute-bound GPU.

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
from ..models import is_conv1d, linear_weight

__all__ = ["DISPATCH", "LoRAMoELinear", "switch_balance_loss"]

DISPATCH = ("auto", "sparse", "dense", "batched")


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
    if not (isinstance(base, nn.Linear) or is_conv1d(base)):
        raise ValueError(f"base={type(base).__name__} is invalid: expected nn.Linear or Conv1D")
    d_out, d_in = linear_weight(base).shape
    return d_in, d_out


class LoRAMoELinear(nn.Module):
    """A frozen linear layer plus ``n_experts`` routed LoRA experts (see module docstring).

    Args:
        base: the pre-trained ``nn.Linear`` (or GPT-2 ``Conv1D``); kept as ``base_layer``.
        n_experts: number of experts ``E`` (>= 1).
        top_k: experts per token, ``1 <= top_k <= n_experts``.
        rank, alpha, dropout: LoRA rank, alpha (scaling ``alpha / rank``) and input dropout.
        dispatch: ``"auto"``, ``"sparse"``, ``"dense"`` or ``"batched"`` (see module
            docstring; :meth:`path` says which one runs on a device).

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
                f"dispatch={self.dispatch}")

    def path(self, device: torch.device | str) -> str:
        """The computation this layer runs on ``device``: ``"sparse"``, ``"dense"`` or
        ``"batched"`` (``"auto"`` resolved by the rule in the module docstring)."""
        if self.dispatch != "auto":
            return self.dispatch
        if torch.device(device).type != "cpu":
            return "batched"
        return "dense" if self.top_k == self.n_experts else "sparse"

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
        E, r = self.n_experts, self.rank
        self.balance = None
        path = self.path(x.device)
        if path == "batched" and self.router is not None:
            return self._batched(out, h)
        xa = self.dropout(h).to(self.experts_A.dtype)
        if self.router is None:
            return self._add(out, (xa @ self.experts_A[0].T) * self.scaling, self.experts_B[0])
        probs, top_w, top_i = self.route(h)
        if self._tracking():
            self.balance = switch_balance_loss(probs, top_i, E, self._token_mask(h.shape[0]))
        top_w = (top_w * self.scaling).to(xa.dtype)  # scaling applied in rank space
        if path == "dense":  # all experts in one matmul; unselected experts have gate 0
            gates = torch.zeros(h.shape[0], E, dtype=xa.dtype, device=xa.device).scatter(1, top_i, top_w)
            z = (xa @ self.experts_A.reshape(E * r, -1).T).reshape(-1, E, r) * gates[:, :, None]
            z = z.reshape(-1, E * r)
        else:
            z = self._sparse(xa, top_w, top_i)
        return self._add(out, z, self.experts_B.reshape(E * r, -1))

    def _tracking(self) -> bool:
        return self.track_balance and self.training and torch.is_grad_enabled()

    def _add(self, out, z, B, alpha: float = 1.0):
        # out + alpha * z @ B, fused into one addmm when the dtypes agree.
        if out.dtype == z.dtype:
            return torch.addmm(out.reshape(-1, self.out_features), z, B, alpha=alpha).reshape(out.shape)
        zb = z @ B if alpha == 1.0 else torch.mm(z, B).mul_(alpha)
        return out + zb.to(out.dtype).reshape(out.shape)

    def _batched(self, out, h):
        """All experts of the layer in one GEMM each side, gated by the top-k weights."""
        E, r, k = self.n_experts, self.rank, self.top_k
        hc = h.to(self.experts_A.dtype)  # one cast shared by router and experts
        logits = self.router(hc)
        wide = torch.promote_types(logits.dtype, torch.float32)
        top_l, top_i = logits.topk(k, dim=-1)
        if self._tracking():  # the balance loss needs every expert's probability
            probs = F.softmax(logits.to(wide), dim=-1)
            self.balance = switch_balance_loss(probs, top_i, E, self._token_mask(h.shape[0]))
        # p_e / sum_S p = exp(l_e) / sum_S exp(l): the softmax over the selected logits
        top_w = F.softmax(top_l.to(wide), dim=-1).to(hc.dtype)
        gates = torch.zeros(h.shape[0], E, dtype=hc.dtype, device=hc.device).scatter(1, top_i, top_w)
        # [N, d_in] @ [d_in, E * r]: a plain GEMM on the stacked A's (einsum would copy them)
        u = (self.dropout(hc) @ self.experts_A.reshape(E * r, -1).T).reshape(-1, E, r)
        z = (u * gates[:, :, None]).reshape(-1, E * r)
        return self._add(out, z, self.experts_B.reshape(E * r, -1), alpha=self.scaling)

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
