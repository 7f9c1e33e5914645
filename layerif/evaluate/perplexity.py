"""Perplexity of a causal LM on fixed-length token rows (BoolQ passages, or WikiText)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..models import eval_mode

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8, progress: bool = True) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all rows of ``tokens``.

    Each row is scored on its own (no context carried across rows): tokens ``1..T-1`` are
    predicted from their prefixes, every predicted token weighs the same. In a process group
    each rank scores its shard of the rows (:func:`layerif.distributed.shard`) and the sums
    are added over the ranks: every rank returns the same perplexity.

    Args:
        model: a causal LM returning ``.logits``.
        tokens: ``[n_rows, seq_len]`` token ids, unpadded, ``seq_len >= 2``.
        batch_size: rows per forward pass.
        progress: show a progress bar over batches.

    Returns:
        The perplexity (a float >= 1).

    Raises:
        ValueError: malformed ``tokens`` or ``batch_size``.
    """
    if (not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point()
            or tokens.shape[0] == 0 or tokens.shape[1] < 2):
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens of shape {shape} is invalid: expected integer ids [n_rows >= 1, seq_len >= 2]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    rows = distributed.shard(tokens)
    progress = progress and distributed.is_main()
    with eval_mode(model):
        starts = range(0, rows.shape[0], batch_size)
        for start in tqdm(starts, desc="perplexity", disable=not progress):
            batch = rows[start:start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
            # At least float32: a bf16/fp16 model's logits are too coarse for a sum of NLLs.
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total += float(nll)
            count += batch[:, 1:].numel()
    if distributed.is_distributed():
        sums = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64))
        total, count = float(sums[0]), int(sums[1])
    return math.exp(total / count)
