"""Seeded random work that leaves the caller's random state alone.

Library code never moves torch's global generators: a seeded initialisation, a training run's
dropout draws or a benchmark's random weights run inside :func:`seeded`, which forks the
generators, seeds them and restores the caller's states on exit.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device | None = None) -> Iterator[None]:
    """Within the block torch's CPU generator (and ``device``'s, when it is a CUDA device) is
    seeded with ``seed``; on exit the states the caller had come back."""
    device = None if device is None else torch.device(device)
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
