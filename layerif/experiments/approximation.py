"""Notebook 09, parts 1, 4 (validation subsets) and 5: one warmed-up LoRA setting, many inverses.

Where the exact inverse is affordable -- LoRA adapters of small rank on every block's
attention, warmed up on the training examples with :func:`layerif.train.finetune` so that
``B != 0`` -- one gradient pass keeps the per-example gradients of every adapter tensor,
and from them come, without another pass:

* DataInf, the exact damped-Fisher inverse per tensor (``exact``, DataInf's block structure),
  the exact inverse per transformer block (``exact_block``) and Hessian-free, at each damping
  of a sweep (part 1);
* DataInf on the first ``n`` training examples for each ``n`` of a sweep (part 5);
* DataInf against the gradient of each of several disjoint validation subsets (part 4).

Everything is one table of block influence matrices (:func:`influence_grid`), saved through
the store (:func:`study_grid`); :func:`grid_matrix` reads one matrix back.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import influence, store
from .._config import ConfigBase, check, field
from ..gradients import GradientEngine, attached_lora, encode, find_units
from ..models import load_model
from ..train import finetune
from . import validation
from .scoring import load_scores, scores_dir, task_examples

__all__ = ["ApproxConfig", "approximation_table", "grid_matrix", "influence_grid", "saved_scores",
           "score_stability", "study_grid", "subset_scores", "sweep_scores"]

INDEX = ["method", "damping", "n_train", "val_subset", "layer"]


@dataclass
class ApproxConfig(ConfigBase):
    """The warmed-up LoRA setting of notebook 09 (parts 1, 4 and 5).

    Defaults: the book's cpu sizes (params/cpu/09_influence_validation.yaml, the one source).
    """

    task: str = field("sst2", help="task label (layerif.experiments.scoring.task_examples)")
    n_train: int = field(64, help="training examples (the largest size of the n sweep)")
    n_val: int = field(16, help="validation examples, split into val_subsets disjoint parts")
    val_subsets: int = field(4, help="disjoint validation subsets (part 4)")
    sizes: tuple = field((8, 16, 32), help="smaller training-set sizes (first n examples)")
    dampings: tuple = field((0.01, 0.03, 0.1, 0.3, 1.0), help="damping multipliers swept")
    damping: float = field(0.1, help="the default damping (n sweep, validation subsets)")
    lora_rank: int = field(4, help="rank of the LoRA adapters")
    lora_alpha: float = field(8.0, help="alpha of the LoRA adapters")
    modules: str = field("attention", help="modules carrying adapters")
    warmup_epochs: int = field(1, help="epochs of LoRA warm-up on the training examples")
    warmup_lr: float = field(1e-3, help="peak learning rate of the warm-up")
    batch_size: int = field(8, help="examples per pass")
    max_length: int = field(64, help="truncation length in tokens")
    seed: int = field(0, help="adapter initialisation and warm-up order")
    device: str = field("cpu", help="where the model runs", runtime=True)

    def __post_init__(self):
        self.sizes, self.dampings = tuple(self.sizes), tuple(self.dampings)
        check(isinstance(self.n_train, int) and self.n_train >= 2, "n_train", self.n_train,
              "an int >= 2")
        check(all(isinstance(n, int) and 2 <= n < self.n_train for n in self.sizes), "sizes",
              self.sizes, f"ints in [2, n_train={self.n_train})")
        check(isinstance(self.val_subsets, int) and 1 <= self.val_subsets <= self.n_val,
              "val_subsets", self.val_subsets, f"an int in [1, n_val={self.n_val}]")
        check(len(self.dampings) > 0 and all(d > 0 for d in self.dampings), "dampings",
              self.dampings, "positive floats")
        check(self.damping in self.dampings, "damping", self.damping, f"one of {self.dampings}")

    @classmethod
    def smoke(cls) -> "ApproxConfig":
        return cls(n_train=8, n_val=4, val_subsets=2, sizes=(4,), dampings=(0.01, 0.1, 1.0),
                   batch_size=4, max_length=32)

    @classmethod
    def paper(cls) -> "ApproxConfig":
        return cls(n_train=256, n_val=50, val_subsets=5, sizes=(16, 32, 64, 128),
                   max_length=128, lora_rank=8, lora_alpha=16.0, device="auto")


def _per_block(unit_values: torch.Tensor, layers: torch.Tensor, n_layers: int) -> np.ndarray:
    out = torch.zeros(n_layers, unit_values.shape[1], dtype=torch.float64)
    return out.index_add_(0, layers, unit_values.to(torch.float64)).numpy()


def _gradients(model, tokenizer, train, val, cfg: ApproxConfig, progress: bool):
    """Warm up fresh adapters, then per-example training gradients and one summed
    validation gradient per subset; returns ``(stacks, val_grads, unit layers)``."""
    kw = dict(max_length=cfg.max_length, batch_size=cfg.batch_size)
    chunks = np.array_split(np.arange(len(val)), cfg.val_subsets)
    with attached_lora(model, cfg.modules, cfg.lora_rank, cfg.lora_alpha, cfg.seed):
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)  # restored by attached_lora on exit
        finetune(model, tokenizer, train, epochs=cfg.warmup_epochs, lr=cfg.warmup_lr,
                 batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                 progress=progress, add_eos=False)
        units = find_units(model, "lora", cfg.modules)
        engine = GradientEngine(model, units, dtype=torch.float64, progress=progress)
        stacks = [s.cpu() for s in engine.per_example(encode(tokenizer, train, **kw))]
        vals = [[v.cpu() for v in engine.summed(encode(tokenizer, [val[i] for i in c], **kw))]
                for c in chunks]
    return stacks, vals, torch.tensor([u.layer for u in units])


def influence_grid(model, tokenizer, train, val, config: ApproxConfig | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Block influence matrices of every method, damping, size and validation subset.

    Returns:
        Index ``(method, damping, n_train, val_subset, layer)`` -- ``val_subset`` -1 is all
        validation examples, ``damping`` 0 for Hessian-free -- and one column per training
        example position (``NaN`` past ``n_train`` for the smaller sizes).
    """
    cfg = config or ApproxConfig()
    stacks, vals, layers = _gradients(model, tokenizer, train[:cfg.n_train], val[:cfg.n_val],
                                      cfg, progress)
    n_layers = int(layers.max()) + 1
    v_all = [sum(parts)[None] for parts in zip(*vals)]
    per_layer = [torch.nonzero(layers == b).ravel().tolist() for b in range(n_layers)]
    rows = {("hessian_free", 0.0, cfg.n_train, -1): influence.hessian_free(stacks, v_all)}
    for d in cfg.dampings:
        rows[("datainf", d, cfg.n_train, -1)] = influence.datainf(stacks, v_all, d)
        rows[("exact", d, cfg.n_train, -1)] = influence.exact(stacks, v_all, d)
        rows[("exact_block", d, cfg.n_train, -1)] = influence.exact(stacks, v_all, d,
                                                                    groups=per_layer)
    for n in cfg.sizes:
        rows[("datainf", cfg.damping, n, -1)] = influence.datainf([s[:n] for s in stacks],
                                                                  v_all, cfg.damping)
    for j, parts in enumerate(vals):
        rows[("datainf", cfg.damping, cfg.n_train, j)] = influence.datainf(
            stacks, [p[None] for p in parts], cfg.damping)
    frames = []
    for key, unit_values in rows.items():
        block = _per_block(unit_values, layers, n_layers)
        full = np.full((n_layers, cfg.n_train), np.nan)
        full[:, :block.shape[1]] = block
        idx = pd.MultiIndex.from_tuples([(*key, b) for b in range(n_layers)], names=INDEX)
        frames.append(pd.DataFrame(full, index=idx, columns=[f"x{i}" for i in range(cfg.n_train)]))
    return pd.concat(frames)


def grid_matrix(grid: pd.DataFrame, method: str, damping: float, n_train: int | None = None,
                val_subset: int = -1) -> np.ndarray:
    """One ``[L, n]`` block influence matrix of :func:`influence_grid` (default: largest n)."""
    n = n_train or int(grid.index.get_level_values("n_train").max())
    key = (method, float(damping), n, val_subset)
    sub = grid.xs(key, level=INDEX[:4])
    check(len(sub) > 0, "key", key, "a (method, damping, n_train, val_subset) in the grid")
    return sub.to_numpy()[:, :n]


def saved_scores(results, model_name: str, label: str, method: str = "datainf"):
    """Notebook 01's saved scores of one (model, task label, method).

    Raises:
        layerif.store.MissingResult: none are saved (naming notebook 01, which saves them).
    """
    if not (scores_dir(results, model_name, label, method) / store.MANIFEST).is_file():
        raise store.MissingResult("01_layer_scores", [f"{model_name} {label} {method} scores"])
    return load_scores(results, model_name, label, method)


def study_grid(results, model_name: str, config: ApproxConfig, overwrite: bool = False,
               progress: bool = True, load=None, load_kwargs: dict | None = None) -> pd.DataFrame:
    """Notebook 09: :func:`influence_grid` of ``model_name`` on ``config.task``, saved under
    ``<results>/validation/<model>/grid`` and loaded when its identity matches (NaN past n
    of the smaller sizes is a missing example). ``load(device)`` gives the ``(model,
    tokenizer)`` of ``model_name`` (default: a fresh :func:`layerif.models.load_model`;
    :func:`.influence_validation.run` passes one that loads once per run); the adapters are
    detached after, the model left as it was. ``load_kwargs``: more arguments of
    :func:`layerif.load_model` (the model's ``dtype``, part of the identity; a given ``load``
    loads with them)."""
    train, val = task_examples(config.task, config.n_train, config.n_val, config.seed)
    ident = store.identity("influence_grid", config, model_name,
                           {"task": config.task, "train_ids": [e.id for e in train],
                            "val_ids": [e.id for e in val]}, dtype=(load_kwargs or {}).get("dtype"))

    def compute():
        model, tokenizer = (load or partial(load_model, model_name, **(load_kwargs or {})))(
            config.device)
        return influence_grid(model, tokenizer, train, val, config, progress)

    smallest = min(config.sizes, default=config.n_train)
    past_smallest = [f"x{i}" for i in range(smallest, config.n_train)]
    return store.cached(Path(results) / "validation" / store.slug(model_name) / "grid", ident,
                        compute, overwrite=overwrite, allow_nonfinite=past_smallest)


def approximation_table(grid: pd.DataFrame, **alloc) -> pd.DataFrame:
    """Part 1: every method against the exact per-tensor inverse, at each damping.

    Hessian-free has no damping: it is compared with the exact inverse at each one.
    Returns :func:`validation.compare_methods` rows indexed ``(damping, method)``.
    """
    dampings = sorted(d for d in grid.index.get_level_values("damping").unique() if d > 0)
    parts = {}
    for d in dampings:
        mats = {m: grid_matrix(grid, m, d) for m in ("exact", "datainf", "exact_block")}
        mats["hessian_free"] = grid_matrix(grid, "hessian_free", 0.0)
        parts[d] = validation.compare_methods(mats, "exact", **alloc)
    return pd.concat(parts, names=["damping"])


def _default_damping(grid: pd.DataFrame) -> float:
    """The damping of the n sweep and validation subsets (the one with subset rows)."""
    sub = grid.index.to_frame(index=False)
    return float(sub.loc[sub["val_subset"] >= 0, "damping"].iloc[0])


def sweep_scores(grid: pd.DataFrame, aggregation: str = "positive") -> dict:
    """Part 5: ``n_train -> DataInf block scores`` on the first n examples."""
    d = _default_damping(grid)
    sizes = sorted(set(grid.xs(("datainf", d, -1), level=["method", "damping", "val_subset"])
                       .index.get_level_values("n_train")))
    return {int(n): validation.block_scores(grid_matrix(grid, "datainf", d, int(n)), aggregation)
            for n in sizes}


def subset_scores(grid: pd.DataFrame, aggregation: str = "positive") -> dict:
    """Part 4: ``validation subset -> DataInf block scores`` (all training examples)."""
    d = _default_damping(grid)
    subsets = sorted(j for j in grid.index.get_level_values("val_subset").unique() if j >= 0)
    return {f"subset {j}": validation.block_scores(grid_matrix(grid, "datainf", d, None, j),
                                                   aggregation) for j in subsets}


def score_stability(results, model_name: str, labels, n_boot: int = 1000, seed: int = 0,
                    method: str = "datainf", **alloc) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Part 4: :func:`validation.bootstrap_stability` of notebook 01's saved scores.

    Returns:
        ``(per_block, summary)``: per-block rows indexed ``(task, layer)`` and one summary
        row per task (with ``n_train``).
    """
    blocks, rows = {}, {}
    for label in labels:
        values = saved_scores(results, model_name, label, method).per_block()
        blocks[label], summary = validation.bootstrap_stability(values.to_numpy(), n_boot,
                                                                seed=seed, **alloc)
        blocks[label].index = values.index
        rows[label] = {**summary, "n_train": values.shape[1]}
    return (pd.concat(blocks, names=["task"]),
            pd.DataFrame(rows).T.rename_axis("task"))
