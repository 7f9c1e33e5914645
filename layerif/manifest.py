"""A result folder's ``manifest.json`` on disk and the integrity of the files it records.

Part of the results store (:mod:`layerif.store`): each file's size and sha256 recorded at
save (:func:`file_records`), the manifest written durably (:func:`write_manifest`) and read
back checked -- a JSON object with a kind and a record of files, every recorded file present
with that size and hash (:func:`load_manifest`) -- and :class:`CorruptResult`, naming the
damaged file, for anything that is not.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import fingerprint

__all__ = ["MANIFEST", "CorruptResult", "file_records", "load_manifest", "reading",
           "write_manifest"]

MANIFEST = "manifest.json"


class CorruptResult(ValueError):
    """A file of a saved result is damaged (truncated, not the format, not what its manifest
    records).

    Attributes:
        path: the damaged file.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(f"{self.path} is corrupt ({reason}): re-run with --overwrite "
                         "(overwrite=True) to compute the result again and replace it")


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn any failure to parse the saved file ``path`` into :class:`CorruptResult` naming it
    (a permission error stays what it is). For readers of a result's own files."""
    try:
        yield
    except (CorruptResult, PermissionError):
        raise
    except json.JSONDecodeError as err:
        raise CorruptResult(path, f"not valid JSON: {err}") from None
    except FileNotFoundError:
        raise CorruptResult(path, "missing from its result folder") from None
    except Exception as err:  # noqa: BLE001 - any parse error of a damaged file
        text = (str(err).strip().splitlines() or [""])[0]
        raise CorruptResult(path, f"{type(err).__name__}: {text}" if text else
                            type(err).__name__) from None


# -- writing -----------------------------------------------------------------------------
def _file_record(path: Path) -> dict:
    """Size and sha256 of a file just written, flushed to disk first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"bytes": path.stat().st_size, "sha256": fingerprint.file_sha256(path)}


def file_records(folder: Path) -> dict:
    """The manifest's ``"files"`` record of the files just written under ``folder``: each
    file's path relative to it (POSIX, sorted) -> its size and sha256, each flushed first."""
    return {p.relative_to(folder).as_posix(): _file_record(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` as ``folder``'s :data:`MANIFEST` (sorted keys, indented), flushed to
    disk before returning."""
    with open(folder / MANIFEST, "w") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# -- reading -----------------------------------------------------------------------------
def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        text = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: no result is saved there") from None
    with reading(path):
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
            raise ValueError(f"a JSON {type(manifest).__name__} without a 'kind', expected a "
                             "manifest object")
        files = manifest.get("files", {})
        if not (isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())):
            raise ValueError("its 'files' record is not an object of objects")
    return manifest


def _verify(directory: Path, manifest: dict) -> None:
    """Raise :class:`CorruptResult` for the first file that is not what the manifest records
    (manifests written before the record existed have none: nothing to check)."""
    for name, want in sorted(manifest.get("files", {}).items()):
        path = directory / name
        if not path.is_file():
            raise CorruptResult(path, "missing from its result folder")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise CorruptResult(path, f"{size} bytes where its manifest records "
                                      f"{want.get('bytes')}: truncated or rewritten")
        if fingerprint.file_sha256(path) != want.get("sha256"):
            raise CorruptResult(path, "its content differs from the sha256 its manifest records")


def load_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """The manifest of the result in ``directory``, its files checked against it, and its
    kind checked when given.

    Raises:
        FileNotFoundError: the folder holds no result.
        CorruptResult: the manifest or a file it records is damaged.
        ValueError: it holds a result of another kind.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    try:
        _verify(directory, manifest)
    except CorruptResult:
        again = _read_manifest(directory)  # replaced meanwhile by a concurrent save?
        if again == manifest:
            raise
        manifest = again
        _verify(directory, manifest)
    if kind is not None and manifest.get("kind") != kind:
        raise ValueError(f"kind={kind!r} is invalid: {directory} holds a "
                         f"{manifest.get('kind')!r} result")
    return manifest
