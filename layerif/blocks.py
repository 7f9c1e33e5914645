"""Run a model from one transformer block on: the block-tail forward.

Training *one* block while the rest stay frozen leaves the inputs of that block unchanged:
they are computed once (:func:`block_inputs`) and every later step runs only the blocks from
there on (:func:`tail_losses`, through :func:`tail_of`). Any causal LM whose blocks sit in one
``nn.ModuleList`` (found structurally by :func:`layerif.models.transformer_blocks`).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ._config import check
from .models import transformer_blocks
from .tokens import collate, pad_token_id

__all__ = ["block_inputs", "resolve_block", "tail_losses", "tail_of", "token_batch"]


def resolve_block(block: int, n_layers: int) -> int:
    """Block index ``block`` (negative: from the end) of a model of ``n_layers`` blocks."""
    check(isinstance(block, int) and -n_layers <= block < n_layers, "block", block,
          f"an int in [-{n_layers}, {n_layers})")
    return block % n_layers


@contextmanager
def tail_of(model: nn.Module, start: int):
    """Run only blocks ``start..L-1`` of ``model`` (fed through ``inputs_embeds``)."""
    blocks = transformer_blocks(model)
    start = resolve_block(start, len(blocks))
    parent = blocks[0][0].rpartition(".")[0]
    holder_path, _, attr = parent.rpartition(".")
    holder = model.get_submodule(holder_path) if holder_path else model
    full = getattr(holder, attr)
    check(isinstance(full, nn.ModuleList) and len(full) == len(blocks), "model",
          type(model).__name__, "blocks held in one nn.ModuleList")
    setattr(holder, attr, nn.ModuleList(list(full)[start:]))
    try:
        yield model
    finally:
        setattr(holder, attr, full)


def token_batch(tokenizer, examples, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of the examples' text, in input order."""
    texts = [e if isinstance(e, str) else e.text for e in examples]
    rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    check(min(len(r) for r in rows) >= 2, "examples", "an example of < 2 tokens", "2 tokens each")
    return collate(rows, pad_token_id(tokenizer))


def block_inputs(model: nn.Module, ids, mask, starts) -> dict[int, torch.Tensor]:
    """The hidden states entering each block of ``starts`` (one forward pass, no grad)."""
    blocks = transformer_blocks(model)
    got: dict[int, torch.Tensor] = {}

    def hook(b):
        def grab(module, args, kwargs):
            got[b] = (args[0] if args else kwargs["hidden_states"]).detach()
        return grab

    handles = [blocks[b][1].register_forward_pre_hook(hook(b), with_kwargs=True) for b in starts]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def tail_losses(model: nn.Module, start: int, hidden, ids, mask, vocab=None) -> torch.Tensor:
    """Per-example mean next-token loss, running blocks ``start..`` on cached ``hidden``.

    ``vocab`` (token ids) restricts the softmax to those tokens (every target must be one).
    """
    with tail_of(model, start):
        h = model.get_decoder()(inputs_embeds=hidden, attention_mask=mask,
                                use_cache=False).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    w, targets = head.weight, ids[:, 1:]
    bias = getattr(head, "bias", None)
    if vocab is not None:
        lut = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
        lut[vocab] = torch.arange(len(vocab), device=w.device)
        w, targets = w[vocab], lut[targets]
        bias = None if bias is None else bias[vocab]
    logits = h @ w.T + (0 if bias is None else bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          reduction="none").view(targets.shape)
    m = mask[:, 1:].to(nll.dtype)
    return (nll * m).sum(dim=1) / m.sum(dim=1)
