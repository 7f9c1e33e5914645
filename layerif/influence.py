"""Influence of training examples on a validation loss, from per-example gradient stacks.

Pure maths: torch only. Inputs are lists with one entry per *unit* -- a parameter tensor
(or a group of tensors), i.e. one diagonal block of DataInf's block-diagonal Hessian:

* ``train[u]``: ``Tensor[n, d_u]``, the gradient of each training example's loss;
* ``val[u]``: ``Tensor[m, d_u]``, validation-example gradients, summed over the m rows
  inside (influence is linear in the validation gradient, so this equals summing the
  influences on each validation example).

Every function returns ``Tensor[n_units, n]``.

Sign convention (DataInf's; the only one used in layerif): the value is
``-<H^-1 v, g_k>``, the first-order change of the *summed validation loss* when training
example ``k`` is up-weighted. **Positive = harmful** (up-weighting raises the validation
loss); negative = helpful. ``layerif.scores`` documents how the paper's "+ve" aggregation
(the helpful examples, values <= 0) maps onto it.

Scale: ``v`` is the *sum* of the m validation gradients, so every value here is m times the
one DataInf's reference ``IFEngine`` returns (it averages them); rankings are unchanged.

DataInf, per unit, with ``g_i`` the training gradients and ``v`` the validation gradient::

    lambda = damping * mean_i mean(g_i ** 2)
    h(v)   = 1/(n lambda) * sum_i [ v - <v, g_i> / (lambda + |g_i|^2) * g_i ]
           = (v - w / n) / lambda,        w = sum_i c_i g_i,  c_i = <v, g_i> / (lambda + |g_i|^2)
    IF_k   = -<h(v), g_k> = -(<v, g_k> - <w, g_k> / n) / lambda

The second form needs only scalar products, which is what lets ``layerif.gradients`` stream
full-weight gradients instead of storing them (:func:`datainf_terms`,
:func:`datainf_from_dots`). A unit whose training gradients
are all zero has ``lambda = 0``; its influence is defined as 0 (the loss does not depend on
it to first order).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "datainf",
    "datainf_from_dots",
    "datainf_terms",
    "exact",
    "hessian_free",
]


def _check_stacks(train: list[Tensor], val: list[Tensor]) -> int:
    """Validate gradient stacks; return n (training examples)."""
    if not isinstance(train, (list, tuple)) or not isinstance(val, (list, tuple)):
        raise ValueError(f"train and val must be lists of tensors, got {type(train).__name__} "
                         f"and {type(val).__name__}")
    if len(train) == 0:
        raise ValueError("train=[] is invalid: expected at least one unit")
    if len(train) != len(val):
        raise ValueError(f"len(train)={len(train)} != len(val)={len(val)}: expected one "
                         "validation stack per training stack")
    n = None
    for u, (g, v) in enumerate(zip(train, val)):
        for name, t in (("train", g), ("val", v)):
            if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
                raise ValueError(f"{name}[{u}] is invalid: expected a 2-D floating tensor "
                                 f"[examples, d], got {getattr(t, 'shape', type(t))}")
            if t.shape[0] == 0 or t.shape[1] == 0:
                raise ValueError(f"{name}[{u}] has shape {tuple(t.shape)}: empty stack")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}[{u}] holds NaN or inf gradients")
        if g.shape[1] != v.shape[1]:
            raise ValueError(f"unit {u}: train has d={g.shape[1]} but val has d={v.shape[1]}")
        if n is None:
            n = g.shape[0]
        elif g.shape[0] != n:
            raise ValueError(f"train[{u}] has {g.shape[0]} examples, train[0] has {n}")
    return n


def _check_damping(damping: float) -> None:
    if not isinstance(damping, (int, float)) or not damping > 0 or damping == float("inf"):
        raise ValueError(f"damping={damping!r} is invalid: expected a finite float > 0")


def _check_groups(groups, n_units: int) -> list[list[int]]:
    if groups is None:
        return [[u] for u in range(n_units)]
    flat = sorted(u for g in groups for u in g)
    if flat != list(range(n_units)) or any(len(g) == 0 for g in groups):
        raise ValueError(f"groups={groups!r} is invalid: expected non-empty lists that "
                         f"partition the unit indices 0..{n_units - 1}")
    return [list(g) for g in groups]


def datainf_terms(sq_norms: Tensor, v_dots: Tensor, numel, damping: float = 0.1,
                  groups: list[list[int]] | None = None) -> tuple[Tensor, Tensor]:
    """DataInf's damping ``lambda`` and Sherman--Morrison weights ``c`` from scalars.

    ``lambda = damping * mean_i |g_i|^2 / d`` and ``c_i = <v, g_i> / (lambda + |g_i|^2)``,
    where a group of units forms one Hessian block (norms, dots and sizes add up).

    Args:
        sq_norms: ``Tensor[n_units, n]``, ``|g_iu|^2``.
        v_dots: ``Tensor[n_units, n]``, ``<v_u, g_iu>``.
        numel: parameter count of each unit (sequence or tensor of length n_units).
        damping: the multiplier (DataInf uses 0.1).
        groups: units sharing one Hessian block (default: each unit alone).

    Returns:
        ``(lam, coef)``: ``Tensor[n_units]`` and ``Tensor[n_units, n]``, each unit carrying
        its group's values. ``coef`` is 0 where the group's gradients are all zero.
    """
    _check_damping(damping)
    groups = _check_groups(groups, sq_norms.shape[0])
    numel = torch.as_tensor(numel, dtype=sq_norms.dtype, device=sq_norms.device)
    lam = torch.empty(sq_norms.shape[0], dtype=sq_norms.dtype, device=sq_norms.device)
    coef = torch.empty_like(sq_norms)
    for g in groups:
        sq, vd = sq_norms[g].sum(dim=0), v_dots[g].sum(dim=0)
        lam_g = damping * sq.mean() / numel[g].sum()
        denom = lam_g + sq
        lam[g] = lam_g
        coef[g] = torch.where(denom > 0, vd / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)
    return lam, coef


def datainf_from_dots(v_dots: Tensor, w_dots: Tensor, lam: Tensor) -> Tensor:
    """Influence ``-(<v, g_k> - <w, g_k>/n) / lambda`` from scalar products.

    Args:
        v_dots: ``Tensor[n_units, n]``, ``<v_u, g_ku>``.
        w_dots: ``Tensor[n_units, n]``, ``<w_u, g_ku>`` with ``w_u = sum_i c_iu g_iu``.
        lam: ``Tensor[n_units]``.

    Returns:
        ``Tensor[n_units, n]`` in the DataInf sign (positive = harmful).
    """
    n = v_dots.shape[1]
    out = -(v_dots - w_dots / n) / lam.clamp_min(torch.finfo(lam.dtype).tiny)[:, None]
    return torch.where(lam[:, None] > 0, out, 0.0)


def datainf(train: list[Tensor], val: list[Tensor], damping: float = 0.1,
            groups: list[list[int]] | None = None) -> Tensor:
    """DataInf influence (Kwon et al., 2024), one Sherman--Morrison average per unit.

    Args:
        train: per unit, ``Tensor[n, d_u]`` training-example gradients.
        val: per unit, ``Tensor[m, d_u]`` validation gradients (summed inside).
        damping: ``lambda = damping * mean_i mean(g_i^2)`` per Hessian block.
        groups: units that form one Hessian block together (e.g. all tensors of a
            transformer block); default: every unit is its own block, as in DataInf.

    Returns:
        ``Tensor[n_units, n]``, DataInf sign (positive = harmful). With groups, row ``u``
        is unit u's share ``-<h_u, g_ku>``; a group's influence is the sum of its rows.

    Raises:
        ValueError: empty or mismatched stacks, non-finite gradients, bad damping/groups.
    """
    _check_stacks(train, val)
    v = [vs.sum(dim=0) for vs in val]
    sq = torch.stack([(g * g).sum(dim=1) for g in train])
    v_dots = torch.stack([g @ vu for g, vu in zip(train, v)])
    lam, coef = datainf_terms(sq, v_dots, [g.shape[1] for g in train], damping, groups)
    w_dots = torch.stack([g @ (c @ g) for g, c in zip(train, coef)])
    return datainf_from_dots(v_dots, w_dots, lam)


def hessian_free(train: list[Tensor], val: list[Tensor]) -> Tensor:
    """Hessian-free (TracIn-style) influence ``-<v, g_k>`` per unit.

    Args:
        train: per unit, ``Tensor[n, d_u]``.
        val: per unit, ``Tensor[m, d_u]`` (summed inside).

    Returns:
        ``Tensor[n_units, n]``, DataInf sign.
    """
    _check_stacks(train, val)
    return torch.stack([-(g @ vs.sum(dim=0)) for g, vs in zip(train, val)])


def exact(train: list[Tensor], val: list[Tensor], damping: float = 0.1,
          groups: list[list[int]] | None = None, max_dim: int = 8192) -> Tensor:
    """Influence with the exact damped empirical Fisher of each Hessian block.

    ``-<(G + lambda I)^-1 v, g_k>`` with ``G = (1/n) sum_i g_i g_i^T`` and the same
    ``lambda`` as :func:`datainf`. Solved densely in ``d`` dimensions when ``d <= n``,
    otherwise in ``n`` dimensions through the push-through identity
    ``G (lambda I + G^T G / n)^-1 = n (n lambda I + G G^T)^-1 G`` (stacked ``G``), a solve
    with ``M = n lambda I + G G^T`` in which nothing is subtracted from ``v``: no
    cancellation when ``|g|^2 / (n lambda)`` is large (1e5--1e6 for real gradients).

    The Grams, ``lambda`` and the solve run in **float64 whatever the inputs' dtype** (the
    Grams are formed chunk by chunk from the inputs, so float32 stacks are never upcast
    whole; a product of two float32 numbers is exact in float64). ``M`` is *not* well
    conditioned in general: nearly collinear training examples (near-duplicates, or the same
    text padded alike) make ``cond(M)`` approach ``|g|^2 / (n lambda)``, where a float32
    solve loses every digit (on SmolLM2 near-duplicates: 0.32 relative error, O(1) on some
    units); in float64 the error is ``1.1e-16 * cond(M)``.

    Args:
        train: per unit, ``Tensor[n, d_u]``.
        val: per unit, ``Tensor[m, d_u]`` (summed inside).
        damping: as in :func:`datainf`.
        groups: as in :func:`datainf`.
        max_dim: refuse blocks where ``min(n, d)`` exceeds this (the dense solve's size).

    Returns:
        ``Tensor[n_units, n]`` in float64, DataInf sign (per-unit shares when grouped). Each
        share is accurate relative to the shares' own scale; a group's total is their sum,
        and shares can exceed it by up to ``|g|^2 / (n lambda)`` (their ``v``-orthogonal
        parts cancel across units), so group totals need float64 inputs where that ratio is
        large.

    Raises:
        ValueError: a block too large for a dense solve, or the errors of :func:`datainf`.
    """
    n = _check_stacks(train, val)
    _check_damping(damping)
    out = torch.zeros(len(train), n, dtype=torch.float64, device=train[0].device)
    for group in _check_groups(groups, len(train)):
        g = [train[u] for u in group]
        v = [val[u].to(torch.float64).sum(dim=0) for u in group]
        d = sum(t.shape[1] for t in g)
        if min(n, d) > max_dim:
            raise ValueError(
                f"units {group} need a dense {min(n, d)}x{min(n, d)} solve (n={n}, d={d}), "
                f"over max_dim={max_dim}: use method='datainf' or fewer training examples")
        if d <= n:
            g = [t.to(torch.float64) for t in g]
            lam = float(damping * sum((t * t).sum() for t in g) / (n * d))
            if lam > 0.0:  # all-zero gradients: influence 0, as in datainf
                out[group] = _exact_primal(g, v, lam)
            continue
        grams, rhs = zip(*(_gram64(t, vu) for t, vu in zip(g, v)))
        lam = float(damping * sum(k.trace() for k in grams) / (n * d))
        if lam > 0.0:
            out[group] = _exact_dual(list(grams), list(rhs), lam)
    return out


def _gram64(t: Tensor, v: Tensor, elements: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """``(t t^T, t v)`` accumulated in float64 over column chunks of ``t`` (``[n, d]``), each
    chunk upcast on its own (at most ``elements`` float64 numbers at a time)."""
    n, d = t.shape
    step = max(1, elements // max(n, 1))
    gram = torch.zeros(n, n, dtype=torch.float64, device=t.device)
    dots = torch.zeros(n, dtype=torch.float64, device=t.device)
    for c in range(0, d, step):
        chunk = t[:, c:c + step].to(torch.float64)
        gram += chunk @ chunk.T
        dots += chunk @ v[c:c + step]
    return gram, dots


def _exact_primal(train: list[Tensor], val: list[Tensor], lam: float) -> Tensor:
    """Shares ``-<h_u, g_ku>``, ``h = (lam I + G^T G / n)^-1 v`` solved in d dimensions."""
    g, v = torch.cat(train, dim=1), torch.cat(val)
    n, d = g.shape
    eye = torch.eye(d, dtype=g.dtype, device=g.device)
    h = torch.cholesky_solve(v[:, None], torch.linalg.cholesky(g.T @ g / n + lam * eye))[:, 0]
    return torch.stack([-(t @ h_u) for t, h_u in zip(train, h.split([t.shape[1] for t in train]))])


def _exact_dual(grams: list[Tensor], rhs: list[Tensor], lam: float) -> Tensor:
    """The same shares from the units' ``n x n`` Grams ``K_u = G_u G_u^T`` and ``b_u = G_u v_u``
    (float64), with nothing subtracted from ``v``.

    With ``M = n lam I + sum_u K_u`` and ``x_u = M^-1 b_u``: ``h = (v - G^T x) / lam`` with
    ``x = sum_u x_u``, and since ``b_u = M x_u``, unit u's share ``-G_u h_u = -(b_u - K_u x)
    / lam`` equals

        ``-(n x_u + (K_-u x_u - K_u x_-u) / lam)``,

    where ``K_-u`` and ``x_-u`` sum the group's *other* units. Every term vanishes with the
    other units, so a lone unit's influence is exactly ``-n M^-1 G v`` (one solve with
    ``M``, whose condition number is that of the Gram, not ``|g|^2 / (n lambda)``).
    """
    n = grams[0].shape[0]
    eye = torch.eye(n, dtype=grams[0].dtype, device=grams[0].device)
    x = torch.cholesky_solve(torch.stack(rhs, dim=1),
                             torch.linalg.cholesky(sum(grams) + n * lam * eye))
    shares = []
    for u, gram_u in enumerate(grams):
        share = n * x[:, u]
        others = [w for w in range(len(grams)) if w != u]
        if others:  # summed from the other units, never as a difference of totals
            gram_rest = sum(grams[w] for w in others)
            share = share + (gram_rest @ x[:, u] - gram_u @ x[:, others].sum(dim=1)) / lam
        shares.append(-share)
    return torch.stack(shares)
