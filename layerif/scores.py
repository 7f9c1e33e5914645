"""Per-layer LayerIF scores: the influence of training examples, per transformer block.

:func:`layer_scores` runs the gradient passes (:mod:`layerif.gradients`) and the influence
maths (:mod:`layerif.influence`) and returns a :class:`LayerScores`, which keeps the
per-unit influence matrix ``[n_units, n_train]`` in the DataInf sign (**positive =
harmful**) and aggregates it per block:

* ``"positive"`` (the paper's "+ve", as in the authors' code): the *helpful* examples,
  those with influence <= 0, summed -- so scores are <= 0, and a larger ``|S_l|`` means a
  block more sensitive to its training data (less well trained, per the paper);
* ``"top"``: the ``top_fraction`` most helpful examples (smallest values), summed;
* ``"all"``: every example, summed.

A block's influence on example k is the sum over its units (DataInf treats each tensor as
its own Hessian block; ``unit="block"`` makes the whole transformer block one).

Passes (forward + backward epochs): ``storage="memory"`` keeps per-example gradients
(LoRA: one validation and one training pass); ``storage="stream"`` never stores them
(``datainf``: one validation pass and three training passes -- norms and dots, the
Sherman--Morrison sum, the final dots; ``hessian_free``: one of each). ``"auto"`` picks
memory when the per-example gradients fit ``memory_budget_gb``.

:class:`ScoreConfig`, :class:`LayerScores` (its aggregates, save and load) and
:func:`score_identity` live in :mod:`layerif.score_result` and are re-exported here.
"""
from __future__ import annotations

from contextlib import nullcontext

import pandas as pd
import torch
from torch import Tensor

from . import distributed, influence, parallel_scores, store
from ._config import check
from .gradients import (Batches, GradientEngine, attached_lora, find_units, has_lora,
                        units_table)
from .models import model_id as _model_id
from .models import resolve_device, transformer_blocks
from .score_result import (AGGREGATIONS, LayerScores, ScoreConfig, aggregate_values,
                           score_identity)

__all__ = ["AGGREGATIONS", "METHODS", "LayerScores", "ScoreConfig", "aggregate_values",
           "layer_scores", "score_identity"]


def _ids(examples) -> list[str]:
    return [str(getattr(e, "id", i)) for i, e in enumerate(examples)]


def _examples(examples, name: str) -> list:
    """``examples`` as a non-empty list (a lone string is refused: it would be scored
    character by character)."""
    ok = not isinstance(examples, (str, bytes)) and hasattr(examples, "__iter__")
    check(ok, name, examples if not ok else None, "a list of examples or strings, not one "
          "string (wrap it: [text])")
    out = list(examples)
    check(len(out) > 0, name, out, "at least one example")
    return out


def _groups(units, unit: str) -> list[list[int]]:
    if unit == "tensor":
        return [[u] for u in range(len(units))]
    by_layer: dict[int, list[int]] = {}
    for u, spec in enumerate(units):
        by_layer.setdefault(spec.layer, []).append(u)
    return list(by_layer.values())


#: The influence methods of :func:`layer_scores` (and ``ScoreConfig.method``).
METHODS = ("datainf", "hessian_free", "exact")


def _check_methods(methods) -> tuple[str, ...]:
    """``methods`` as a tuple of distinct method names (ValueError otherwise)."""
    ok = (isinstance(methods, (tuple, list)) and len(methods) > 0
          and all(isinstance(m, str) and m in METHODS for m in methods)
          and len(set(methods)) == len(methods))
    check(ok, "methods", methods, f"a non-empty tuple of distinct names from {METHODS}")
    return tuple(methods)


def _pick_storage(engine: GradientEngine, n_train: int, config: ScoreConfig,
                  methods: tuple[str, ...]) -> str:
    """The storage ``config.storage`` resolves to; refuses ``exact`` without memory."""
    itemsize = torch.empty((), dtype=engine.dtype).element_size()
    need_gb = n_train * sum(u.numel for u in engine.units) * itemsize / 2**30
    storage = config.storage
    if storage == "auto":
        storage = "memory" if need_gb <= config.memory_budget_gb else "stream"
    if "exact" in methods and storage == "stream":
        raise ValueError(f"method='exact' needs per-example gradients in memory ({need_gb:.2f} "
                         f"GB, memory_budget_gb={config.memory_budget_gb}): raise the budget "
                         "or use method='datainf'")
    return storage


def _memory_influence(stacks: list[Tensor], vals: list[Tensor], method: str,
                      config: ScoreConfig, groups: list[list[int]]) -> Tensor:
    """One method's per-unit influence from in-memory gradient stacks."""
    if method == "hessian_free":
        return influence.hessian_free(stacks, vals)
    fn = influence.exact if method == "exact" else influence.datainf
    return fn(stacks, vals, config.damping, groups=groups)


def _stream_influence(engine: GradientEngine, train: Batches, v: list[Tensor],
                      config: ScoreConfig, groups: list[list[int]],
                      methods: tuple[str, ...]) -> dict[str, Tensor]:
    """Streamed influences; DataInf's first pass also yields hessian_free's ``<v, g_i>``."""
    want_datainf = "datainf" in methods
    sq, v_dots = engine.norms_and_dots(train, v, norms=want_datainf)
    out = {}
    if want_datainf:
        lam, coef = influence.datainf_terms(sq, v_dots, [u.numel for u in engine.units],
                                            config.damping, groups)
        w = engine.weighted_sum(train, coef)
        _, w_dots = engine.norms_and_dots(train, w, norms=False)
        out["datainf"] = influence.datainf_from_dots(v_dots, w_dots, lam)
    if "hessian_free" in methods:
        out["hessian_free"] = -v_dots
    return out


def _unit_influence(engine: GradientEngine, train: Batches, val: Batches,
                    config: ScoreConfig, groups: list[list[int]],
                    methods: tuple[str, ...] | None = None,
                    n_train: int | None = None) -> tuple[dict[str, Tensor], str]:
    """Per-unit influence matrices of every method (default ``config.method``), and the
    storage used; all methods share one validation pass and the training passes. In a
    process group, ``train``/``val`` are this rank's shards of ``n_train``/all examples."""
    methods = methods or (config.method,)
    n_train = train.n if n_train is None else n_train
    largest = -(-n_train // distributed.world_size())  # the same storage on every rank
    storage = _pick_storage(engine, largest, config, methods)
    if distributed.is_distributed():
        return parallel_scores.unit_influence(engine, train, val, n_train, storage,
                                              config.damping, groups, methods), storage
    v = engine.summed(val)
    if storage == "stream":
        out = _stream_influence(engine, train, v, config, groups, methods)
    else:
        stacks = [s.to(engine.device) for s in engine.per_example(train)]
        vals = [x[None].to(engine.device) for x in v]
        out = {m: _memory_influence(stacks, vals, m, config, groups) for m in methods}
    return {m: out[m] for m in methods}, storage


def layer_scores(model, tokenizer, train_examples, val_examples,
                 config: ScoreConfig | None = None, *, task: str | None = None,
                 progress: bool = True,
                 methods: tuple[str, ...] | None = None) -> "LayerScores | dict[str, LayerScores]":
    """Influence of each training example on the summed validation loss, per unit and block.

    Args:
        model: a Hugging Face causal LM (plain, or carrying peft LoRA adapters).
        tokenizer: its tokenizer (with a pad token).
        train_examples: ``layerif.data.Example`` objects (their ``.text``) or strings.
        val_examples: the same, for the validation loss.
        config: :class:`ScoreConfig` (default: ``ScoreConfig()``).
        task: task name recorded with the result.
        progress: show a progress bar per pass.
        methods: ``None`` (``config.method`` only), or distinct names from ``"datainf"``,
            ``"hessian_free"``, ``"exact"`` computed from shared gradient passes: with
            memory storage one validation and one training pass serve them all; streamed,
            ``hessian_free`` reuses DataInf's first training pass (``exact`` needs memory).

    Each example's loss is its mean next-token loss over its non-pad tokens (see
    :mod:`layerif.gradients`). The model is moved to ``config.device`` (unless it is spread
    over devices by a ``device_map``); with ``target="lora"`` on a model without adapters,
    fresh ones are attached for the computation and removed afterwards. Under torchrun each
    rank scores a shard of the examples and returns the single-process result.

    Returns:
        :class:`LayerScores`; with ``methods``, ``dict[str, LayerScores]`` in their order,
        each with ``config.replace(method=m)``, the same values as a separate call with that
        config, ``info["passes"]`` the passes the shared call ran and
        ``info["shared_with"]`` the methods computed together.

    Raises:
        ValueError: a bad config, examples or ``methods``; ``exact`` over the memory budget.
    """
    config = config or ScoreConfig()
    if not isinstance(config, ScoreConfig):
        raise ValueError(f"config={config!r} is invalid: expected a ScoreConfig")
    names = None if methods is None else _check_methods(methods)
    train = _examples(train_examples, "train_examples")[:config.n_train]
    val = _examples(val_examples, "val_examples")[:config.n_val]
    device = resolve_device(config.device)
    if getattr(model, "hf_device_map", None) is None and next(model.parameters()).device != device:
        model.to(device)
    kw = dict(max_length=config.max_length, include_pads=config.include_pads,
              batch_size=config.batch_size)
    (train_b, n_tokens), (val_b, _) = (parallel_scores.encode_shard(tokenizer, x, **kw)
                                       for x in (train, val))
    dtype = config.dtype or torch.promote_types(next(model.parameters()).dtype, torch.float32)
    fresh = config.target == "lora" and not has_lora(model, config.modules)
    with (attached_lora(model, config.modules, config.lora_rank, config.lora_alpha, config.seed)
          if fresh else nullcontext()):
        units = find_units(model, config.target, config.modules)
        engine = GradientEngine(model, units, dtype=dtype, progress=progress and distributed.is_main())
        values, storage = _unit_influence(engine, train_b, val_b, config,
                                          _groups(units, config.unit), names, len(train))
    info = {"storage": storage, "passes": engine.passes, "fresh_lora": fresh,
            "n_train_tokens": n_tokens}
    if names is not None:
        info["shared_with"] = list(names)
    results = {m: _result(model, units, values[m], train, val,
                          config.replace(method=m) if names else config, task, dict(info))
               for m in values}
    return results if names is not None else results[config.method]


def _result(model, units, values: Tensor, train, val, config: ScoreConfig, task, info: dict):
    """A :class:`LayerScores` for one method's per-unit influence matrix."""
    blocks = pd.Series({i: p for i, (p, _) in enumerate(transformer_blocks(model))},
                       name="path").rename_axis("layer")
    return LayerScores(values=values.detach().to("cpu", torch.float64), units=units_table(units),
                       train_ids=_ids(train), val_ids=_ids(val), config=config,
                       model_id=_model_id(model), task=task, blocks=blocks, info=info,
                       model_dtype=store.identity_dtype(next(model.parameters()).dtype))
