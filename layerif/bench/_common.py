"""Shared benchmark helpers."""
from __future__ import annotations

import os
import threading

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak memory during a ``with`` block: CUDA allocator peak, or sampled process RSS.

    Read ``.peak`` (bytes) after the block, and ``.start``: the allocated CUDA memory, or
    the process RSS, when the block began (``peak - start`` is what the block added).
    """

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak = 0
        self.start = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            proc = psutil.Process(os.getpid())
            self.start = self.peak = proc.memory_info().rss
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    self._stop.wait(self.interval)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a wall-clock reading is the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    """``(fn(), seconds, memory)``: ``fn`` timed between device syncs inside a
    :class:`PeakMemory`, which is returned for its ``peak`` and ``start``."""
    import time

    with PeakMemory(device) as memory:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return out, seconds, memory
