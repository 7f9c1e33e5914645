"""The reproduction table: how, when and from what each notebook of a profile was executed.

Read from the run records inside the executed notebooks (:mod:`layerif.notebook_record`) and
from :func:`layerif.study.status`, which says whether each is still current. Nothing here
executes a notebook.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import notebook_record, study

__all__ = ["COLUMNS", "params_text", "reproduction_table", "total_wall_time"]

COLUMNS = ["state", "profile", "params", "started", "wall_min", "commit", "dirty",
           "layerif_version", "machine", "message"]


def params_text(params: dict) -> str:
    """A notebook's parameters as one line of compact JSON, without ``profile``."""
    shown = {k: v for k, v in params.items() if k != "profile"}
    return json.dumps(notebook_record.normalise(shown), separators=(", ", ": "))


def _machine(record: dict) -> str:
    host = record.get("host") or {}
    text = f"{host.get('cpus_usable', '?')} CPUs"
    if host.get("torch_threads"):
        text += f", {host['torch_threads']} torch threads"
    if host.get("cuda_device"):
        text += f", {host['cuda_device']}"
    return text


def reproduction_table(profile: str = "cpu", root: str | Path | None = None) -> pd.DataFrame:
    """One row per notebook (index: name, in run order) for ``profile``.

    Columns: ``state`` (``current`` | ``stale`` | ``missing`` | ``failed``, from
    :func:`layerif.study.status`), ``profile``, ``params`` (the recorded parameters; the
    profile's file when never executed), ``started`` (UTC), ``wall_min`` (wall time in
    minutes), ``commit`` (12 digits), ``dirty`` (uncommitted changes at the time), the
    ``layerif_version``, the ``machine`` and ``message`` (what to run when not current).
    """
    states = study.status(profile, root)
    rows = {}
    for name, st in states.iterrows():
        record = notebook_record.read_record(st["path"]) or {}
        params = record.get("params") or study.load_params(name, profile, root)
        wall = record.get("wall_s")
        rows[name] = {"state": st["state"], "profile": record.get("profile", profile),
                      "params": params_text(params), "started": record.get("started"),
                      "wall_min": np.nan if wall is None else round(wall / 60, 1),
                      "commit": (record.get("commit") or "")[:12] or None,
                      "dirty": record.get("dirty"), "layerif_version": record.get("layerif_version"),
                      "machine": _machine(record) if record else None,
                      "message": st["message"]}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=COLUMNS)
    out.index.name = "notebook"
    return out


def total_wall_time(table: pd.DataFrame) -> dict:
    """Sum of the recorded wall times of a :func:`reproduction_table`: ``minutes`` (recorded
    notebooks only), ``recorded`` and ``notebooks`` (counts), and the ``machines`` seen."""
    recorded = table["wall_min"].notna()
    return {"minutes": float(table.loc[recorded, "wall_min"].sum()), "recorded": int(recorded.sum()),
            "notebooks": len(table), "machines": sorted(set(table["machine"].dropna()))}
