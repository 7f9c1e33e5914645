"""Token rows to model inputs: the one pad rule and the one right-padded batch.

* :func:`pad_token_id` is the id that fills padded positions, for every tokenizer;
* :func:`with_pad_token` gives a tokenizer without a pad token the same fallback, as a token
  (:func:`layerif.models.load_model` applies it, so HF's own padding agrees);
* :func:`collate` right-pads token rows into ``(input_ids, attention_mask)``.

Fine-tuning, evaluation, block replay, the gradient passes and the benchmarks all pad here.
"""
from __future__ import annotations

import torch

__all__ = ["collate", "pad_token_id", "with_pad_token"]


def pad_token_id(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its end-of-sequence
    token, else 0.

    Padded positions are masked wherever they are read (the attention mask, and the loss or
    score masks), so the id never reaches a result: it only has to be a valid id of the
    vocabulary. The end-of-sequence token is the fallback :func:`with_pad_token` (and so
    :func:`layerif.models.load_model`) sets, and the one ``generate`` fills finished rows
    with; 0 is the last resort of a tokenizer that has neither. A tokenizer that has a pad
    token (every one :func:`~layerif.models.load_model` returns) always gives that.
    """
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def with_pad_token(tokenizer):
    """``tokenizer``, given its end-of-sequence token as pad token when it has no pad token
    (the rule of :func:`pad_token_id`, so that the tokenizer's own padding agrees with it)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def collate(rows: list[list[int]], pad_id: int, device=None,
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` (``LongTensor [len(rows), width]``) of token
    rows, on ``device``; ``width`` (default: the longest row) must hold every row."""
    longest = max(len(r) for r in rows)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width={width} is invalid: expected at least the longest row ({longest})")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)
