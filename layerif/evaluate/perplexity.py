"""Perplexity of a causal LM on fixed-length token rows (BoolQ passages, or WikiText)."""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import distributed
from .._config import check_finite
from ..models import check_finite_parameters, eval_mode, model_id

__all__ = ["perplexity", "window_nll"]


@torch.no_grad()
def window_nll(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8,
               progress: bool = True) -> pd.DataFrame:
    """The summed next-token negative log-likelihood of each row of ``tokens`` (a window).

    Each row is scored on its own (no context carried across rows): tokens ``1..T-1`` are
    predicted from their prefixes. In a process group each rank scores its contiguous shard
    of the rows (:func:`layerif.distributed.shard`) and the rows are gathered in order: every
    rank returns the whole frame.

    Args:
        model: a causal LM returning ``.logits``.
        tokens: ``[n_rows, seq_len]`` token ids, unpadded, ``seq_len >= 2``.
        batch_size: rows per forward pass.
        progress: show a progress bar over batches.

    Returns:
        One row per window (index ``window`` = row of ``tokens``): ``nll_sum`` (nats, float64,
        summed over the window's predicted tokens) and ``n_tokens`` (``seq_len - 1``).

    Raises:
        ValueError: malformed ``tokens`` or ``batch_size``; NaN or inf in the model's
            parameters or log-likelihoods (:class:`layerif._config.NonFiniteError`).
    """
    if (not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point()
            or tokens.shape[0] == 0 or tokens.shape[1] < 2):
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens of shape {shape} is invalid: expected integer ids [n_rows >= 1, seq_len >= 2]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")
    check_finite_parameters(model)
    device = next(model.parameters()).device
    rows = distributed.shard(tokens)
    sums = [torch.zeros(0, dtype=torch.float64)]
    with eval_mode(model):
        starts = range(0, rows.shape[0], batch_size)
        for start in tqdm(starts, desc="perplexity", disable=not (progress and distributed.is_main())):
            batch = rows[start:start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
            # At least float32: a bf16/fp16 model's logits are too coarse for a sum of NLLs.
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
            sums.append(nll.view(batch.shape[0], -1).to(torch.float64).sum(dim=1).cpu())
    nll_sum = distributed.gather_cat(torch.cat(sums))
    check_finite(nll_sum, model_id(model), "perplexity log-likelihoods (its logits)")
    return pd.DataFrame({"nll_sum": nll_sum.numpy(), "n_tokens": tokens.shape[1] - 1},
                        index=pd.RangeIndex(tokens.shape[0], name="window"))


def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8, progress: bool = True,
               per_window: bool = False):
    """``exp`` of the mean next-token negative log-likelihood over all rows of ``tokens``.

    Each row is scored on its own (no context carried across rows), every predicted token
    weighs the same (:func:`window_nll`); in a process group every rank returns the same
    value.

    Args:
        model: a causal LM returning ``.logits``.
        tokens: ``[n_rows, seq_len]`` token ids, unpadded, ``seq_len >= 2``.
        batch_size: rows per forward pass.
        progress: show a progress bar over batches.
        per_window: also return :func:`window_nll`'s per-window frame.

    Returns:
        The perplexity (a float >= 1); with ``per_window=True``, ``(perplexity, windows)``.

    Raises:
        ValueError: malformed ``tokens`` or ``batch_size``.
    """
    windows = window_nll(model, tokens, batch_size, progress)
    value = math.exp(float(windows["nll_sum"].sum()) / float(windows["n_tokens"].sum()))
    return (value, windows) if per_window else value
