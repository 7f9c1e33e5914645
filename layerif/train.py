"""A small causal-LM fine-tuning loop for adapters: plain LoRA (peft) and LoRA-MoE.

The loss is next-token cross-entropy on the whole ``text`` of each example (prompt and
answer, the paper's setup), averaged over the real (non-padding) tokens of a micro-batch.
Only parameters with ``requires_grad`` are optimised (AdamW), under a linear warm-up and
linear decay schedule. When the model carries a LoRA-MoE adapter attached with
``balance_coef > 0``, the routers' load-balancing loss is added with that coefficient.
The same loop serves the LoRA warm-up of the influence engine.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._config import check
from .moe import balance_loss, moe_layers

__all__ = ["causal_lm_loss", "finetune", "linear_schedule", "tokenize_texts"]


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from 0, then linear decay to 0 at the end."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def tokenize_texts(tokenizer, examples, max_length: int, add_eos: bool = True) -> list[list[int]]:
    """Token ids of each example's ``text`` (or of each string), truncated to ``max_length``.

    A ``LongTensor [n, L]`` is taken as already-tokenized rows (every position is a token).
    """
    if isinstance(examples, torch.Tensor):
        if examples.ndim != 2 or examples.dtype != torch.long:
            raise ValueError(f"train_examples tensor of shape {tuple(examples.shape)} and dtype "
                             f"{examples.dtype} is invalid: expected a LongTensor [n, seq_len]")
        return [row[:max_length].tolist() for row in examples]
    texts = [ex if isinstance(ex, str) else ex.text for ex in examples]
    eos = tokenizer.eos_token_id if add_eos else None
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]  # teaches the model to stop after the answer (for generation)
        rows.append(ids[:max_length])
    return rows


def _collate(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose target is a real token."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           targets.reshape(-1), ignore_index=-100)


def finetune(
    model: nn.Module,
    tokenizer,
    train_examples: Sequence | torch.Tensor,
    epochs: int = 1,
    lr: float = 3e-4,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup_steps: int = 0,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
    *,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    balance_coef: float | None = None,
    add_eos: bool = True,
) -> pd.DataFrame:
    """Fine-tune the trainable parameters of ``model`` on the examples' full text.

    Args:
        model: a causal LM with some trainable parameters (peft LoRA, or
            :func:`layerif.moe.attach`); trained in place, left in its previous mode.
        tokenizer: its tokenizer (needs a pad or eos token).
        train_examples: ``Example`` objects (their ``text`` is used), strings, or a
            ``LongTensor [n, seq_len]`` of token ids.
        epochs: passes over the data.
        lr: peak learning rate of AdamW.
        batch_size: examples per micro-batch.
        grad_accum: micro-batches per optimizer step.
        warmup_steps: optimizer steps of linear warm-up; then linear decay to 0.
        max_length: truncation length in tokens.
        seed: seeds the shuffling and dropout.
        progress: show a progress bar.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clipping (None: off).
        balance_coef: load-balancing coefficient; None = the one recorded by ``attach``
            (0 for models without a LoRA-MoE adapter).
        add_eos: append the eos token to each text.

    Returns:
        One row per optimizer step (index ``step``): epoch, loss (LM loss, mean of the
        micro-batches), balance (load-balancing loss or NaN), lr, tokens, seconds.

    Raises:
        ValueError: bad hyper-parameters, no examples, or no trainable parameter.
    """
    check(isinstance(epochs, int) and epochs >= 1, "epochs", epochs, "an int >= 1")
    check(lr > 0, "lr", lr, "a positive float")
    check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an int >= 1")
    check(isinstance(grad_accum, int) and grad_accum >= 1, "grad_accum", grad_accum, "an int >= 1")
    check(isinstance(warmup_steps, int) and warmup_steps >= 0, "warmup_steps", warmup_steps, "an int >= 0")
    check(isinstance(max_length, int) and max_length >= 2, "max_length", max_length, "an int >= 2")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter: attach an adapter (peft LoRA or "
                         "layerif.moe.attach) before fine-tuning")
    rows = tokenize_texts(tokenizer, train_examples, max_length, add_eos=add_eos)
    if not rows:
        raise ValueError("train_examples is empty")
    if balance_coef is None:
        state = getattr(model, "_layerif_moe", None)
        balance_coef = state["config"].balance_coef if state is not None else 0.0
    check(balance_coef >= 0, "balance_coef", balance_coef, "a float >= 0")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = params[0].device

    n_batches = math.ceil(len(rows) / batch_size)
    steps_per_epoch = math.ceil(n_batches / grad_accum)
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_schedule(s, total, warmup_steps))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout

    was_training = model.training
    routed = [m for _, m in moe_layers(model)]
    tracked = [m.track_balance for m in routed]
    for m in routed:  # routers record their balance loss only when it is used
        m.track_balance = balance_coef > 0
    model.train()
    history = []
    bar = tqdm(total=total, desc="finetune", disable=not progress)
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(rows), generator=gen).tolist()
            batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
            for start in range(0, n_batches, grad_accum):
                group = batches[start: start + grad_accum]
                t0, lm_sum, bal_sum, n_tok, has_bal = time.perf_counter(), 0.0, 0.0, 0, False
                step_lr = optimizer.param_groups[0]["lr"]
                for batch in group:
                    ids, mask = _collate([rows[i] for i in batch], pad_id, device)
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                    loss = causal_lm_loss(logits, ids, mask)
                    lm_sum += loss.item()
                    bal = balance_loss(model) if balance_coef > 0 else None
                    if bal is not None:
                        bal_sum, has_bal = bal_sum + bal.item(), True
                        loss = loss + balance_coef * bal.to(loss.device)
                    (loss / len(group)).backward()
                    n_tok += int(mask.sum())
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.append({
                    "step": len(history), "epoch": epoch, "loss": lm_sum / len(group),
                    "balance": bal_sum / len(group) if has_bal else float("nan"),
                    "lr": step_lr, "tokens": n_tok, "seconds": time.perf_counter() - t0,
                })
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    finally:
        bar.close()
        model.train(was_training)
        for m, t in zip(routed, tracked):
            m.track_balance = t
    return pd.DataFrame(history).set_index("step")
