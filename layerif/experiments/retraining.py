"""Notebook 09, parts 2 and 3: retraining as ground truth for layer influence.

Both parts train *one* block and leave the rest frozen, so the inputs of that block never
change: they are computed once and every training step runs only the blocks from there on
(:mod:`layerif.blocks`). That is what makes many retrainings affordable on a CPU.

* :func:`leave_one_out` (part 2): LoRA adapters on one block's attention, trained with
  full-batch Adam from a seeded initialisation on all training examples and on all but one,
  for each example left out; the change of the validation loss is compared with each
  method's prediction ``-IF_k / n`` at the trained point (the classical influence function)
  and at the initial point. With ``restrict_vocab`` the loss is the next-token
  cross-entropy over the token types that occur in the examples (the output layer shrinks
  from 49k rows to a few hundred; the same loss is used for training and for influence).
* :func:`block_gains` (part 3): each block's attention weights fine-tuned alone (same steps,
  same data, full vocabulary), the validation-loss gain recorded per block.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import influence, store
from .._config import ConfigBase, check, field
from ..blocks import block_inputs, resolve_block, tail_losses, token_batch
from ..gradients import attached_lora, select_modules
from ..models import load_model, transformer_blocks
from ..scores import AGGREGATIONS
from . import validation
from .approximation import saved_scores
from .scoring import task_examples

__all__ = ["GainConfig", "LooConfig", "block_gains", "gains_summary", "leave_one_out",
           "loo_summary", "study_gains", "study_loo"]


# -- part 2: leave one out -----------------------------------------------------------------
@dataclass
class LooConfig(ConfigBase):
    """Leave-one-out retraining of one block's LoRA adapters (notebook 09, part 2).

    Defaults: the book's cpu sizes (params/cpu/09_influence_validation.yaml, the one source).
    """

    task: str = field("sst2", help="task label")
    n_train: int = field(12, help="training examples; each is left out once")
    n_val: int = field(8, help="validation examples (summed loss)")
    blocks: tuple = field((-1,), help="blocks trained, one at a time (negative: from the end)")
    seeds: tuple = field((0, 1, 2), help="adapter initialisations (retraining noise)")
    steps: int = field(15, help="full-batch Adam steps per training")
    lr: float = field(1e-3, help="Adam learning rate")
    lora_rank: int = field(4, help="adapter rank")
    lora_alpha: float = field(8.0, help="adapter alpha")
    damping: float = field(0.1, help="DataInf / exact damping multiplier")
    restrict_vocab: bool = field(True, help="softmax over the examples' token types only")
    max_length: int = field(64, help="truncation length in tokens")

    def __post_init__(self):
        self.blocks, self.seeds = tuple(self.blocks), tuple(self.seeds)
        check(isinstance(self.n_train, int) and self.n_train >= 3, "n_train", self.n_train,
              "an int >= 3")
        check(len(self.seeds) >= 1 and len(self.blocks) >= 1, "seeds/blocks",
              (self.seeds, self.blocks), "non-empty tuples")
        check(isinstance(self.steps, int) and self.steps >= 1, "steps", self.steps, "an int >= 1")

    @classmethod
    def smoke(cls) -> "LooConfig":
        return cls(n_train=4, n_val=2, seeds=(0, 1), steps=2, max_length=24)

    @classmethod
    def paper(cls) -> "LooConfig":
        return cls(n_train=50, n_val=50, blocks=(-1, -8, -16), seeds=(0, 1, 2, 3, 4),
                   steps=50, max_length=128, restrict_vocab=False)


def _fit(model, params, init, start, data, rows, cfg: LooConfig, vocab) -> None:
    with torch.no_grad():
        for p, x in zip(params, init):
            p.copy_(x)
    hidden, ids, mask = data
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = tail_losses(model, start, hidden[rows], ids[rows], mask[rows], vocab).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _val_loss(model, start, data, vocab) -> float:
    with torch.no_grad():
        return float(tail_losses(model, start, *data, vocab).sum())


def _predictions(model, params, start, train, val, cfg: LooConfig, vocab) -> dict:
    """Predicted change of the summed validation loss when each example is left out."""
    rows = []
    for i in range(train[1].shape[0]):
        k = int(train[2][i].sum())
        loss = tail_losses(model, start, train[0][i:i + 1, :k], train[1][i:i + 1, :k],
                           train[2][i:i + 1, :k], vocab)[0]
        rows.append([g.reshape(-1).double() for g in torch.autograd.grad(loss, params)])
    stacks = [torch.stack(col) for col in zip(*rows)]
    v = [g.reshape(1, -1).double() for g in torch.autograd.grad(
        tail_losses(model, start, *val, vocab).sum(), params)]
    n = len(rows)
    return {"datainf": -influence.datainf(stacks, v, cfg.damping).sum(0).numpy() / n,
            "exact": -influence.exact(stacks, v, cfg.damping).sum(0).numpy() / n,
            "hessian_free": -influence.hessian_free(stacks, v).sum(0).numpy() / n}


def leave_one_out(model, tokenizer, train, val, block: int, seed: int, config: LooConfig,
                  progress: bool = True) -> pd.DataFrame:
    """Leave-one-out ground truth and predictions for one trained block and seed.

    Returns:
        One row per training example (index ``example``): ``actual`` (validation loss
        retrained without it minus with all), the predictions ``<method>`` at the trained
        point and ``<method>_init`` at the initial one, ``loss_init``, ``loss_full``.
    """
    cfg, blocks = config, transformer_blocks(model)
    start = resolve_block(block, len(blocks))
    dev = next(model.parameters()).device
    tr = tuple(t.to(dev) for t in token_batch(tokenizer, train, cfg.max_length))
    va = tuple(t.to(dev) for t in token_batch(tokenizer, val, cfg.max_length))
    vocab = torch.unique(torch.cat([tr[0][tr[1] > 0], va[0][va[1] > 0]])) if cfg.restrict_vocab else None
    with attached_lora(model, "attention", cfg.lora_rank, cfg.lora_alpha, seed):
        prefix = blocks[start][0] + "."
        params = [p for n, p in model.named_parameters() if n.startswith(prefix) and "lora_" in n]
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in params))
        train_d = (block_inputs(model, *tr, [start])[start], *tr)
        val_d = (block_inputs(model, *va, [start])[start], *va)
        init = [p.detach().clone() for p in params]
        out = {f"{k}_init": v for k, v in _predictions(model, params, start, train_d, val_d,
                                                        cfg, vocab).items()}
        loss_init = _val_loss(model, start, val_d, vocab)
        everyone = list(range(len(train)))
        _fit(model, params, init, start, train_d, everyone, cfg, vocab)
        loss_full = _val_loss(model, start, val_d, vocab)
        out.update(_predictions(model, params, start, train_d, val_d, cfg, vocab))
        actual = []
        for k in tqdm(everyone, desc=f"leave one out, block {start}, seed {seed}",
                      disable=not progress, leave=False):
            _fit(model, params, init, start, train_d, everyone[:k] + everyone[k + 1:], cfg, vocab)
            actual.append(_val_loss(model, start, val_d, vocab) - loss_full)
    frame = pd.DataFrame({"actual": actual, **out}, index=pd.Index(everyone, name="example"))
    return frame.assign(loss_init=loss_init, loss_full=loss_full)


def study_loo(results, model_name: str, config: LooConfig, overwrite: bool = False,
              progress: bool = True, load=None, load_kwargs: dict | None = None) -> pd.DataFrame:
    """Notebook 09: :func:`leave_one_out` for every block and seed, each saved on its own
    (``<results>/validation/<model>/loo/block<l>-seed<s>``) so that a re-run resumes.
    ``load(device)`` gives the ``(model, tokenizer)`` of ``model_name`` (default: a fresh
    :func:`layerif.models.load_model`; :func:`.influence_validation.run` passes one that loads
    once per run), once for all blocks and seeds; the adapters are detached after each.
    ``load_kwargs``: more arguments of :func:`layerif.load_model` (the model's ``dtype``, part
    of the identity; a given ``load`` loads with them)."""
    load = load or partial(load_model, model_name, **(load_kwargs or {}))
    dtype = (load_kwargs or {}).get("dtype")
    train, val = task_examples(config.task, config.n_train, config.n_val)
    data = {"task": config.task, "train_ids": [e.id for e in train], "val_ids": [e.id for e in val]}
    model = tokenizer = None
    parts = {}
    for block in config.blocks:
        for seed in config.seeds:
            ident = store.identity("leave_one_out", {**config.identity(), "block": block,
                                                     "seed": seed}, model_name, data, dtype=dtype)

            def compute(block=block, seed=seed):
                nonlocal model, tokenizer
                if model is None:
                    model, tokenizer = load("auto")
                return leave_one_out(model, tokenizer, train, val, block, seed, config, progress)

            folder = Path(results) / "validation" / store.slug(model_name) / "loo"
            parts[(block, seed)] = store.cached(folder / f"block{block}-seed{seed}", ident,
                                                compute, overwrite=overwrite)
    return pd.concat(parts, names=["block", "seed"])


# -- part 3: block-alone fine-tuning -------------------------------------------------------
@dataclass
class GainConfig(ConfigBase):
    """Fine-tune each block's attention weights alone (notebook 09, part 3).

    Defaults: the book's cpu sizes (params/cpu/09_influence_validation.yaml, the one source).
    """

    blocks: tuple = field((0, 5, 10, 15, 20, 25, 29), help="blocks fine-tuned, one at a time")
    n_train: int = field(8, help="the first n_train of the scores' training examples")
    steps: int = field(3, help="full-batch Adam steps")
    lr: float = field(1e-4, help="Adam learning rate")
    max_length: int = field(64, help="truncation length in tokens")

    def __post_init__(self):
        self.blocks = tuple(self.blocks)
        check(len(self.blocks) >= 2, "blocks", self.blocks, "at least 2 blocks")
        check(isinstance(self.steps, int) and self.steps >= 1, "steps", self.steps, "an int >= 1")

    @classmethod
    def smoke(cls) -> "GainConfig":
        return cls(blocks=(27, 28, 29), n_train=4, steps=1, max_length=24)

    @classmethod
    def paper(cls) -> "GainConfig":
        return cls(blocks=tuple(range(32)), n_train=64, steps=20, max_length=128)


def block_gains(model, tokenizer, train, val, config: GainConfig,
                progress: bool = True) -> pd.DataFrame:
    """Validation-loss gain (mean per example) from fine-tuning each block's attention alone.

    Returns:
        Index ``layer``: ``loss_before``, ``loss_after``, ``gain`` (before minus after).
    """
    cfg, blocks = config, transformer_blocks(model)
    starts = [resolve_block(b, len(blocks)) for b in cfg.blocks]
    dev = next(model.parameters()).device
    tr = tuple(t.to(dev) for t in token_batch(tokenizer, train, cfg.max_length))
    va = tuple(t.to(dev) for t in token_batch(tokenizer, val, cfg.max_length))
    h_tr, h_va = block_inputs(model, *tr, starts), block_inputs(model, *va, starts)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    rows = {}
    try:
        for b in tqdm(starts, desc="block-alone fine-tuning", disable=not progress, leave=False):
            block = blocks[b][1]
            params = [block.get_submodule(m).weight for m in select_modules(block, "attention")]
            saved = [p.detach().clone() for p in params]
            for p in model.parameters():
                p.requires_grad_(any(p is q for q in params))
            try:
                with torch.no_grad():
                    before = float(tail_losses(model, b, h_va[b], *va).mean())
                opt = torch.optim.Adam(params, lr=cfg.lr)
                for _ in range(cfg.steps):
                    loss = tail_losses(model, b, h_tr[b], *tr).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    after = float(tail_losses(model, b, h_va[b], *va).mean())
            finally:   # the block's weights as they were, even after an error
                with torch.no_grad():
                    for p, x in zip(params, saved):
                        p.copy_(x)
                        p.grad = None
            rows[b] = {"loss_before": before, "loss_after": after, "gain": before - after}
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return pd.DataFrame(rows).T.rename_axis("layer")


def study_gains(results, model_name: str, label: str, config: GainConfig,
                overwrite: bool = False, progress: bool = True, load=None,
                load_kwargs: dict | None = None) -> pd.DataFrame:
    """Notebook 09: :func:`block_gains` on the examples of notebook 01's saved scores of
    ``label`` (first ``n_train`` training examples, all validation examples), saved.
    ``load(device)`` gives the ``(model, tokenizer)`` of ``model_name`` (default: a fresh
    :func:`layerif.models.load_model`; :func:`.influence_validation.run` passes one that loads
    once per run); each block's weights are restored after its fine-tuning. ``load_kwargs``:
    as :func:`study_loo`'s."""
    scores = saved_scores(results, model_name, label, "datainf")
    train, val = task_examples(label.split("--")[0], len(scores.train_ids), len(scores.val_ids),
                               scores.config.seed)
    check([e.id for e in train] == scores.train_ids, "label", label,
          "scores whose examples task_examples reproduces")
    train = train[:config.n_train]
    ident = store.identity("block_gains", config, model_name,
                           {"task": label, "train_ids": [e.id for e in train],
                            "val_ids": scores.val_ids}, dtype=(load_kwargs or {}).get("dtype"))

    def compute():
        model, tokenizer = (load or partial(load_model, model_name, **(load_kwargs or {})))("auto")
        return block_gains(model, tokenizer, train, val, config, progress)

    folder = Path(results) / "validation" / store.slug(model_name) / "gains" / store.slug(label)
    return store.cached(folder, ident, compute, overwrite=overwrite)


PREDICTORS = ("datainf", "exact", "hessian_free", "datainf_init", "exact_init", "hessian_free_init")


def loo_summary(frame: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Part 2: per trained block, :func:`validation.loo_table` of every predictor beside the
    retraining noise (:func:`validation.retraining_noise`), from :func:`study_loo`'s frame."""
    parts = {}
    for block, sub in frame.groupby(level="block"):
        wide = {c: sub[c].unstack("example").to_numpy() for c in ("actual", *PREDICTORS)}
        table = validation.loo_table(wide["actual"], {p: wide[p] for p in PREDICTORS}, n_boot)
        noise = validation.retraining_noise(wide["actual"])
        parts[block] = table.assign(**noise)
    return pd.concat(parts, names=["block"])


def gains_summary(results, model_name: str, label: str, gains: pd.DataFrame,
                  n_boot: int = 1000) -> pd.DataFrame:
    """Part 3: :func:`validation.gain_table` of ``gains`` against notebook 01's saved block
    scores of ``label`` (DataInf and Hessian-free, every aggregation)."""
    cols = {(m, agg): saved_scores(results, model_name, label, m).aggregate(agg)
            for m in ("datainf", "hessian_free") for agg in AGGREGATIONS}
    table = validation.gain_table(gains["gain"], pd.DataFrame(cols), n_boot)
    table.index.names = ["method", "aggregation"]
    return table
