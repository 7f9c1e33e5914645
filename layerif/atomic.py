"""Replace a folder atomically, one process at a time: the mechanics under the results store.

A new version of folder ``target`` is written into a hidden sibling (:func:`aside` with tag
``tmp``), then swapped in by two renames (the old folder aside first, tag ``old``, removed
after). :func:`lock` serialises the processes that replace one ``target`` (``fcntl.flock``
on the sibling ``.<name>.lock``), so a check made under it (e.g. the store's identity guard)
and the swap are one atomic step. :func:`recover` puts back a complete folder moved aside by
a process killed between the two renames and removes what dead processes left. POSIX only.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["aside", "lock", "recover", "swap"]


def aside(target: Path, tag: str) -> Path:
    """A fresh hidden sibling of ``target`` named after this process (``.<name>.<tag>-<pid>-<hex>``)."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, tag: str) -> list[Path]:
    """Hidden siblings of ``target`` with ``tag`` left by processes that are no longer alive."""
    found = []
    for p in target.parent.glob(f".{target.name}.{tag}-*"):
        pid = p.name.rsplit("-", 2)[-2]
        if not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            found.append(p)
    return found


def recover(target: Path, complete: Callable[[Path], bool], keep: Path | None = None) -> None:
    """Put back the newest ``complete`` folder moved aside by a replacement killed between its
    two renames (when ``target`` is missing), and remove every other leftover of dead ones
    (and of this process, except ``keep``: the folder it is writing)."""
    old = [p for p in _leftovers(target, "old") if complete(p)]
    if not target.exists() and old:
        max(old, key=lambda p: p.stat().st_mtime).rename(target)
    for p in _leftovers(target, "old") + _leftovers(target, "tmp"):
        if p != keep:
            shutil.rmtree(p, ignore_errors=True)


def swap(tmp: Path, target: Path) -> None:
    """Move the complete ``tmp`` to ``target``, the old folder aside first, removed after.
    Call it under :func:`lock`."""
    old = None
    if target.exists():
        old = aside(target, "old")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def lock(target: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (``flock`` on ``.<name>.lock`` beside it).

    The lock file is removed on release while still locked; a process that was waiting on
    the removed file sees that it no longer is the one at that path and locks anew, so at
    most one process at a time holds the lock of a path. A killed holder releases it (the
    kernel drops its ``flock``), leaving at most an unlocked file the next holder removes.
    """
    path = target.with_name(f".{target.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
