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

from .. import notebook_record, store, study, usage
from .prose import bullets

__all__ = ["COLUMNS", "RUNNING", "SHOWN", "cold_cost", "params_text", "reproduction_table", "shown",
           "total_wall_time", "totals", "used_results"]

#: The state of the notebook that shows the table (its own record is the previous execution's).
RUNNING = "this notebook (running)"
#: The columns :func:`shown` keeps (no parameters blob: each notebook's page shows its own).
SHOWN = ["state", "started", "wall_min", "cold_min", "results", "commit", "dirty", "layerif_version", "machine", "message"]

COLUMNS = ["state", "profile", "params", "started", "wall_min", "cold_min", "results", "commit", "dirty",
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


def reproduction_table(profile: str = "cpu", root: str | Path | None = None,
                       running: str | None = None) -> pd.DataFrame:
    """One row per notebook (index: name, in run order) for ``profile``.

    Columns: ``state`` (``current`` | ``stale`` | ``missing`` | ``failed``, from
    :func:`layerif.study.status`), ``profile``, ``params`` (the recorded parameters; the
    profile's file when never executed), ``started`` (UTC), ``wall_min`` (wall time in
    minutes), ``cold_min`` (what the results it read or computed cost to compute, from their
    recorded seconds: :mod:`layerif.usage`) and ``results`` (how many), ``commit`` (12
    digits), ``dirty`` (uncommitted changes at the time), the ``layerif_version``, the
    ``machine`` and ``message`` (what to run when not current).
    ``running``: the notebook showing the table; its row is :data:`RUNNING` with no record
    (what it would read is its own previous execution).
    """
    states = study.status(profile, root)
    rows = {}
    for name, st in states.iterrows():
        if name == running:
            st = st.copy()
            st["state"], st["message"] = RUNNING, ""
        record = (notebook_record.read_record(st["path"]) or {}) if name != running else {}
        params = record.get("params") or study.load_params(name, profile, root)
        wall, cold = record.get("wall_s"), record.get("cold")
        rows[name] = {"state": st["state"], "profile": record.get("profile", profile),
                      "params": params_text(params), "started": record.get("started"),
                      "wall_min": np.nan if wall is None else round(wall / 60, 1),
                      "cold_min": round(cold["cold_s"] / 60, 1) if cold else np.nan,
                      "results": cold["results"] if cold else np.nan,
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


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`reproduction_table` as notebook 10 shows it: :data:`SHOWN` columns."""
    return table[SHOWN]


def used_results(profile: str = "cpu", root: str | Path | None = None,
                 running: str | None = None) -> dict[str, dict]:
    """The stored results the notebooks' last executions read or computed (their records'
    ``results``, :mod:`layerif.usage`), each once: path relative to the study root ->
    ``{"seconds", "computed"}``. ``running``: a notebook whose record is left out (the one
    showing the table: its record on disk is its previous execution's, and what it re-reads
    is the other notebooks' results)."""
    records = (notebook_record.read_record(st["path"]) or {}
               for name, st in study.status(profile, root).iterrows() if name != running)
    return usage.merge(use for record in records for use in (record.get("results") or {}).items())


def cold_cost(profile: str = "cpu", root: str | Path | None = None,
              used: dict[str, dict] | None = None, running: str | None = None) -> pd.DataFrame:
    """The cold cost of the book: per kind of result (the folder under the profile's results)
    that the notebooks read (:func:`used_results`, each result once), how many there are, how
    many record their compute seconds (measured when the result was computed) and those
    seconds summed (minutes). Attribute ``attrs["unread"]``: stored results no notebook read
    (earlier parameters). ``running``: as in :func:`used_results`."""
    used = used_results(profile, root, running) if used is None else used
    base, top = store.results_dir(profile, root), Path("results", profile)  # used: root-relative
    rows = {}
    for path, entry in used.items():
        parts = Path(path).relative_to(top).parts if Path(path).is_relative_to(top) else ("other",)
        row = rows.setdefault(parts[0], {"results": 0, "with seconds": 0, "minutes": 0.0})
        row["results"] += 1
        row["with seconds"] += entry["seconds"] is not None
        row["minutes"] += (entry["seconds"] or 0.0) / 60
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["results", "with seconds", "minutes"])
    out.index.name = "result kind"
    stored = {str(p.parent.relative_to(base)) for p in base.rglob(store.MANIFEST)} if base.exists() else set()
    out.attrs["unread"] = len(stored - {str(Path(p).relative_to(top)) for p in used
                                         if Path(p).is_relative_to(top)})
    return out.round({"minutes": 1})


def totals(table: pd.DataFrame, cold: pd.DataFrame):
    """The wall time of the last executions beside the cold cost, as Markdown bullets."""
    wall = total_wall_time(table)
    timed = cold[cold["with seconds"] > 0]
    untimed = cold[cold["with seconds"] < cold["results"]]
    kinds = ", ".join(f"{k}: {m:.1f} min over {n}" for k, m, n in
                      zip(timed.index, timed["minutes"], timed["with seconds"]))
    missing = ", ".join(f"{k} ({r - n} of {r})" for k, r, n in
                        zip(untimed.index, untimed["results"], untimed["with seconds"])) or "none"
    return bullets([
        f"Last executions: {wall['minutes']:.1f} min over the {wall['recorded']} of "
        f"{wall['notebooks']} notebooks with a record. Each loaded what earlier executions had "
        "saved, so this is the cost of a re-run on a full store, not of the study.",
        f"Cold cost: {timed['minutes'].sum():.1f} min of compute recorded by the "
        f"{int(cold['results'].sum())} stored results the notebooks read, each counted once "
        f"({kinds} results).",
        f"Not recorded (results saved without their seconds, so the cold cost is a lower bound): "
        f"{missing}.",
        f"Stored results no notebook read (earlier parameters): {cold.attrs.get('unread', 0)}."])
