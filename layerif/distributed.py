"""Data parallelism over ``torch.distributed``: the one module that talks to the process group.

Launch with ``torchrun --nproc-per-node N ...`` (or initialise a process group yourself); the
rest of layerif calls the helpers below, which are no-ops in a single process:

* :func:`shard` gives each rank a contiguous slice of the examples (balanced: the first
  ``n % N`` ranks get one more; a rank can get none) and :func:`shard_bounds` its range;
* :func:`all_reduce_sum` adds a tensor over the ranks (sums over examples);
* :func:`gather_cat` concatenates each rank's per-example rows in rank order, which is the
  original example order for :func:`shard`'s slices; :func:`all_gather_objects` does the
  same for Python objects;
* :func:`broadcast_object` hands rank 0's value to everyone (decisions all must share).

Collectives run on the backend's device (CUDA for NCCL, the CPU for gloo); tensors are moved
there and back. :func:`init_from_env` starts a process group from torchrun's environment.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ._config import check

__all__ = ["all_gather_objects", "all_reduce_sum", "barrier", "broadcast_object", "close",
           "gather_cat", "init_from_env", "is_distributed", "is_main", "rank", "shard",
           "shard_bounds", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _this_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return _this_rank()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes and prints."""
    return _this_rank() == 0


def shard_bounds(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s contiguous slice of ``n`` items (default: this
    process). The first ``n % world`` ranks get ``n // world + 1`` items, the others
    ``n // world``; ranks past ``n`` get an empty slice."""
    world = world_size() if world is None else world
    rank = _this_rank() if rank is None else rank
    check(isinstance(n, int) and n >= 0, "n", n, "an int >= 0")
    check(isinstance(world, int) and world >= 1, "world", world, "an int >= 1")
    check(isinstance(rank, int) and 0 <= rank < world, "rank", rank, f"an int in [0, {world})")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(seq: Sequence | Tensor, rank: int | None = None, world: int | None = None):
    """This rank's contiguous slice of ``seq`` (a list, range or tensor's rows), see
    :func:`shard_bounds`; the whole of ``seq`` in a single process."""
    start, stop = shard_bounds(len(seq), rank, world)
    return seq[start:stop]


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all ranks, on ``tensor``'s device and dtype.

    Every rank must call it with the same shape and dtype. ``tensor`` is summed in place when
    it already lives on the backend's device; use the returned tensor.
    """
    if not is_distributed():
        return tensor
    comm = tensor.to(_comm_device())
    dist.all_reduce(comm, op=dist.ReduceOp.SUM)
    return comm.to(tensor.device)


def gather_cat(tensor: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (on every rank).

    The sizes along ``dim`` may differ between ranks (uneven shards, or 0); the other
    dimensions and the dtype must agree.
    """
    if not is_distributed():
        return tensor
    device, moved = tensor.device, tensor.movedim(dim, 0).contiguous().to(_comm_device())
    sizes = torch.zeros(world_size(), dtype=torch.long, device=moved.device)
    sizes[_this_rank()] = moved.shape[0]
    sizes = all_reduce_sum(sizes).tolist()
    padded = moved.new_zeros((max(sizes), *moved.shape[1:]))
    padded[:moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return whole.movedim(0, dim).to(device)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (the argument of the other ranks is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Start the default process group from torchrun's environment, if it asks for one.

    With ``WORLD_SIZE > 1`` in the environment and no process group yet: pick the backend
    (NCCL when CUDA is available, else gloo, unless ``backend`` says), make
    ``cuda:LOCAL_RANK`` this process's current CUDA device, and initialise.

    Returns:
        True when this call started a process group (close it with :func:`close`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    check(dist.is_available(), "torch.distributed", "unavailable", "a torch build with "
          "distributed support for WORLD_SIZE > 1")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    check(backend in ("nccl", "gloo"), "backend", backend, "'nccl', 'gloo' or None")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def close() -> None:
    """Destroy the default process group (nothing without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
