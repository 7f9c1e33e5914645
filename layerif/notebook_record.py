"""The record an executed notebook carries: what it was run from, and whether that is current.

A record is a JSON-ready dict stored in the executed notebook's ``metadata["layerif"]``.
Its *inputs* are the four things that decide a notebook's output:

* ``source_sha256`` — sha256 of the MyST source's bytes;
* ``profile`` — the parameter profile;
* ``params`` — the merged papermill parameters (JSON-normalised);
* ``needs`` — for every upstream notebook, the ``digest`` and ``run_id`` recorded in *its*
  executed notebook (so a change anywhere upstream, or a forced re-run there, changes this
  notebook's digest: the recursion through upstream's upstreams is carried by their digests).

``digest`` is the sha256 of the inputs' canonical JSON. Beside the inputs the record keeps
the facts of the execution: ``run_id`` (the UTC start time to the microsecond, unique per
execution), ``started``, ``wall_s``, ``layerif_version``, ``commit`` and ``dirty`` (the git
state of the study root, or ``None`` outside git) and ``host``.

Everything here is pure apart from :func:`make_record` (the git state, through
:func:`layerif.gitstate.git_state`) and :func:`host_summary`, which read the machine, and
:func:`write_atomic`, which writes one file.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat

from ._version import __version__
from . import usage
from .gitstate import OUTPUT_PATHS, git_state

__all__ = [
    "INPUT_KEYS",
    "OUTPUT_PATHS",
    "PROVENANCE_TAG",
    "changed_inputs",
    "digest",
    "host_summary",
    "make_inputs",
    "make_record",
    "normalise",
    "provenance_text",
    "read_record",
    "upstream_ref",
    "with_record",
    "write_atomic",
]

INPUT_KEYS = ("source_sha256", "profile", "params", "needs")
PROVENANCE_TAG = "layerif-provenance"


def normalise(value: Any) -> Any:
    """``value`` after a JSON round trip (what a notebook's metadata can hold)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def make_inputs(source: bytes, profile: str, params: dict, needs: dict[str, dict]) -> dict:
    """The inputs part of a record.

    Args:
        source: the notebook source's bytes.
        profile: the parameter profile.
        params: the merged papermill parameters.
        needs: upstream name -> :func:`upstream_ref` of its executed notebook.

    Returns:
        A JSON-ready dict with exactly the keys :data:`INPUT_KEYS`.
    """
    return {
        "source_sha256": hashlib.sha256(source).hexdigest(),
        "profile": profile,
        "params": normalise(params),
        "needs": normalise(needs),
    }


def digest(inputs: dict) -> str:
    """sha256 of the canonical JSON of the :data:`INPUT_KEYS` of ``inputs``."""
    canonical = json.dumps({k: inputs[k] for k in INPUT_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def changed_inputs(recorded: dict, current: dict) -> list[str]:
    """Which inputs differ between a record and the current inputs.

    Returns:
        ``[]`` when the digests agree; otherwise the changed keys among ``source``,
        ``profile``, ``params`` and ``upstream:<name>`` (one per upstream notebook added,
        removed, re-run or changed), in that order. A record without a digest gives
        ``["record"]``.
    """
    if "digest" not in recorded:
        return ["record"]
    if recorded["digest"] == digest(current):
        return []
    names = {"source_sha256": "source", "profile": "profile", "params": "params"}
    changed = [label for key, label in names.items() if recorded.get(key) != current[key]]
    old, new = recorded.get("needs") or {}, current["needs"]
    changed += [f"upstream:{n}" for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
    return changed or ["record"]


def read_record(path: str | Path) -> dict | None:
    """The record of the executed notebook at ``path``, or None (no file, or no record)."""
    path = Path(path)
    if not path.exists():
        return None
    record = nbformat.read(path, as_version=4).metadata.get("layerif")
    return dict(record) if isinstance(record, dict) and "digest" in record else None


def upstream_ref(record: dict | None) -> dict | None:
    """What a dependent records of an upstream record: its ``digest`` and ``run_id``."""
    if record is None:
        return None
    return {"digest": record["digest"], "run_id": record["run_id"]}


def host_summary() -> dict:
    """CPU count, usable CPUs, torch threads and CUDA device (when torch is already imported)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = {"cpu_count": os.cpu_count(), "cpus_usable": usable, "python": sys.version.split()[0]}
    torch = sys.modules.get("torch")
    if torch is not None:
        host["torch_threads"] = torch.get_num_threads()
        host["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return host


def make_record(inputs: dict, started: dt.datetime, wall_s: float, root: str | Path,
                source: str, results: dict | None = None) -> dict:
    """A full record: ``inputs`` plus their digest and the facts of this execution.

    Args:
        inputs: from :func:`make_inputs`.
        started: the execution's start (timezone-aware, UTC).
        wall_s: its wall time in seconds.
        root: the study root (for :func:`layerif.gitstate.git_state`).
        source: the source's path relative to ``root``, for the reader.
        results: the stored results the execution read or computed
            (:func:`layerif.usage.read`), kept with their summary ``cold``
            (:func:`layerif.usage.cold_cost`: what they cost to compute).
    """
    git = git_state(root) or {"commit": None, "dirty": None}
    return {
        **inputs,
        "digest": digest(inputs),
        "source": source,
        "run_id": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(float(wall_s), 3),
        "layerif_version": __version__,
        "commit": git["commit"],
        "dirty": git["dirty"],
        "host": host_summary(),
        **({} if results is None else {"cold": usage.cold_cost(results), "results": results}),
    }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def provenance_text(record: dict) -> str:
    """The one-paragraph provenance note shown under a notebook's title in the book."""
    if record["commit"] is None:
        where = "outside a git checkout"
    else:
        where = f"at commit `{record['commit'][:7]}`"
        if record["dirty"]:
            where += " with uncommitted changes"
    host = record["host"]
    machine = f"a {host['cpus_usable']}-core CPU"
    if host.get("cuda_device"):
        machine += f" with {host['cuda_device']}"
    text = (f"Executed with the `{record['profile']}` profile {where} "
            f"(layerif {record['layerif_version']}) on {record['started'][:10]}; "
            f"wall time {_duration(record['wall_s'])} on {machine}.")
    if record["needs"]:
        upstream = ", ".join(f"`{n}` (run {ref['run_id'][:16].replace('T', ' ')} UTC)"
                             for n, ref in sorted(record["needs"].items()))
        text += f" It reads the saved results of {upstream}."
    return text


def with_record(nb: nbformat.NotebookNode, record: dict) -> nbformat.NotebookNode:
    """``nb`` with ``record`` in its metadata and the provenance note after its first cell.

    Any provenance cell already present (tagged :data:`PROVENANCE_TAG`) is replaced, so the
    note appears exactly once however often this is applied.
    """
    cells = [c for c in nb.cells if PROVENANCE_TAG not in c.get("metadata", {}).get("tags", [])]
    note = nbformat.v4.new_markdown_cell(provenance_text(record),
                                         metadata={"tags": [PROVENANCE_TAG]})
    note["id"] = PROVENANCE_TAG
    nb.cells = cells[:1] + [note] + cells[1:]
    nb.metadata["layerif"] = record
    return nb


def write_atomic(nb: nbformat.NotebookNode, target: str | Path) -> Path:
    """Write ``nb`` to ``target`` through a temporary file in the same folder and a rename.

    A reader sees either the previous file or the complete new one, never a partial write;
    the temporary file is removed if writing fails.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)   # mkstemp's 0600 would make the executed notebook private
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
