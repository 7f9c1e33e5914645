"""The results store: identity-guarded, atomic, resumable result folders.

A result folder holds the files of one result and a ``manifest.json`` that records its
*identity* -- what decides its values: the kind of result, the config without its run-time
fields (:meth:`layerif._config.ConfigBase.identity`), the model id, the data slice (task,
example ids) and the package version -- plus ``extra`` metadata, the creation time and the
environment (library versions, git commit), which are not part of the identity.

Guarantees:

* :func:`save` refuses (:class:`ResultMismatch`) to replace a result of another identity
  unless ``overwrite=True``; a result of the same identity is replaced (a re-run).
* Saves are atomic: the files are written into a hidden temporary folder beside the target,
  the manifest last, then swapped in by renames. A run killed at any moment leaves the old
  result or none, never half of one. Leftover hidden folders are ignored by readers and
  cleaned (or, for a result moved aside just before a kill, put back) by the next save.
* :func:`load_if_matching` and :func:`load_frame` with an identity return ``None`` when
  nothing is saved and raise when something else is: nothing stale or foreign is read
  silently.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ._config import ConfigBase, jsonable

__all__ = ["IDENTITY_KEYS", "MANIFEST", "TABLE_CSV", "TABLE_SCHEMA", "ProvenanceError", "ResultMismatch",
           "differences", "environment", "git_state", "identity", "load_frame", "load_if_matching",
           "load_manifest", "save", "save_frame", "saved_identity", "MissingResult", "cached",
           "is_read_only", "read_only", "slug", "PROFILES", "results_dir", "study_root"]

MANIFEST = "manifest.json"
TABLE_CSV = "table.csv"
TABLE_SCHEMA = "table.schema.json"
IDENTITY_KEYS = ("kind", "config", "model_id", "data", "layerif_version")
PACKAGES = ("torch", "transformers", "peft", "lm_eval")


def _normal(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples -> lists, dtypes -> strings, ...)."""
    return json.loads(json.dumps(jsonable(value)))


def _version() -> str:
    import layerif

    return layerif.__version__


def identity(kind: str, config, model_id: str | None, data: dict) -> dict:
    """The identity of a result: what must agree for a saved result to be reused.

    Args:
        kind: what the result is (``"layer_scores"``, ``"moe_adapter"``, ...).
        config: a :class:`~layerif._config.ConfigBase` (its :meth:`identity`, run-time fields
            left out) or a plain dict of the settings that decide the result.
        model_id: the model the result was computed on (None when none).
        data: the data slice: task and example ids (as lists), or inputs' fingerprints.

    Returns:
        ``{"kind", "config", "model_id", "data", "layerif_version"}``, JSON-normalised.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind={kind!r} is invalid: expected a non-empty string")
    if not isinstance(config, (ConfigBase, dict)):
        raise ValueError(f"config={config!r} is invalid: expected a ConfigBase or a dict")
    if model_id is not None and not isinstance(model_id, str):
        raise ValueError(f"model_id={model_id!r} is invalid: expected a str or None")
    if not isinstance(data, dict):
        raise ValueError(f"data={data!r} is invalid: expected a dict")
    cfg = config.identity() if isinstance(config, ConfigBase) else config
    return _normal({"kind": kind, "config": cfg, "model_id": model_id, "data": data,
                    "layerif_version": _version()})


class ProvenanceError(FileExistsError):
    """A result folder cannot take the result being saved (also importable from
    :mod:`layerif.provenance`, its former home)."""


# -- differences -------------------------------------------------------------------------
_ABSENT = object()


def _short(value: Any, width: int = 60) -> str:
    text = "<absent>" if value is _ABSENT else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _list_difference(path: str, saved: list, given: list) -> str:
    """Lengths and the first differing element (``<absent>`` past the shorter list's end)."""
    n = max(len(saved), len(given))
    pad = lambda xs: list(xs) + [_ABSENT] * (n - len(xs))  # noqa: E731
    first = next(i for i, (a, b) in enumerate(zip(pad(saved), pad(given))) if a != b)
    return (f"{path}: {len(saved)} items (saved) vs {len(given)} (given), first difference at "
            f"[{first}]: {_short(pad(saved)[first], 30)} (saved) vs "
            f"{_short(pad(given)[first], 30)} (given)")


def differences(saved: Any, given: Any, path: str = "") -> list[str]:
    """One line per differing leaf of two JSON-like values, as dotted paths.

    Dicts are compared key by key; lists longer than 4 items, or of unequal length, are
    summarised (lengths and first differing element); other values are shown side by side:
    ``data.task: 'mrpc' (saved) vs 'rte' (given)``.
    """
    if isinstance(saved, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(saved) | set(given), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out += differences(saved.get(key, _ABSENT), given.get(key, _ABSENT), sub)
        return out
    if json.dumps(saved, sort_keys=True, default=repr) == json.dumps(given, sort_keys=True,
                                                                    default=repr):
        return []
    if (isinstance(saved, list) and isinstance(given, list)
            and (len(saved) != len(given) or len(saved) > 4)):
        return [_list_difference(path, saved, given)]
    return [f"{path}: {_short(saved)} (saved) vs {_short(given)} (given)"]


class ResultMismatch(ProvenanceError):
    """A folder holds a result of another identity than the one asked for.

    Attributes:
        directory: the result folder.
        differences: one line per differing identity key (see :func:`differences`).
    """

    def __init__(self, directory: str | Path, saved: dict, given: dict):
        self.directory = Path(directory)
        self.differences = differences(saved, given)
        lines = "\n".join(f"  {d}" for d in self.differences)
        super().__init__(
            f"{self.directory} holds a {saved.get('kind')!r} result of another identity:\n"
            f"{lines}\nPass overwrite=True to replace it (or use another folder).")


# -- environment -------------------------------------------------------------------------
def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(package_dir: str | Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding the package, or None.

    None when the package does not live in a git work tree of its own (an installed copy
    inside some other repository counts as none). ``dirty`` is True when tracked files differ
    from the commit (untracked files, such as results being written, do not count).
    """
    here = Path(package_dir or Path(__file__).resolve().parent)
    top = _git(["rev-parse", "--show-toplevel"], here)
    mine = Path(top) / here.name / "__init__.py" if top else None
    if mine is None or not mine.is_file() or not mine.resolve().samefile(here / "__init__.py"):
        return None  # not a checkout, or an installed copy inside some other repository
    commit = _git(["rev-parse", "HEAD"], here)
    status = _git(["status", "--porcelain", "--untracked-files=no"], here)
    if commit is None or status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def environment() -> dict:
    """Where a result was made: Python and library versions (None when not installed) and the
    project's git state (:func:`git_state`)."""
    return {"python": platform.python_version(),
            **{name: _package_version(name) for name in PACKAGES},
            "git": git_state()}


# -- reading -----------------------------------------------------------------------------
def load_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """The manifest of the result in ``directory``, checking its kind when given.

    Raises:
        FileNotFoundError: the folder holds no result.
        ValueError: it holds a result of another kind.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: no result is saved there")
    manifest = json.loads(path.read_text())
    if kind is not None and manifest.get("kind") != kind:
        raise ValueError(f"kind={kind!r} is invalid: {directory} holds a "
                         f"{manifest.get('kind')!r} result")
    return manifest


def saved_identity(manifest: dict) -> dict:
    """The identity part of a manifest (absent keys as None)."""
    return {key: manifest.get(key) for key in IDENTITY_KEYS}


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def load_if_matching(directory: str | Path, ident: dict) -> dict | None:
    """The manifest when ``directory`` holds a result of exactly identity ``ident``.

    Returns:
        The manifest, or None when the folder holds no result.

    Raises:
        ResultMismatch: the folder holds a result of another identity (any key differs,
            ``layerif_version`` included).
    """
    try:
        manifest = load_manifest(directory)
    except FileNotFoundError:
        return None
    saved, given = saved_identity(manifest), _normal(ident)
    if not _same(saved, given):
        raise ResultMismatch(directory, saved, given)
    return manifest


# -- writing -----------------------------------------------------------------------------
def _aside(target: Path, tag: str) -> Path:
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
    """Hidden folders a save of ``target`` left with ``tag`` (tmp / old), by dead processes."""
    found = []
    for p in target.parent.glob(f".{target.name}.{tag}-*"):
        pid = p.name.rsplit("-", 2)[-2]
        if not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            found.append(p)
    return found


def _recover(target: Path) -> None:
    """Put back a complete result moved aside by a save killed between its two renames, and
    remove every other leftover of earlier, dead saves."""
    old = [p for p in _leftovers(target, "old") if (p / MANIFEST).is_file()]
    if not target.exists() and old:
        max(old, key=lambda p: p.stat().st_mtime).rename(target)
    for p in _leftovers(target, "old") + _leftovers(target, "tmp"):
        shutil.rmtree(p, ignore_errors=True)


def _guard(target: Path, ident: dict, overwrite: bool) -> None:
    """Raise unless ``target`` may receive a result of identity ``ident``."""
    if overwrite or not target.exists():
        return
    if not target.is_dir():
        raise ProvenanceError(f"{target} exists and is not a folder")
    if (target / MANIFEST).is_file():
        load_if_matching(target, ident)
    elif any(target.iterdir()):
        raise ProvenanceError(f"{target} holds no {MANIFEST} but other files: not a layerif "
                              "result. Pass overwrite=True to replace them (or use another folder).")


def save(directory: str | Path, ident: dict, write: Callable[[Path], None],
         extra: dict | None = None, overwrite: bool = False) -> Path:
    """Save a result atomically into ``directory`` under identity ``ident``.

    Args:
        directory: the result folder (created with its parents).
        ident: from :func:`identity`.
        write: called with an empty temporary folder; writes the result's files there
            (not ``manifest.json``, which the store writes last).
        extra: JSON-ready metadata kept in the manifest's ``"extra"`` (not identity).
        overwrite: replace a result of another identity.

    Returns:
        ``directory`` as a Path.

    Raises:
        ResultMismatch: ``directory`` holds a result of another identity and not
            ``overwrite``; nothing is written then.
        ProvenanceError: it holds files that are not a result and not ``overwrite``.
    """
    target = Path(directory)
    if not (isinstance(ident, dict) and set(ident) == set(IDENTITY_KEYS)):
        raise ValueError(f"ident={ident!r} is invalid: expected a dict from store.identity() "
                         f"with keys {IDENTITY_KEYS}")
    ident = _normal(ident)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    _guard(target, ident, overwrite)
    tmp = _aside(target, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        if (tmp / MANIFEST).exists():
            raise ValueError(f"write={write!r} wrote {MANIFEST}: the store writes it")
        manifest = {**ident, "extra": _normal(extra or {}), "environment": environment(),
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        _write_json(tmp / MANIFEST, manifest)
        _swap(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _swap(tmp: Path, target: Path) -> None:
    """Move the complete ``tmp`` to ``target``, the old result aside first, removed after."""
    old = None
    if target.exists():
        old = _aside(target, "old")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- result tables -----------------------------------------------------------------------
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


def _schema(frame: pd.DataFrame, series_name: Any, is_series: bool) -> tuple[dict, pd.DataFrame]:
    """The JSON schema of ``frame`` and the flat table written to CSV (index levels first).

    Missing values of str columns are listed by row in ``missing`` (the CSV cell is empty,
    like an empty string's); float NaN is an empty cell of a float column.
    """
    index = frame.index
    levels = [index.get_level_values(i).to_series(index=range(len(frame)))
              for i in range(index.nlevels)]
    cols = [frame.iloc[:, j].reset_index(drop=True) for j in range(frame.shape[1])]
    dtypes = ([_dtype_name(x, n) for x, n in zip(levels, index.names)]
              + [_dtype_name(x, c) for x, c in zip(cols, frame.columns)])
    flat = pd.concat(levels + cols, axis=1, ignore_index=True)
    flat.columns = [str(n) for n in index.names] + [
        "/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    missing = {str(i): np.flatnonzero(flat.iloc[:, i].isna().to_numpy()).tolist()
               for i, d in enumerate(dtypes) if d in _TEXT and flat.iloc[:, i].isna().any()}
    schema = {
        "type": "series" if is_series else "frame",
        "series_name": jsonable(series_name),
        "index_names": jsonable(list(index.names)),
        "range_index": ([index.start, index.stop, index.step]
                        if isinstance(index, pd.RangeIndex) else None),
        "columns": jsonable([list(c) if isinstance(c, tuple) else c for c in frame.columns]),
        "column_names": jsonable(list(frame.columns.names)),
        "dtypes": dtypes,
        "missing": missing,
    }
    return schema, flat


def save_frame(directory: str | Path, frame: pd.DataFrame | pd.Series, ident: dict,
               extra: dict | None = None, overwrite: bool = False) -> Path:
    """Save a result table through :func:`save`: ``table.csv`` and ``table.schema.json``.

    The CSV has one header row (index names, then column labels) and holds floats in their
    shortest exact form, so :func:`load_frame` gives back bit-identical floats, the dtypes
    (float, int, bool, str, missing values included), the index (names, MultiIndex,
    RangeIndex), column labels and names, and a Series' name.

    Raises:
        ValueError: a column of another dtype (category, datetime, mixed objects, ...);
            nothing is written then.
        ResultMismatch: as :func:`save`.
    """
    if not isinstance(frame, (pd.Series, pd.DataFrame)):
        raise ValueError(f"frame={type(frame).__name__} is invalid: expected a DataFrame or Series")
    is_series = isinstance(frame, pd.Series)
    table = frame.to_frame(name=0) if is_series else frame
    schema, flat = _schema(table, frame.name if is_series else None, is_series)

    def write(tmp: Path) -> None:
        flat.to_csv(tmp / TABLE_CSV, index=False, na_rep="")
        _write_json(tmp / TABLE_SCHEMA, schema)

    return save(directory, ident, write, extra=extra, overwrite=overwrite)


def _read_flat(path: Path, dtypes: list[str]) -> pd.DataFrame:
    """The CSV columns by position, each parsed exactly (strings verbatim, floats round-trip)."""
    parse = {i: (str if d in _TEXT else "float64" if d.startswith("float") else d)
             for i, d in enumerate(dtypes)}
    return pd.read_csv(path, header=None, skiprows=1, names=range(len(dtypes)), dtype=parse,
                       keep_default_na=False, **_EXACT_FLOATS,
                       na_values={i: [""] for i, d in enumerate(dtypes) if d.startswith("float")})


def _labels(values: list, names: list) -> pd.Index:
    if len(names) > 1:
        return pd.MultiIndex.from_tuples([tuple(v) for v in values], names=names)
    return pd.Index(values, name=names[0], dtype=None if values else object)


def _from_flat(flat: pd.DataFrame, schema: dict) -> pd.DataFrame | pd.Series:
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


def load_frame(directory: str | Path, ident: dict | None = None) -> pd.DataFrame | pd.Series | None:
    """A table saved by :func:`save_frame`.

    With ``ident``: None when the folder holds no result, :class:`ResultMismatch` when it
    holds one of another identity (as :func:`load_if_matching`). Without: whatever table is
    there (FileNotFoundError when none).

    Raises:
        ValueError: the folder holds a result that is not a table.
    """
    directory = Path(directory)
    manifest = load_manifest(directory) if ident is None else load_if_matching(directory, ident)
    if manifest is None:
        return None
    if not (directory / TABLE_SCHEMA).is_file():
        raise ValueError(f"{directory} holds a {manifest.get('kind')!r} result that is not a "
                         f"table (no {TABLE_SCHEMA})")
    schema = json.loads((directory / TABLE_SCHEMA).read_text())
    return _from_flat(_read_flat(directory / TABLE_CSV, schema["dtypes"]), schema)


# -- where results live ------------------------------------------------------------------
PROFILES = ("smoke", "cpu", "paper")


def study_root() -> Path:
    """The study's root folder (``$LAYERIF_ROOT``, else the checkout holding this package,
    else the working directory)."""
    env = os.environ.get("LAYERIF_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return here if (here / "notebooks").is_dir() else Path.cwd()


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """Where results of parameter profile ``profile`` live: ``<root>/results/<profile>``."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is invalid: expected one of {PROFILES}")
    return Path(root or study_root()) / "results" / profile


# -- the one load-or-compute ---------------------------------------------------------------
def slug(name: Any) -> str:
    """A model, task or setting name as one path component (``org/model`` -> ``org--model``).

    The one rule for every result folder the study names."""
    return str(name).strip("/").replace("/", "--").replace(":", "-").replace(" ", "_").replace("%", "pct")


class MissingResult(FileNotFoundError):
    """A result asked for under :func:`read_only` is not saved, or saved under another identity.

    Its message names the notebook that produces the result and the command to run."""

    def __init__(self, notebook, what: list[str], command: str | None = None):
        self.notebooks = [notebook] if isinstance(notebook, str) else list(notebook)
        self.notebook, self.what = self.notebooks[0], list(what)
        shown = "; ".join(self.what[:4]) + (f" (+{len(self.what) - 4} more)" if len(self.what) > 4 else "")
        names = " ".join(self.notebooks)
        run = command or f"layerif run {names}"
        super().__init__(f"{'notebooks' if len(self.notebooks) > 1 else 'notebook'} {names} "
                         f"saved no {shown}: run `{run}`")


_READ_ONLY = contextvars.ContextVar("layerif_store_read_only", default=None)


class read_only:
    """Within ``with store.read_only(notebook, command):`` :func:`cached` never computes.

    A result that is absent, or saved under another identity, raises :class:`MissingResult`
    naming ``notebook`` (the one whose run saves it) and ``command`` (how to run it).
    Notebook 10 re-reads every notebook's results this way."""

    def __init__(self, notebook: str, command: str | None = None):
        self.notebook, self.command = notebook, command
        self._token = None

    def __enter__(self) -> "read_only":
        self._token = _READ_ONLY.set((self.notebook, self.command))
        return self

    def __exit__(self, *exc) -> None:
        _READ_ONLY.reset(self._token)


def is_read_only() -> bool:
    """Whether the caller is inside :class:`read_only`."""
    return _READ_ONLY.get() is not None


def _frame_save(directory, value, ident, extra, overwrite):
    return save_frame(directory, value, ident, extra=extra, overwrite=overwrite)


def cached(directory: str | Path, ident: dict, compute: Callable[[], Any], *,
           overwrite: bool = False, extra: dict | None = None,
           load: Callable[[Path], Any] | None = None,
           save_as: Callable[[Path, Any, dict, dict | None, bool], Any] | None = None) -> Any:
    """The result saved in ``directory`` under identity ``ident``; computed and saved if absent.

    The one load-or-compute of the package. ``load(directory)`` reads a result whose identity
    matched (default: :func:`load_frame`); ``save_as(directory, value, ident, extra, overwrite)``
    saves a computed one (default: :func:`save_frame`). A folder holding a result of another
    identity raises :class:`ResultMismatch` unless ``overwrite`` (which recomputes). Under
    :class:`read_only` nothing is computed: absent or foreign results raise
    :class:`MissingResult`.
    """
    directory = Path(directory)
    mode = _READ_ONLY.get()
    if mode is not None:
        try:
            found = load_if_matching(directory, ident)
        except ResultMismatch as err:
            raise MissingResult(mode[0], [f"{directory} (saved under another identity: "
                                          f"{'; '.join(err.differences[:2])})"],
                                mode[1]) from None
        if found is None:
            raise MissingResult(mode[0], [str(directory)], mode[1])
        return (load or load_frame)(directory)
    if not overwrite and load_if_matching(directory, ident) is not None:
        return (load or load_frame)(directory)
    value = compute()
    (save_as or _frame_save)(directory, value, ident, extra, overwrite)
    return value
