"""Prune a whole model block by block, with per-block (or per-matrix) sparsity ratios.

The driver follows the sequential recipe of SparseGPT, Wanda and OWL:

1. run the model on the calibration tokens until the first transformer block and keep the
   block's inputs (hidden states) and whatever keyword arguments the model hands it
   (attention mask, position ids, rotary ``position_embeddings``, ...);
2. for each block in depth order: run it with hooks on its linear modules to collect
   input statistics, prune every linear module, and run it again so that the *pruned*
   block's outputs become the next block's inputs.

Only hidden states travel between blocks, so memory grows with
``n_samples x seq_len x hidden`` and never with the model's context length. Blocks are found
with :func:`layerif.models.transformer_blocks` and linear modules with
:func:`layerif.models.linear_modules`, so nothing here is Llama-specific.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from .._config import check_finite
from ..models import check_finite_parameters, eval_mode, linear_modules, transformer_blocks
from ..models import linear_weight
from .config import METHODS, PruneConfig
from .magnitude import magnitude
from .ratios import matrix_paths, matrix_ratios
from .sparsegpt import sparsegpt
from .wanda import wanda

__all__ = ["METHODS", "capture_block_inputs", "walk_blocks", "prune_model", "sparsity_report"]

_STATS = {"magnitude": None, "wanda": "act_sq_norm", "sparsegpt": "hessian"}


class _ReachedFirstBlock(Exception):
    """Raised by the capture hook: nothing after the first block's inputs is needed."""


# ----------------------------------------------------------------------------- helpers
def check_calibration(calibration) -> torch.Tensor:
    """Raise ValueError unless ``calibration`` is a non-empty ``[n_samples, seq_len]`` id tensor."""
    if calibration is None:
        raise ValueError("calibration=None is invalid: expected a LongTensor [n_samples, seq_len] of token ids")
    if (not isinstance(calibration, torch.Tensor) or calibration.dim() != 2
            or calibration.is_floating_point() or calibration.dtype == torch.bool):
        what = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise ValueError(f"calibration of shape {what} is invalid: expected an integer tensor [n_samples, seq_len]")
    if calibration.numel() == 0:
        raise ValueError(f"calibration of shape {tuple(calibration.shape)} is empty: expected at least one token")
    return calibration


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class _BlockInputs:
    """The first block's inputs for each calibration batch, plus the extra arguments.

    The extra positional/keyword arguments depend only on the batch shape (calibration rows
    are unpadded), so one copy per batch size is kept rather than one per batch.
    """

    def __init__(self):
        self.hidden: list[torch.Tensor] = []
        self.extra: dict[int, tuple[tuple, dict]] = {}

    def args(self, i: int, device: torch.device) -> tuple[torch.Tensor, tuple, dict]:
        h = self.hidden[i]
        args, kwargs = self.extra[h.shape[0]]
        return h.to(device), _to(args, device), _to(kwargs, device)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> _BlockInputs:
    """Run ``model`` on ``calibration`` up to its first transformer block and keep its inputs.

    Args:
        model: a causal LM (any architecture :func:`transformer_blocks` understands).
        calibration: ``[n_samples, seq_len]`` token ids, unpadded.
        batch_size: sequences per forward pass.

    Returns:
        The captured hidden states (one tensor per batch) and the keyword arguments the
        model passes to its blocks (the KV cache is disabled).

    Raises:
        ValueError: empty or malformed ``calibration``.
        RuntimeError: the forward pass never reached the first block.
    """
    calibration = check_calibration(calibration)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive int")
    first = transformer_blocks(model)[0][1]
    store = _BlockInputs()

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        store.hidden.append(hidden.detach())
        if hidden.shape[0] not in store.extra:
            store.extra[hidden.shape[0]] = (tuple(args), kwargs)
        raise _ReachedFirstBlock

    device = _device_of(model)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, calibration.shape[0], batch_size):
            batch = calibration[start:start + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _ReachedFirstBlock:
                continue
            raise RuntimeError(f"the forward pass of {type(model).__name__} never reached its first block")
    finally:
        handle.remove()
    return store


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _run_block(block: nn.Module, inputs: _BlockInputs) -> None:
    device = _device_of(block)
    for i in range(len(inputs.hidden)):
        h, args, kwargs = inputs.args(i, device)
        inputs.hidden[i] = _block_output(block(h, *args, **kwargs)).detach()


def _reduce_stats(linears, sums: dict[str, torch.Tensor], n_seq: int, kind: str,
                  device) -> tuple[dict[str, torch.Tensor], int]:
    """The sums of every rank added up, one collective per linear module in block order
    (zeros where this rank saw no calibration rows; q/k/v's shared tensor copied first)."""
    local, seen = {}, set()
    for name, module in linears:
        stat = sums.get(name)
        if stat is None:
            d_in, dtype = linear_weight(module).shape[1], torch.promote_types(module.weight.dtype, torch.float32)
            stat = torch.zeros((d_in,) if kind == "act_sq_norm" else (d_in, d_in), dtype=dtype, device=device)
        local[name] = stat.clone() if id(stat) in seen else stat
        seen.add(id(stat))
    out = {name: distributed.all_reduce_sum(stat) for name, stat in local.items()}
    return out, int(distributed.all_reduce_sum(torch.tensor([n_seq])).item())


@torch.no_grad()
def _collect_stats(block: nn.Module, linears, inputs: _BlockInputs, kind: str) -> dict[str, torch.Tensor]:
    """Per linear module: mean over sequences of sum_tokens x^2 (``act_sq_norm``) or 2 X X^T;
    in a process group, over the calibration rows of every rank."""
    sums: dict[str, torch.Tensor] = {}
    n_seq = 0
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(name):
        def hook(module, args, output):
            x = args[0]
            # q/k/v (and gate/up) read the same tensor: compute its statistic once per pass.
            hit = cache.get(id(x))
            if hit is None or hit[0] is not x:
                # float32 at least (bf16 sums of squares lose the small features).
                x2 = x.detach().reshape(-1, x.shape[-1])
                x2 = x2.to(torch.promote_types(x2.dtype, torch.float32))
                stat = (x2 * x2).sum(0) if kind == "act_sq_norm" else x2.T @ x2
                cache[id(x)] = hit = (x, stat)
            sums[name] = hit[1] if name not in sums else sums[name] + hit[1]
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in linears]
    device = _device_of(block)
    try:
        for i in range(len(inputs.hidden)):
            h, args, kwargs = inputs.args(i, device)
            block(h, *args, **kwargs)
            n_seq += h.shape[0]
            cache.clear()
    finally:
        for handle in handles:
            handle.remove()
    if distributed.is_distributed():
        sums, n_seq = _reduce_stats(linears, sums, n_seq, kind, device)
    scale = 2.0 / n_seq if kind == "hessian" else 1.0 / n_seq
    return {name: s * scale for name, s in sums.items()}


def _check_stats(path: str, stats: dict[str, torch.Tensor], kind: str) -> None:
    """Refuse non-finite calibration statistics, naming the module whose inputs they are."""
    for name, stat in stats.items():
        check_finite(stat, f"{path}.{name}", f"calibration statistics ({kind} of its inputs)")


def walk_blocks(
    model: nn.Module,
    calibration: torch.Tensor,
    stats: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[tuple[int, str, nn.Module, dict[str, torch.Tensor]]]:
    """Visit the blocks in depth order, feeding each block's (possibly modified) outputs on.

    Whatever the caller does to a block before asking for the next one (pruning it) is
    reflected in the inputs of the next block. The model is put in eval mode meanwhile. In a
    process group each rank runs its shard of the calibration rows
    (:func:`layerif.distributed.shard`) and the statistics are summed over all ranks, so
    every rank sees the single-process statistics.

    Args:
        model: a causal LM.
        calibration: ``[n_samples, seq_len]`` token ids, unpadded.
        stats: the statistic collected for each linear module of the block on its current
            inputs: ``"act_sq_norm"`` (``[d_in]``, mean over sequences of the per-feature
            sum of squares over tokens, Wanda's ``||X_j||^2``), ``"hessian"``
            (``[d_in, d_in]``, ``2 X X^T / n_samples``, SparseGPT's), or None.
        batch_size: calibration sequences per forward pass.
        progress: show a progress bar over blocks.

    Yields:
        ``(layer, path, block, stats)``: block index, module path, the block, and
        ``{relative linear name: statistic}`` (empty when ``stats`` is None).

    Raises:
        ValueError: bad ``stats``, ``calibration`` or ``batch_size``.
        layerif._config.NonFiniteError: a block's statistics hold NaN or inf (named by the
            linear module whose inputs they are).
    """
    if stats not in (None, "act_sq_norm", "hessian"):
        raise ValueError(f"stats={stats!r} is invalid: expected None, 'act_sq_norm' or 'hessian'")
    blocks = transformer_blocks(model)
    local = distributed.shard(check_calibration(calibration))
    progress = progress and distributed.is_main()
    with eval_mode(model):
        inputs = capture_block_inputs(model, local, batch_size) if len(local) else _BlockInputs()
        for layer, (path, block) in enumerate(tqdm(blocks, desc="blocks", disable=not progress)):
            linears = linear_modules(block)
            found = _collect_stats(block, linears, inputs, stats) if stats else {}
            _check_stats(path, found, stats)
            yield layer, path, block, found
            del found
            if layer + 1 < len(blocks):
                _run_block(block, inputs)


def _check_config(config, settings: dict) -> None:
    """One-line errors for the keyword form ``prune_model`` no longer takes."""
    for name in settings:
        if name not in {f.name for f in dataclasses.fields(PruneConfig)}:
            raise TypeError(f"prune_model() got an unexpected keyword argument {name!r}")
        raise TypeError(f"prune_model({name}=...) is invalid: the pruning settings are the "
                        f"PruneConfig's: pass config.replace({name}=...) as config")
    if not isinstance(config, PruneConfig):
        named = isinstance(config, str) and config in METHODS
        hint = f" (e.g. PruneConfig(method={config!r}))" if named else ""
        raise ValueError(f"config={config!r} is invalid: expected a PruneConfig{hint}")


# ----------------------------------------------------------------------------- driver
def prune_model(
    model: nn.Module,
    config: PruneConfig,
    sparsity: float | pd.Series | Mapping[int, float] | None = None,
    calibration: torch.Tensor | None = None,
    per_matrix: Mapping[str, float] | pd.Series | Sequence[float] | None = None,
    progress: bool = True,
    **settings,
) -> pd.DataFrame:
    """Prune every linear module of every transformer block of ``model`` in place.

    Args:
        model: a causal LM; its blocks are pruned sequentially (pruned outputs feed the next).
        config: the :class:`~layerif.prune.PruneConfig`: the pruner, its ``nm`` pattern,
            ``batch_size``, SparseGPT's ``blocksize`` and ``percdamp``, and ``ties``
            (``"exact"``: exactly ``int(numel * s)`` weights per matrix; ``"reference"``: the
            published code's threshold rule, magnitude and SparseGPT); with ``nm`` every
            ratio must equal ``n / m``.
        sparsity: one ratio for all blocks, or per-block ratios (a Series or mapping indexed
            by block index 0..L-1, e.g. from :mod:`layerif.allocate`); each block's linear
            modules get its ratio. ``None`` only when ``per_matrix`` gives every matrix.
        calibration: ``[config.n_samples, config.seq_len]`` token ids (unused, may be None,
            for magnitude); :func:`~layerif.prune.prune` draws it from the config.
        per_matrix: per-matrix ratios overriding the block ratios: a ``{module path: ratio}``
            mapping or Series (paths as in :func:`matrix_paths`, e.g.
            ``"model.layers.3.mlp.down_proj"``; only those modules), or a flat sequence with
            one ratio per linear matrix in depth order (:func:`matrix_paths`' order, the
            AlphaPruning/OWL layout of :func:`layerif.allocate.per_matrix`).
        progress: show a progress bar over blocks.
        settings: none; a setting passed as a keyword (the old ``nm=``, ``ties=``, ...
            form) is a TypeError naming it.

    Returns:
        :func:`sparsity_report` of the pruned model.

    Raises:
        TypeError: a setting passed as a keyword instead of in the config.
        ValueError: ``config`` not a PruneConfig, a ratio outside ``[0, 1)``, ratios for
            missing or unknown blocks, an unknown ``per_matrix`` key or a ``per_matrix``
            sequence of the wrong length, empty ``calibration`` or one of another shape
            than the config's.
        layerif._config.NonFiniteError: (a ValueError) a weight, calibration activation or
            statistic holds NaN or inf; the message names the module. Weights are checked
            before anything is pruned, statistics block by block.
    """
    _check_config(config, settings)
    method, nm = config.method, config.nm
    targets = matrix_ratios(model, sparsity, per_matrix, nm)
    check_finite_parameters(model)
    if config.needs_calibration:
        check_calibration(calibration)
        want = (config.n_samples, config.seq_len)
        if tuple(calibration.shape) != want:
            raise ValueError(
                f"calibration of shape {tuple(calibration.shape)} is invalid with the config's "
                f"n_samples={want[0]}, seq_len={want[1]}: draw it with those sizes (or "
                "config.replace(n_samples=..., seq_len=...))")

    def prune_block(path, block, stats):
        for name, module in linear_modules(block):
            ratio = targets[f"{path}.{name}"]
            W = linear_weight(module)
            if method == "magnitude":
                new = magnitude(W, ratio, nm, ties=config.ties)
            elif method == "wanda":
                new = wanda(W, stats[name], ratio, nm)
            else:
                new = sparsegpt(W, stats[name], ratio, nm, blocksize=config.blocksize,
                                percdamp=config.percdamp, ties=config.ties)
            check_finite(new, f"{path}.{name}", f"weights pruned by {method}")
            W.copy_(new)

    with torch.no_grad():
        if method == "magnitude":
            blocks = transformer_blocks(model)
            for path, block in tqdm(blocks, desc="blocks", disable=not progress):
                prune_block(path, block, {})
        else:
            walk = walk_blocks(model, calibration, _STATS[method], config.batch_size, progress)
            for _, path, block, stats in walk:
                prune_block(path, block, stats)
    return sparsity_report(model)


def sparsity_report(model: nn.Module) -> pd.DataFrame:
    """Achieved sparsity (fraction of exact zeros) per block and per linear module.

    Returns:
        A DataFrame indexed by block index (``layer``) with columns ``path`` (block module
        path), ``params`` and ``zeros`` (over the block's linear weights), ``sparsity``
        (their ratio), then one column per linear module (relative name, e.g.
        ``"self_attn.q_proj"``) holding that matrix's sparsity. The parameter-weighted global
        sparsity, ``zeros.sum() / params.sum()``, is also in ``report.attrs["global_sparsity"]``.
    """
    rows = []
    with torch.no_grad():
        for layer, (path, block) in enumerate(transformer_blocks(model)):
            row = {"layer": layer, "path": path, "params": 0, "zeros": 0}
            for name, module in linear_modules(block):
                n, z = module.weight.numel(), int((module.weight == 0).sum())
                row["params"] += n
                row["zeros"] += z
                row[name] = z / n
            rows.append(row)
    report = pd.DataFrame(rows).set_index("layer")
    report.insert(3, "sparsity", report["zeros"] / report["params"])
    report.attrs["global_sparsity"] = float(report["zeros"].sum() / report["params"].sum())
    return report
