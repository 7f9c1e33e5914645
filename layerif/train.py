"""A small causal-LM fine-tuning loop for adapters: plain LoRA (peft) and LoRA-MoE.

The loss is next-token cross-entropy on the whole ``text`` of each example (prompt and
answer, the paper's setup), averaged over the real (non-padding) tokens of a micro-batch.
Only parameters with ``requires_grad`` are optimised (AdamW), under a linear warm-up and
linear decay schedule. When the model carries a LoRA-MoE adapter attached with
``balance_coef > 0``, the routers' load-balancing loss is added with that coefficient.
The same loop serves the LoRA warm-up of the influence engine.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._config import ConfigBase, check, field
from .moe import balance_loss, moe_layers
from .rng import seeded
from .tokens import collate, pad_token_id

__all__ = ["TrainConfig", "causal_lm_loss", "finetune", "linear_schedule", "tokenize_texts"]


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


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose target is a real token."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           targets.reshape(-1), ignore_index=-100)


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """The fine-tuning recipe of :func:`finetune` (validated at construction).

    Every field but ``progress`` is part of a trained adapter's identity: micro-batch size
    and accumulation included, because they change the order of summation (and, with
    dropout, the random draws), so two splits of one effective batch give different weights
    in the last bits.

    Presets: ``smoke`` (tests) and ``paper`` (the authors'); the book's cpu recipe is the
    paper's with fields changed in ``params/cpu/03_lora_moe.yaml``.
    """

    epochs: int = field(1, help="passes over the training examples")
    lr: float = field(3e-4, help="peak learning rate of AdamW")
    batch_size: int = field(8, help="examples per micro-batch (one forward/backward)")
    grad_accum: int = field(1, help="micro-batches per optimizer step (effective batch = "
                            "batch_size * grad_accum)")
    warmup_steps: int = field(0, help="optimizer steps of linear warm-up, then linear decay to 0")
    max_length: int = field(128, help="truncation length in tokens")
    seed: int = field(0, help="seeds the data order and dropout (a private generator: the "
                      "caller's RNG state is left alone)")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float | None = field(1.0, help="gradient-norm clipping (None: off)")
    balance_coef: float | None = field(None, help="load-balancing coefficient; None = the one "
                                       "recorded by layerif.moe.attach (0 without an adapter)")
    add_eos: bool = field(True, help="append the eos token to each text (teaches the model "
                          "to stop after the answer)")
    progress: bool = field(True, help="show a progress bar with the loss", runtime=True)

    def __post_init__(self):
        check(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", self.epochs, "an int >= 1")
        check(self.lr > 0, "lr", self.lr, "a positive float")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
              self.batch_size, "an int >= 1")
        check(isinstance(self.grad_accum, int) and self.grad_accum >= 1, "grad_accum",
              self.grad_accum, "an int >= 1")
        check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps",
              self.warmup_steps, "an int >= 0")
        check(isinstance(self.max_length, int) and self.max_length >= 2, "max_length",
              self.max_length, "an int >= 2")
        check(isinstance(self.seed, int), "seed", self.seed, "an int")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm",
              self.max_grad_norm, "None or a positive float")
        check(self.balance_coef is None or self.balance_coef >= 0, "balance_coef",
              self.balance_coef, "None or a float >= 0")

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """Seconds on the tiny model: a few steps at a high learning rate."""
        return cls(epochs=1, lr=1e-3, batch_size=4, max_length=64, progress=False)

    @classmethod
    def paper(cls) -> "TrainConfig":
        """The paper's recipe (MoLA's code): 3 epochs, lr 3e-4, batch 128 (8 x 16 micro-batches),
        cut-off 256 tokens."""
        return cls(epochs=3, lr=3e-4, batch_size=8, grad_accum=16, max_length=256)


def finetune(model: nn.Module, tokenizer, train_examples: Sequence | torch.Tensor,
             config: TrainConfig | None = None, **overrides) -> pd.DataFrame:
    """Fine-tune the trainable parameters of ``model`` on the examples' full text.

    Args:
        model: a causal LM with some trainable parameters (peft LoRA, or
            :func:`layerif.moe.attach`); trained in place, left in its previous mode.
        tokenizer: its tokenizer (needs a pad or eos token).
        train_examples: ``Example`` objects (their ``text`` is used), strings, or a
            ``LongTensor [n, seq_len]`` of token ids.
        config: the recipe (:class:`TrainConfig`; default ``TrainConfig()``).
        **overrides: fields of ``config`` to change for this call
            (``finetune(m, tok, ex, lr=1e-3)``).

    Returns:
        One row per optimizer step (index ``step``): epoch, loss (LM loss, mean of the
        micro-batches), balance (load-balancing loss or NaN), lr, tokens, seconds.

    Raises:
        ValueError: a bad recipe field, no examples, or no trainable parameter.
    """
    cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter: attach an adapter (peft LoRA or "
                         "layerif.moe.attach) before fine-tuning")
    rows = tokenize_texts(tokenizer, train_examples, cfg.max_length, add_eos=cfg.add_eos)
    if not rows:
        raise ValueError("train_examples is empty")
    balance_coef = cfg.balance_coef
    if balance_coef is None:
        state = getattr(model, "_layerif_moe", None)
        balance_coef = state["config"].balance_coef if state is not None else 0.0
    device = params[0].device
    with seeded(cfg.seed, device):  # dropout draws; the caller's RNG is left alone
        return _train(model, tokenizer, rows, params, cfg, balance_coef)


def _train(model, tokenizer, rows, params, cfg: TrainConfig, balance_coef: float) -> pd.DataFrame:
    """The optimisation loop of :func:`finetune` (arguments already validated)."""
    pad_id = pad_token_id(tokenizer)
    device = params[0].device
    n_batches = math.ceil(len(rows) / cfg.batch_size)
    total = math.ceil(n_batches / cfg.grad_accum) * cfg.epochs
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_schedule(s, total, cfg.warmup_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    routed = [m for _, m in moe_layers(model)]
    tracked = [m.track_balance for m in routed]
    for m in routed:  # routers record their balance loss only when it is used
        m.track_balance = balance_coef > 0
    model.train()
    history = []
    bar = tqdm(total=total, desc="finetune", disable=not cfg.progress)
    try:
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(rows), generator=gen).tolist()
            batches = [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            for start in range(0, n_batches, cfg.grad_accum):
                group = batches[start: start + cfg.grad_accum]
                t0, step_lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
                stats = _accumulate(model, [[rows[i] for i in b] for b in group], pad_id, device,
                                    balance_coef)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.append({"step": len(history), "epoch": epoch, **stats, "lr": step_lr,
                                "seconds": time.perf_counter() - t0})
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    finally:
        bar.close()
        model.train(was_training)
        for m, t in zip(routed, tracked):
            m.track_balance = t
    return pd.DataFrame(history).set_index("step")


def _accumulate(model, group: list[list[list[int]]], pad_id: int, device, balance_coef: float) -> dict:
    """Forward and backward every micro-batch of one optimizer step; the step's statistics."""
    lm_sum, bal_sum, n_tok, has_bal = 0.0, 0.0, 0, False
    for batch in group:
        ids, mask = collate(batch, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = causal_lm_loss(logits, ids, mask)
        lm_sum += loss.item()
        bal = balance_loss(model) if balance_coef > 0 else None
        if bal is not None:
            bal_sum, has_bal = bal_sum + bal.item(), True
            loss = loss + balance_coef * bal.to(loss.device)
        (loss / len(group)).backward()
        n_tok += int(mask.sum())
    return {"loss": lm_sum / len(group),
            "balance": bal_sum / len(group) if has_bal else float("nan"), "tokens": n_tok}
