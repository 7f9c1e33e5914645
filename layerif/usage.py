"""Which stored results a run read or computed, and what computing each of them cost.

:func:`layerif.store.load_if_matching` (every load) and :func:`layerif.store.save` (every
computed result) call :func:`note`. When the environment variable :data:`LOG_ENV` names a
file, each call appends one JSON line to it: the result's folder, whether this run computed
it, and the seconds its manifest records (the ``extra`` entries whose key ends in
``seconds``: measured by the run that computed the result). Otherwise :func:`note` does
nothing. The notebook runner (:mod:`layerif.notebook_exec`) sets the variable around one
execution, so a run record knows its notebook's *cold cost*: what its results cost to
compute, whether this execution computed them or loaded them.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["LOG_ENV", "cold_cost", "manifest_seconds", "merge", "note", "read", "recording", "timed"]

#: The environment variable naming the file the results' uses are appended to.
LOG_ENV = "LAYERIF_RESULT_LOG"


_NESTED = contextvars.ContextVar("layerif_usage_nested", default=None)


def timed(compute: Callable[[], Any]) -> tuple[Any, float]:
    """``(compute(), its own seconds)``: the wall time of ``compute`` less that of the timed
    computations it ran inside (a result computed while computing another is counted once,
    by itself, so the seconds of all results add up to the time spent)."""
    token = _NESTED.set([0.0])
    start = time.perf_counter()
    try:
        value = compute()
    finally:
        inner = _NESTED.get()[0]
        _NESTED.reset(token)
    elapsed = time.perf_counter() - start
    outer = _NESTED.get()
    if outer is not None:
        outer[0] += elapsed
    return value, max(elapsed - inner, 0.0)


def manifest_seconds(manifest: dict) -> float | None:
    """The compute seconds a manifest records (its ``extra`` entries named ``*seconds``,
    summed), or None when it records none."""
    extra = manifest.get("extra") or {}
    secs = [float(v) for k, v in extra.items() if str(k).endswith("seconds") and v is not None]
    return sum(secs) if secs else None


def note(directory: str | Path, manifest: dict, computed: bool) -> None:
    """Append one use of the result in ``directory`` to the :data:`LOG_ENV` file, if set."""
    target = os.environ.get(LOG_ENV)
    if not target:
        return
    line = {"path": str(Path(directory).resolve()), "computed": bool(computed),
            "seconds": manifest_seconds(manifest)}
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


@contextlib.contextmanager
def recording(path: str | Path) -> Iterator[Path]:
    """Within the block (and in processes started inside it), uses are appended to ``path``
    (emptied first); the variable is restored on exit."""
    path = Path(path)
    path.write_text("")
    old = os.environ.get(LOG_ENV)
    os.environ[LOG_ENV] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(LOG_ENV, None)
        else:
            os.environ[LOG_ENV] = old


def merge(uses: Iterable[tuple[str, dict]]) -> dict[str, dict]:
    """One entry per folder from ``(folder, {"seconds", "computed"})`` uses, in folder order:
    ``computed`` when any use computed it, ``seconds`` the last recorded (None when none
    recorded any). The one rule for a log's lines (:func:`read`) and for several runs' records
    (notebook 10's book total)."""
    out: dict[str, dict] = {}
    for where, use in uses:
        entry = out.setdefault(str(where), {"seconds": None, "computed": False})
        entry["computed"] |= bool(use.get("computed"))
        if use.get("seconds") is not None:
            entry["seconds"] = use["seconds"]
    return dict(sorted(out.items()))


def read(path: str | Path, root: str | Path | None = None) -> dict[str, dict]:
    """The results used, one entry per folder (relative to ``root`` when under it): its
    ``seconds`` (None when its manifest records none) and ``computed`` (by any of its uses)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    base = None if root is None else Path(root).resolve()

    def where(use: dict) -> Path:
        found = Path(use["path"])
        return found.relative_to(base) if base is not None and found.is_relative_to(base) else found

    return merge((where(use), use) for use in map(json.loads, filter(None, lines)))


def cold_cost(results: dict[str, dict]) -> dict:
    """A summary of :func:`read`'s entries: ``cold_s`` (their recorded seconds summed),
    ``results``, ``computed`` and ``untimed`` (how many record no seconds: the cold cost is
    a lower bound when this is not 0)."""
    secs = [e["seconds"] for e in results.values() if e["seconds"] is not None]
    return {"cold_s": round(sum(secs), 1), "results": len(results),
            "computed": sum(e["computed"] for e in results.values()),
            "untimed": len(results) - len(secs)}
