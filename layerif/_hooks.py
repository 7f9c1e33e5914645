"""Per-example weight gradients of linear layers from captured inputs and output gradients.

For ``y_t = W x_t`` applied at every position t of a sequence, one example's weight
gradient is ``g = sum_t delta_t x_t^T`` (``delta_t = dloss/dy_t``). A forward hook captures
``x`` and ``y`` for a whole batch; one ``autograd.grad`` of the summed per-example losses
with respect to every captured ``y`` gives each example's ``delta`` (examples do not
interact in a causal LM batch, so the gradient of the sum *is* the per-example gradient).

Everything needed by influence functions is then a batched contraction of ``x`` and
``delta`` -- no ``d_out x d_in`` matrix per example unless asked for:

* ``|g|^2``: directly (``bmm`` then square-sum, ``T d_in d_out`` per example) or through
  token Grams ``sum_{t,s} (delta_t . delta_s)(x_t . x_s)`` (``T^2 (d_in + d_out)``), whichever
  is cheaper for the shape;
* ``<W, g>`` = ``sum_t delta_t . (W x_t)``;
* ``sum_i c_i g_i`` = one matmul of the ``c``-scaled deltas with ``x``.

Internally matrices are ``[d_out, d_in]`` (``nn.Linear`` layout); ``transposed`` units
(GPT-2's ``Conv1D``) are converted at the boundary by the caller.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["Capture", "batch_sum", "dots", "grad_only_for", "per_example", "sq_norms",
           "weighted_sum"]


def _use_gram(t: int, d_in: int, d_out: int) -> bool:
    return t * (d_in + d_out) < d_in * d_out


def sq_norms(x: Tensor, delta: Tensor, x_gram: Tensor | None = None) -> Tensor:
    """Squared Frobenius norms ``|sum_t delta_t x_t^T|^2`` per example.

    Args:
        x: ``[B, T, d_in]`` inputs.
        delta: ``[B, T, d_out]`` output gradients.
        x_gram: optional precomputed ``x @ x^T`` (``[B, T, T]``), shared by modules that
            read the same input (q, k, v).

    Returns:
        ``Tensor[B]``.
    """
    t, d_in, d_out = x.shape[1], x.shape[2], delta.shape[2]
    if _use_gram(t, d_in, d_out):
        if x_gram is None:
            x_gram = x @ x.transpose(1, 2)
        return ((delta @ delta.transpose(1, 2)) * x_gram).sum(dim=(1, 2))
    g = per_example(x, delta)
    return (g * g).sum(dim=(1, 2))


def per_example(x: Tensor, delta: Tensor) -> Tensor:
    """Per-example weight gradients ``[B, d_out, d_in]``."""
    return delta.transpose(1, 2) @ x


def dots(x: Tensor, delta: Tensor, w: Tensor) -> Tensor:
    """``<w, g_b>`` per example for a ``[d_out, d_in]`` matrix ``w``; ``Tensor[B]``."""
    if w.shape[0] <= w.shape[1]:
        return ((x @ w.T) * delta).sum(dim=(1, 2))
    return ((delta @ w) * x).sum(dim=(1, 2))


def weighted_sum(x: Tensor, delta: Tensor, c: Tensor) -> Tensor:
    """``sum_b c_b g_b`` as a ``[d_out, d_in]`` matrix (one matmul)."""
    scaled = delta * c[:, None, None]
    return scaled.flatten(0, 1).T @ x.flatten(0, 1)


def batch_sum(x: Tensor, delta: Tensor) -> Tensor:
    """``sum_b g_b`` as a ``[d_out, d_in]`` matrix (the ordinary weight gradient)."""
    return delta.flatten(0, 1).T @ x.flatten(0, 1)


class Capture:
    """Forward hooks that keep the input and output of chosen linear modules.

    Use as a context manager around a forward pass; then :meth:`deltas` runs the backward
    pass for the captured outputs. Captured inputs are detached; outputs keep their graph.

    Args:
        modules: the linear modules to watch (each must run exactly once per forward).
    """

    def __init__(self, modules: list[nn.Module]):
        self.modules = list(modules)
        self.inputs: list[Tensor | None] = [None] * len(self.modules)
        self.outputs: list[Tensor | None] = [None] * len(self.modules)
        self._handles = []
        self._detached: dict[int, tuple[Tensor, Tensor]] = {}

    def _hook(self, i: int):
        def hook(module, args, output):
            if self.outputs[i] is not None:
                raise RuntimeError(
                    f"module {type(module).__name__} #{i} ran twice in one forward pass; "
                    "weight-shared modules are not supported as gradient targets")
            x = args[0]
            # q, k and v read the same tensor: keep one detached alias so later maths can
            # share work on it (keyed by the live original, held until deltas()).
            if id(x) not in self._detached:
                self._detached[id(x)] = (x, x.detach())
            self.inputs[i] = self._detached[id(x)][1]
            self.outputs[i] = output
        return hook

    def __enter__(self):
        self.inputs = [None] * len(self.modules)
        self.outputs = [None] * len(self.modules)
        self._detached = {}
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def deltas(self, loss: Tensor) -> list[Tensor]:
        """Gradients of ``loss`` with respect to every captured output (zeros if unused).

        Only the paths to the captured outputs are differentiated: no parameter ``.grad``
        is computed or touched.
        """
        missing = [i for i, y in enumerate(self.outputs) if y is None]
        if missing:
            raise RuntimeError(f"target modules {missing} did not run in the forward pass")
        if not all(y.requires_grad for y in self.outputs):
            raise RuntimeError("captured outputs do not require grad; enable grad on targets")
        grads = torch.autograd.grad(loss, self.outputs, allow_unused=True)
        out = [torch.zeros_like(y) if g is None else g for y, g in zip(self.outputs, grads)]
        self.outputs = [None] * len(self.modules)
        self._detached = {}
        return out


@contextmanager
def grad_only_for(model: nn.Module, params: list[nn.Parameter]):
    """Within the block, only ``params`` require grad; flags are restored afterwards."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
