"""Count the aten operations a computation dispatches: a device-free proxy for GPU kernel
launches (what bounds a small layer's cost on an accelerator, where each launch costs a few
microseconds whatever its size).

Views (``view``, ``t``, ``reshape`` of a contiguous tensor, ...) and ops that return no
tensor (``promote_types``) launch nothing and are not counted; in-place ops are. Composite ops are counted as the ops they decompose into, which is
what reaches the device.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_ops"]


def _is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write
                                 for r in returns)


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = out if isinstance(out, (tuple, list)) else (out,)
        if not _is_view(func) and any(isinstance(t, torch.Tensor) for t in tensors):
            self.ops[func.overloadpacket.__name__] += 1
        return out


def count_ops(fn) -> Counter:
    """Run ``fn()`` (forward and backward included if it calls ``backward``) and return the
    non-view aten ops it dispatched, by name (``sum(counter.values())`` is the total)."""
    with _Counter() as counter:
        fn()
    return counter.ops
