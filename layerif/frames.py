"""Exact result tables on disk: a pandas table as ``table.csv`` plus ``table.schema.json``.

The CSV has one header row (index names, then column labels) and holds floats in their
shortest exact form; the schema keeps the dtypes (float, int, bool, str, missing values
included), the index (names, MultiIndex, RangeIndex), column labels and names, a Series'
name and the number of rows, so :func:`read` gives back a bit-identical table. It
checks what it reads (no bytes, no final line break, a header or a row of another width,
another number of rows): a damaged file raises ``ValueError`` saying how. Pure pandas; the
store (:func:`layerif.store.save_frame`) writes these files atomically under an identity.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection

import numpy as np
import pandas as pd

from ._config import jsonable

__all__ = ["TABLE_CSV", "TABLE_SCHEMA", "check_whole", "nonfinite", "read", "read_schema", "write"]

TABLE_CSV = "table.csv"
TABLE_SCHEMA = "table.schema.json"
_TEXT = ("str", "string", "object")
# pandas >= 3 parses floats exactly by default (and deprecates the option).
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def _dtype_name(series: pd.Series, name: Any) -> str:
    """The stored dtype of one column or index level: a numpy numeric / bool dtype, a string
    dtype (``str`` / ``string``), or ``object`` when every present value is a str."""
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype):
        return str(dtype)
    if dtype.kind in "biuf" and isinstance(dtype, np.dtype):
        return str(dtype)
    if dtype == object and all(isinstance(v, str) for v in series.dropna()):
        return "object"
    raise ValueError(f"frame column {name!r} has dtype {dtype}" + (
        " with non-str values" if dtype == object else "") +
        ": save_frame stores float, int, bool and str columns only")


def _table(frame: pd.DataFrame | pd.Series) -> pd.DataFrame:
    if not isinstance(frame, (pd.Series, pd.DataFrame)):
        raise ValueError(f"frame={type(frame).__name__} is invalid: expected a DataFrame or Series")
    return frame.to_frame(name=0) if isinstance(frame, pd.Series) else frame


def _encode(frame: pd.DataFrame | pd.Series) -> tuple[dict, pd.DataFrame]:
    """The JSON schema of ``frame`` and the flat table written to CSV (index levels first).

    Missing values of str columns are listed by row in ``missing`` (the CSV cell is empty,
    like an empty string's); float NaN is an empty cell of a float column.
    """
    table = _table(frame)
    index = table.index
    levels = [index.get_level_values(i).to_series(index=range(len(table)))
              for i in range(index.nlevels)]
    cols = [table.iloc[:, j].reset_index(drop=True) for j in range(table.shape[1])]
    dtypes = ([_dtype_name(x, n) for x, n in zip(levels, index.names)]
              + [_dtype_name(x, c) for x, c in zip(cols, table.columns)])
    flat = pd.concat(levels + cols, axis=1, ignore_index=True)
    flat.columns = [str(n) for n in index.names] + [
        "/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    missing = {str(i): np.flatnonzero(flat.iloc[:, i].isna().to_numpy()).tolist()
               for i, d in enumerate(dtypes) if d in _TEXT and flat.iloc[:, i].isna().any()}
    schema = {
        "type": "series" if isinstance(frame, pd.Series) else "frame",
        "series_name": jsonable(frame.name) if isinstance(frame, pd.Series) else None,
        "index_names": jsonable(list(index.names)),
        "range_index": ([index.start, index.stop, index.step]
                        if isinstance(index, pd.RangeIndex) else None),
        "columns": jsonable([list(c) if isinstance(c, tuple) else c for c in table.columns]),
        "column_names": jsonable(list(table.columns.names)),
        "dtypes": dtypes,
        "missing": missing,
        "rows": len(table),
    }
    return schema, flat


def nonfinite(frame: pd.DataFrame | pd.Series, allowed: bool | Collection = ()) -> str | None:
    """A one-line description of the first float column (or index level) holding NaN or
    +-inf whose label is not in ``allowed`` (``True``: every column may); None when none."""
    if allowed is True:
        return None
    table = _table(frame)
    allowed = list(allowed)
    named = [(name, table.index.get_level_values(i)) for i, name in enumerate(table.index.names)]
    named += [(label, table.iloc[:, j]) for j, label in enumerate(table.columns)]
    for label, values in named:
        if values.dtype.kind != "f" or label in allowed:
            continue
        array = values.to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            row = jsonable(table.index[bad[0]])
            return (f"column {label!r} holds {len(bad)} non-finite value(s) ({array[bad[0]]} "
                    f"at row {tuple(row) if isinstance(row, list) else row!r})")
    return None


def write(folder: str | Path, frame: pd.DataFrame | pd.Series) -> None:
    """Write ``table.csv`` and ``table.schema.json`` of ``frame`` into ``folder``.

    Raises:
        ValueError: a column of another dtype than float, int, bool or str.
    """
    schema, flat = _encode(frame)
    folder = Path(folder)
    flat.to_csv(folder / TABLE_CSV, index=False, na_rep="")
    (folder / TABLE_SCHEMA).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


def check_whole(path: str | Path) -> None:
    """Raise ``ValueError`` when the text file ``path`` (a CSV written by pandas) is empty or
    does not end with a line break (cut off while being written or copied)."""
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise ValueError("it is empty")
    if not raw.endswith(b"\n"):
        raise ValueError("it is truncated (no final line break)")


def _read_flat(path: Path, schema: dict) -> pd.DataFrame:
    """The CSV columns by position, each parsed exactly (strings verbatim, floats round-trip),
    after checking the file is whole."""
    dtypes = schema["dtypes"]
    check_whole(path)
    width = len(pd.read_csv(path, nrows=0, header=0).columns)
    if width != len(dtypes):
        raise ValueError(f"its header has {width} fields, expected {len(dtypes)}")
    parse = {i: (str if d in _TEXT else "float64" if d.startswith("float") else d)
             for i, d in enumerate(dtypes)}
    flat = pd.read_csv(path, header=None, skiprows=1, names=range(len(dtypes)), dtype=parse,
                       keep_default_na=False, **_EXACT_FLOATS,
                       na_values={i: [""] for i, d in enumerate(dtypes) if d.startswith("float")})
    rng = schema.get("range_index")
    rows = schema.get("rows", len(range(*rng)) if rng is not None else None)
    if rows is not None and len(flat) != rows:
        raise ValueError(f"it has {len(flat)} rows, expected {rows}")
    for i, d in enumerate(dtypes):
        short = set(np.flatnonzero(flat[i].isna().to_numpy())) - set(schema["missing"].get(str(i), []))
        if d in _TEXT and short:
            raise ValueError(f"row {min(short) + 1} has fewer fields than its header")
    return flat


def _labels(values: list, names: list) -> pd.Index:
    if len(names) > 1:
        return pd.MultiIndex.from_tuples([tuple(v) for v in values], names=names)
    return pd.Index(values, name=names[0], dtype=None if values else object)


def read_schema(folder: str | Path) -> dict:
    """The ``table.schema.json`` in ``folder`` (ValueError when it is not a JSON object)."""
    schema = json.loads((Path(folder) / TABLE_SCHEMA).read_text())
    if not isinstance(schema, dict) or not isinstance(schema.get("dtypes"), list):
        raise ValueError(f"it holds a JSON {type(schema).__name__} without 'dtypes', "
                         "expected a table schema")
    return schema


def read(folder: str | Path, schema: dict) -> pd.DataFrame | pd.Series:
    """The table :func:`write` wrote into ``folder``, whose schema is ``schema``
    (:func:`read_schema`).

    Raises:
        ValueError: ``table.csv`` is damaged (empty, truncated, a row or header of another
            width, another number of rows, unparsable values); the message says how.
    """
    folder = Path(folder)
    flat = _read_flat(folder / TABLE_CSV, schema)
    n_idx = len(schema["index_names"])
    for i, d in enumerate(schema["dtypes"]):
        flat[i] = flat[i].astype(d)
        rows = schema["missing"].get(str(i))
        if rows:
            flat.iloc[rows, i] = None
    if schema["range_index"] is not None:
        index = pd.RangeIndex(*schema["range_index"], name=schema["index_names"][0])
    elif n_idx > 1:
        index = pd.MultiIndex.from_arrays([flat[i] for i in range(n_idx)],
                                          names=schema["index_names"])
    else:
        index = pd.Index(flat[0], name=schema["index_names"][0])
    body = flat.iloc[:, n_idx:].set_axis(index, axis=0)
    if schema["type"] == "series":
        return body.iloc[:, 0].rename(schema["series_name"])
    body.columns = _labels(schema["columns"], schema["column_names"])
    return body
