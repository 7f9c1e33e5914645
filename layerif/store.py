"""The results store: identity-guarded, atomic, resumable result folders.

A result folder holds the files of one result and a ``manifest.json`` that records its
*identity* -- what decides its values: the kind of result, the config without its run-time
fields (:meth:`layerif._config.ConfigBase.identity`), the model id, the data slice (task,
example ids), the package version and, for a model loaded in another dtype than float32,
that dtype (``model_dtype``) -- plus ``extra`` metadata, the creation time, the
environment (library versions, git state), each file's size and sha256 and, for a local
checkpoint, the model's folder as a label; none of these is part of the identity.

Guarantees:

* :func:`save` refuses (:class:`ResultMismatch`) to replace a result of another identity
  unless ``overwrite=True``; a result of the same identity is replaced (a re-run).
* Saves are atomic: the files are written into a hidden temporary folder beside the target,
  the manifest last, then swapped in by renames. A run killed at any moment leaves the old
  result or none, never half of one. Leftover hidden folders are ignored by readers and
  cleaned (or, for a result moved aside just before a kill, put back) by the next save.
* Concurrent saves never lose a result: the identity check and the swap are one step under
  a lock (:func:`layerif.atomic.lock`), so of processes saving different identities into one
  folder exactly one wins and the others get :class:`ResultMismatch`.
* A local checkpoint is identified by its weights (:mod:`layerif.fingerprint`), not its path.
* Nothing damaged is read (:mod:`layerif.manifest`): a manifest that is not a JSON object,
  a file whose size or hash differs from the manifest's record, or a table that does not
  parse raises :class:`CorruptResult` naming the file and the re-run that replaces it.
* A table with NaN or +-inf is never saved unless its columns are declared to hold them
  (:func:`save_frame`'s ``allow_nonfinite``).
* :func:`load_if_matching` and :func:`load_frame` with an identity return ``None`` when
  nothing is saved and raise when something else is: nothing stale or foreign is read
  silently.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Collection

import pandas as pd

from . import _version, atomic, fingerprint, frames, readmode, usage
from ._config import ConfigBase, jsonable
from .frames import TABLE_CSV, TABLE_SCHEMA
from .gitstate import git_state, package_checkout
from .jsondiff import differences
from .manifest import (MANIFEST, CorruptResult, file_records, load_manifest, reading,
                       write_manifest)
from .models import resolve_dtype
from .paths import PROFILES, results_dir, slug, study_root
from .readmode import MissingResult, is_read_only, read_only

__all__ = ["IDENTITY_KEYS", "MANIFEST", "OPTIONAL_IDENTITY_KEYS", "TABLE_CSV", "TABLE_SCHEMA",
           "CorruptResult", "ProvenanceError", "ResultMismatch", "differences", "environment",
           "identity", "identity_dtype", "load_frame", "load_if_matching", "load_manifest",
           "reading", "save", "save_frame",
           "saved_identity", "MissingResult", "cached", "is_read_only", "read_only", "slug",
           "PROFILES", "results_dir", "study_root"]

IDENTITY_KEYS = ("kind", "config", "model_id", "data", "layerif_version")
#: Identity keys present only when they hold something: ``model_dtype``, the dtype a model
#: was loaded in when not float32 (a float32 result's identity is as it was before the key).
OPTIONAL_IDENTITY_KEYS = ("model_dtype",)
PACKAGES = ("torch", "transformers", "peft", "lm_eval")


def _normal(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples -> lists, dtypes -> strings, ...)."""
    return json.loads(json.dumps(jsonable(value)))


def identity_dtype(dtype) -> str | None:
    """The ``model_dtype`` of an identity for a model loaded in ``dtype`` (a torch dtype or its
    name, ``"bfloat16"``, ``"torch.bfloat16"``): its name, or None for None and float32.

    Raises:
        ValueError: ``dtype`` is not a floating torch dtype or its name.
    """
    if dtype is None:
        return None
    name = jsonable(resolve_dtype(dtype))
    return None if name == "float32" else name


def identity(kind: str, config, model_id: str | None, data: dict, dtype=None) -> dict:
    """The identity of a result: what must agree for a saved result to be reused.

    Args:
        kind: what the result is (``"layer_scores"``, ``"moe_adapter"``, ...).
        config: a :class:`~layerif._config.ConfigBase` (its :meth:`identity`, run-time fields
            left out) or a plain dict of the settings that decide the result.
        model_id: the model the result was computed on (None when none): an embedded name
            or hub id is kept as is, a local checkpoint folder becomes its weights'
            fingerprint (:func:`layerif.fingerprint.model_key`).
        data: the data slice: task and example ids (as lists), or inputs' fingerprints.
        dtype: the dtype the model was loaded in (a torch dtype or its name; None: float32).

    Returns:
        ``{"kind", "config", "model_id", "data", "layerif_version"}``, JSON-normalised, and
        ``"model_dtype"`` (e.g. ``"bfloat16"``) for a ``dtype`` other than float32.
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
    ident = {"kind": kind, "config": cfg, "model_id": fingerprint.model_key(model_id),
             "data": data, "layerif_version": _version.__version__}
    name = identity_dtype(dtype)
    return _normal(ident if name is None else {**ident, "model_dtype": name})


class ProvenanceError(FileExistsError):
    """A result folder cannot take the result being saved."""


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


def environment() -> dict:
    """Where a result was made: Python and library versions (None when not installed) and the
    git state (:func:`layerif.gitstate.git_state`) of the checkout holding the package (None
    for an installed copy)."""
    checkout = package_checkout()
    return {"python": platform.python_version(),
            **{name: _package_version(name) for name in PACKAGES},
            "git": None if checkout is None else git_state(checkout)}


# -- reading -----------------------------------------------------------------------------
def saved_identity(manifest: dict) -> dict:
    """The identity part of a manifest (absent keys of :data:`IDENTITY_KEYS` as None; those of
    :data:`OPTIONAL_IDENTITY_KEYS` only when present)."""
    optional = {key: manifest[key] for key in OPTIONAL_IDENTITY_KEYS
                if manifest.get(key) is not None}
    return {**{key: manifest.get(key) for key in IDENTITY_KEYS}, **optional}


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
    usage.note(directory, manifest, computed=False)
    return manifest


# -- writing -----------------------------------------------------------------------------
def _complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


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


def _manifest(tmp: Path, ident: dict, extra: dict | None) -> dict:
    manifest = {**ident, "extra": _normal(extra or {}), "environment": environment(),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": file_records(tmp)}
    label = fingerprint.label(ident["model_id"])
    if label is not None:
        manifest["model_label"] = label
    return manifest


def save(directory: str | Path, ident: dict, write: Callable[[Path], None],
         extra: dict | None = None, overwrite: bool = False) -> Path:
    """Save a result atomically into ``directory`` under identity ``ident``.

    The identity is checked before ``write`` runs and again, under the folder's lock, just
    before the new result is swapped in: a result another process saved meanwhile is never
    replaced by one of another identity.

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
        CorruptResult: it holds a damaged result and not ``overwrite``.
    """
    target = Path(directory)
    if not (isinstance(ident, dict) and set(IDENTITY_KEYS) <= set(ident)
            <= set(IDENTITY_KEYS + OPTIONAL_IDENTITY_KEYS)):
        raise ValueError(f"ident={ident!r} is invalid: expected a dict from store.identity() "
                         f"with keys {IDENTITY_KEYS} (and optionally {OPTIONAL_IDENTITY_KEYS})")
    ident = _normal(ident)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.lock(target):  # fail before the work when the folder cannot take it
        atomic.recover(target, _complete)
        _guard(target, ident, overwrite)
    tmp = atomic.aside(target, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        if (tmp / MANIFEST).exists():
            raise ValueError(f"write={write!r} wrote {MANIFEST}: the store writes it")
        manifest = _manifest(tmp, ident, extra)
        write_manifest(tmp, manifest)
        with atomic.lock(target):
            atomic.recover(target, _complete, keep=tmp)
            _guard(target, ident, overwrite)
            atomic.swap(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    usage.note(target, manifest, computed=True)
    return target


# -- result tables -----------------------------------------------------------------------
def save_frame(directory: str | Path, frame: pd.DataFrame | pd.Series, ident: dict,
               extra: dict | None = None, overwrite: bool = False, *,
               allow_nonfinite: bool | Collection = ()) -> Path:
    """Save a result table through :func:`save`: ``table.csv`` and ``table.schema.json``
    (:mod:`layerif.frames`: bit-identical floats, dtypes, index, labels, a Series' name).

    Args:
        allow_nonfinite: the columns (or index levels) whose NaN / +-inf is a value of the
            result -- a missing or undefined entry, such as the stderr of a perplexity, a
            p-value of a constant sample, the log-likelihood of a choice a task does not
            have -- or True for every column. Anywhere else a non-finite value is a failed
            computation and is refused.

    Raises:
        ValueError: a non-finite value outside ``allow_nonfinite``, or a column of another
            dtype (category, datetime, mixed objects, ...); nothing is written then.
        ResultMismatch: as :func:`save`.
    """
    problem = frames.nonfinite(frame, allow_nonfinite)
    if problem is not None:
        raise ValueError(f"frame {problem}: a non-finite result is never saved (to {directory}); "
                         "pass allow_nonfinite=[columns] where NaN/inf means a missing value")
    return save(directory, ident, lambda tmp: frames.write(tmp, frame), extra=extra,
                overwrite=overwrite)


def load_frame(directory: str | Path, ident: dict | None = None) -> pd.DataFrame | pd.Series | None:
    """A table saved by :func:`save_frame`.

    With ``ident``: None when the folder holds no result, :class:`ResultMismatch` when it
    holds one of another identity (as :func:`load_if_matching`). Without: whatever table is
    there (FileNotFoundError when none).

    Raises:
        CorruptResult: the manifest, the schema or the CSV is damaged (named in the message).
        ValueError: the folder holds a result that is not a table.
    """
    directory = Path(directory)
    manifest = load_manifest(directory) if ident is None else load_if_matching(directory, ident)
    if manifest is None:
        return None
    if not (directory / TABLE_SCHEMA).is_file() and TABLE_SCHEMA not in manifest.get("files", {}):
        raise ValueError(f"{directory} holds a {manifest.get('kind')!r} result that is not a "
                         f"table (no {TABLE_SCHEMA})")
    with reading(directory / TABLE_SCHEMA):
        schema = frames.read_schema(directory)
    with reading(directory / TABLE_CSV):
        return frames.read(directory, schema)


# -- the one load-or-compute ---------------------------------------------------------------
def cached(directory: str | Path, ident: dict, compute: Callable[[], Any], *,
           overwrite: bool = False, extra: dict | None = None,
           load: Callable[[Path], Any] | None = None,
           save_as: Callable[[Path, Any, dict, dict | None, bool], Any] | None = None,
           allow_nonfinite: bool | Collection = ()) -> Any:
    """The result saved in ``directory`` under identity ``ident``; computed and saved if absent.

    The one load-or-compute of the package. ``load(directory)`` reads a result whose identity
    matched (default: :func:`load_frame`); ``save_as(directory, value, ident, extra, overwrite)``
    saves a computed one (default: :func:`save_frame`, with ``allow_nonfinite``). A folder
    holding a result of another identity raises :class:`ResultMismatch` unless ``overwrite``
    (which recomputes). Under :class:`read_only` nothing is computed: absent or foreign
    results raise :class:`MissingResult`.
    """
    directory = Path(directory)
    mode = readmode.current()
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
    value, seconds = usage.timed(compute)
    if usage.manifest_seconds({"extra": extra}) is None:  # the cold cost of what has no clock
        extra = {**(extra or {}), "compute_seconds": round(seconds, 2)}
    if save_as is not None:
        save_as(directory, value, ident, extra, overwrite)
    else:
        save_frame(directory, value, ident, extra=extra, overwrite=overwrite,
                   allow_nonfinite=allow_nonfinite)
    return value
