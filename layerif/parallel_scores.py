"""The data-parallel path of :func:`layerif.layer_scores`, over :mod:`layerif.distributed`.

Each rank holds a contiguous shard of the training and of the validation examples
(:func:`layerif.distributed.shard`; a rank may hold none) and every quantity the influence
maths sums over examples is combined across ranks, so that every rank ends with the
single-process numbers (up to the order of floating-point sums):

* the validation gradient ``v = sum_j g_j``: all-reduced;
* the per-example scalars ``|g_i|^2`` and ``<v, g_i>``: gathered in example order, so
  DataInf's ``lambda`` (their mean) and the Sherman--Morrison weights ``c_i`` are computed
  whole on every rank (:func:`layerif.influence.datainf_terms`);
* ``w = sum_i c_i g_i``: each rank sums its own examples, then all-reduced;
* ``<w, g_k>``: gathered, and :func:`layerif.influence.datainf_from_dots` finishes.

With ``storage="memory"`` the scalars come from the rank's per-example gradients (one
training pass), streamed from gradient passes otherwise (three for DataInf, as in one
process). ``exact`` needs every gradient in one place: each rank gathers the whole stacks
(the memory of a single process) and solves as one process would.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import distributed, influence
from .gradients import Batches, GradientEngine, encode

__all__ = ["encode_shard", "unit_influence"]


def encode_shard(tokenizer, examples: list, **kw) -> tuple[Batches, int]:
    """This rank's shard of ``examples`` as :class:`~layerif.gradients.Batches` (empty when
    the rank has none) and the number of loss tokens of *all* the examples.

    All the examples are encoded on every rank first, so a bad example raises the same
    error everywhere instead of leaving the other ranks waiting in a collective.
    """
    whole = encode(tokenizer, examples, **kw)
    if not distributed.is_distributed():
        return whole, whole.n_tokens
    mine = distributed.shard(examples)
    local = encode(tokenizer, mine, **kw) if mine else Batches([], 0, 0)
    return local, whole.n_tokens


class _Stacks:
    """Norms, dots and weighted sums from in-memory per-example gradients ``[n, d_u]``."""

    def __init__(self, stacks: list[Tensor], device):
        self.stacks, self.device = stacks, device

    def norms_and_dots(self, vectors, norms: bool = True):
        sq = torch.stack([(g * g).sum(dim=1) for g in self.stacks]).to(self.device) if norms else None
        dots = torch.stack([g @ v.to(g.device, g.dtype) for g, v in zip(self.stacks, vectors)])
        return sq, dots.to(self.device)

    def weighted_sum(self, coef: Tensor) -> list[Tensor]:
        return [c.to(g.device, g.dtype) @ g for g, c in zip(self.stacks, coef)]


class _Passes:
    """The same three operations as gradient passes over the rank's batches."""

    def __init__(self, engine: GradientEngine, batches: Batches):
        self.engine, self.batches = engine, batches

    def norms_and_dots(self, vectors, norms: bool = True):
        return self.engine.norms_and_dots(self.batches, vectors, norms=norms)

    def weighted_sum(self, coef: Tensor) -> list[Tensor]:
        return self.engine.weighted_sum(self.batches, coef)


def _sum_over_ranks(vectors: list[Tensor]) -> list[Tensor]:
    return [distributed.all_reduce_sum(v) for v in vectors]


def unit_influence(engine: GradientEngine, train: Batches, val: Batches, n_train: int,
                   storage: str, damping: float, groups: list[list[int]],
                   methods: tuple[str, ...]) -> dict[str, Tensor]:
    """Per-unit influence ``[n_units, n_train]`` of each method, the same on every rank.

    Args:
        engine: the gradient engine of this rank's model.
        train, val: this rank's shards (:func:`encode_shard`).
        n_train: the number of training examples over all ranks.
        storage: ``"memory"`` or ``"stream"`` (every rank must pass the same).
        damping, groups: as in :func:`layerif.influence.datainf`.
        methods: names from ``datainf``, ``hessian_free``, ``exact`` (exact needs memory).
    """
    v = _sum_over_ranks(engine.summed(val))
    if storage == "memory":
        stacks = [s.to(engine.device) for s in engine.per_example(train)]
        source = _Stacks(stacks, engine.device)
    else:
        stacks, source = None, _Passes(engine, train)
    want_datainf = "datainf" in methods
    sq, v_dots = source.norms_and_dots(v, norms=want_datainf)
    v_dots = distributed.gather_cat(v_dots, dim=1)
    out = {}
    if want_datainf:
        sq = distributed.gather_cat(sq, dim=1)
        lam, coef = influence.datainf_terms(sq, v_dots, [u.numel for u in engine.units],
                                            damping, groups)
        start, stop = distributed.shard_bounds(n_train)
        w = _sum_over_ranks(source.weighted_sum(coef[:, start:stop]))
        _, w_dots = source.norms_and_dots(w, norms=False)
        out["datainf"] = influence.datainf_from_dots(v_dots, distributed.gather_cat(w_dots, dim=1),
                                                     lam)
    if "hessian_free" in methods:
        out["hessian_free"] = -v_dots
    if "exact" in methods:
        whole = [distributed.gather_cat(s) for s in stacks]
        out["exact"] = influence.exact(whole, [x[None].to(engine.device) for x in v], damping,
                                       groups=groups)
    return {m: out[m] for m in methods}
