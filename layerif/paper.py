"""The paper's printed numbers as data, and the one helper that sets ours beside them.

The numbers live in ``paper_numbers.yaml`` (shipped with the package), transcribed as
printed from Askari et al. (NeurIPS 2025): Tables 1-8 with their captions, model, settings
and source line, and the claims the text makes about Fig. 2, Fig. 3 and the tables. Notebooks
read them through :func:`table` and :func:`claims` and lay out every comparison with
:func:`compare`; nothing here computes a result.
"""
from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = ["claims", "compare", "entry", "tables", "table"]

NOT_IN_PAPER = "not in paper"
NOT_COMPUTED = "not computed here"


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = resources.files("layerif").joinpath("paper_numbers.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def tables() -> list[str]:
    """The ids of every entry, in the paper's order (``table1`` ... ``table8``, ``fig2``, ...)."""
    return list(_load()["entries"])


def entry(table_id: str) -> dict[str, Any]:
    """A copy of one entry's raw record (caption, model, settings, notes, values, claims)."""
    entries = _load()["entries"]
    if table_id not in entries:
        raise ValueError(f"table_id={table_id!r} is invalid: expected one of {list(entries)}")
    return copy.deepcopy(entries[table_id])


def table(table_id: str) -> pd.DataFrame:
    """One table, wide, as printed: index = the printed row labels, columns = column labels.

    Cells the paper leaves empty are ``nan``. ``attrs`` carries ``id``, ``caption``,
    ``model``, ``model_source``, ``settings``, ``notes``, ``source_line``, ``decimals`` and
    ``marks``. A figure or text entry has no printed values: its frame is empty (its numbers
    are in :func:`claims`).
    """
    rec = entry(table_id)
    if rec.get("values") is None:
        frame = pd.DataFrame()
    else:
        values = np.array([[np.nan if v is None else float(v) for v in row] for row in rec["values"]])
        frame = pd.DataFrame(values, index=pd.Index(rec["rows"], name=rec["index_name"]),
                             columns=pd.Index(rec["columns"]))
    keys = ("caption", "model", "model_source", "settings", "notes", "source_line", "decimals", "marks")
    frame.attrs.update({"id": table_id, **{k: rec.get(k) for k in keys}})
    return frame


def claims(table_id: str) -> list[dict[str, Any]]:
    """The text's statements about an entry: ``quote``, ``line``, ``value`` (or None), ``unit``, ``check``."""
    return entry(table_id).get("claims", [])


# ----------------------------------------------------------------------------- label matching

def _norm(label: Any) -> str:
    return re.sub(r"[^0-9a-z+%]", "", str(label).lower())


def _spellings(paper_label: str) -> set[str]:
    """Normalised spellings that name ``paper_label`` itself (not a stand-in)."""
    aliases = _load().get("aliases", {}).get(paper_label, [])
    return {_norm(paper_label), *(_norm(a) for a in aliases)}


def _resolve(ours_labels, paper_labels: pd.Index, mapping: dict | None, axis: str,
             table_id: str) -> tuple[dict, dict]:
    """Map each of our labels to a paper label; return (ours -> paper, paper -> stand-in note)."""
    mapping = dict(mapping or {})
    bad_targets = [v for v in mapping.values() if v not in paper_labels]
    if bad_targets:
        raise ValueError(f"{axis}={bad_targets!r} is invalid: expected labels of {table_id}: {list(paper_labels)}")
    resolved, notes, unknown = {}, {}, []
    for label in ours_labels:
        if label in mapping:
            target = mapping[label]
            if _norm(label) not in _spellings(target):
                notes[target] = f"stand-in: {label} for {target}"
        else:
            hits = [p for p in paper_labels if _norm(label) in _spellings(p)]
            if len(hits) != 1:
                unknown.append(label)
                continue
            target = hits[0]
        resolved[label] = target
    if unknown:
        raise ValueError(f"{axis}={unknown!r} is invalid: expected labels of {table_id} "
                         f"({list(paper_labels)}) or a mapping to them")
    targets = list(resolved.values())
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise ValueError(f"{axis}={mapping or list(ours_labels)!r} is invalid: several labels map to {dupes}")
    return resolved, notes


def _as_frame(ours, paper: pd.DataFrame) -> pd.DataFrame:
    if isinstance(ours, pd.Series):
        if paper.shape[1] == 1:
            return ours.to_frame(name=paper.columns[0])
        return ours.to_frame(name=ours.name)
    if not isinstance(ours, pd.DataFrame):
        raise ValueError(f"ours={type(ours).__name__} is invalid: expected a pandas DataFrame or Series")
    return ours


# ----------------------------------------------------------------------------- the comparison

def compare(ours, table_id: str, rows: dict | None = None, columns: dict | None = None,
            note: str | None = None, scale: float = 1.0) -> pd.DataFrame:
    """Lay out "paper | ours | difference | note" for every cell of one printed table.

    Args:
        ours: our numbers, wide like the paper's table. A Series stands for the table's only
            column when it has one, else for the column its name matches.
        table_id: which table (see :func:`tables`).
        rows, columns: ours label -> paper label. Labels not given here match a paper label
            that is spelled the same up to case and punctuation, or one of its aliases in
            ``paper_numbers.yaml`` (task registry names such as ``csqa``). A mapping between
            labels that are not the same thing adds the note ``"stand-in: ours for paper"``.
        note: text added to every row's note.
        scale: multiplies ours before the comparison (100 turns accuracy fractions into %).

    Returns:
        Long frame indexed by (``row``, ``column``) in the paper's labels and order, with
        columns ``paper``, ``ours`` (after ``scale``), ``difference`` (ours - paper) and
        ``note``. Every printed cell is kept: a paper cell we lack has ``ours`` nan and note
        ``"not computed here"``; a cell of ours the paper leaves empty has note
        ``"not in paper"``. ``attrs`` are the paper table's.

    Raises:
        ValueError: unknown ``table_id``, an entry without printed values, or labels of ours
            (or mapping targets) that are not the table's.
    """
    paper = table(table_id)
    if paper.empty:
        raise ValueError(f"table_id={table_id!r} is invalid: it prints no values; see paper.claims({table_id!r})")
    frame = _as_frame(ours, paper)
    row_map, row_notes = _resolve(frame.index, paper.index, rows, "rows", table_id)
    col_map, col_notes = _resolve(frame.columns, paper.columns, columns, "columns", table_id)
    try:
        mine = frame.rename(index=row_map, columns=col_map).astype(np.float64) * float(scale)
    except (TypeError, ValueError):
        raise ValueError("ours=frame with non-numeric cells is invalid: expected numbers") from None
    mine = mine.reindex(index=paper.index, columns=paper.columns)
    records = []
    for r in paper.index:
        for c in paper.columns:
            p, o = paper.at[r, c], mine.at[r, c]
            parts = [note] if note else []
            parts += [n for n in (row_notes.get(r), col_notes.get(c)) if n]
            if np.isnan(p) and not np.isnan(o):
                parts.append(NOT_IN_PAPER)
            elif np.isnan(o) and not np.isnan(p):
                parts.append(NOT_COMPUTED)
            records.append((r, c, p, o, o - p, "; ".join(parts)))
    out = pd.DataFrame.from_records(records, columns=["row", "column", "paper", "ours", "difference", "note"])
    out = out.set_index(["row", "column"])
    out.attrs.update(paper.attrs)
    return out
