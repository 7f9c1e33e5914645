"""A local checkpoint's identity: a fingerprint of its weights, not its path.

A result computed on a local checkpoint folder is saved under the model id
``weights-sha256:<hex>``: the sha256 over the sorted ``(file name, size, content sha256)``
of the folder's weight files (``*.safetensors``, ``*.bin``), its ``config.json`` and its
tokenizer files. Overwriting the weights, or naming the same relative path from another
directory, gives another id, so a result of the old weights is refused instead of reused.
The folder's absolute path is kept only as a label (:func:`label`, written into the
manifest outside the identity).

Embedded model names and hub ids are their own id (unchanged). Each file's content hash is
computed once: it is cached in memory and on disk (``$LAYERIF_CACHE/fingerprints``), keyed
by the file's absolute path, size, mtime, ctime and inode, so any rewrite is noticed.
Torch-free.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from .embedded import EMBEDDED_MODELS
from .paths import cache_dir

__all__ = ["PREFIX", "checkpoint_files", "digest_of", "file_sha256", "label", "model_key",
           "weights_fingerprint"]

PREFIX = "weights-sha256:"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_LABELS: dict[str, str] = {}
_CHUNK = 1 << 20


def _counts(name: str) -> bool:
    """A file of a checkpoint folder that decides a result: weights, config, tokenizer."""
    low = name.lower()
    return (low.endswith(WEIGHT_SUFFIXES) or low == "config.json" or "token" in low
            or low in ("vocab.json", "merges.txt") or low.endswith((".model", ".tiktoken")))


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The files of a checkpoint folder that enter its fingerprint, sorted by name; ``[]``
    when the folder holds no weight file (then it is no checkpoint)."""
    files = sorted((p for p in Path(directory).iterdir() if p.is_file() and _counts(p.name)),
                   key=lambda p: p.name)
    return files if any(p.name.lower().endswith(WEIGHT_SUFFIXES) for p in files) else []


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _disk_entry(path: str) -> Path:
    return cache_dir() / "fingerprints" / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.json"


@functools.lru_cache(maxsize=4096)
def digest_of(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """The content sha256 of the file at absolute ``path`` in the state given by its stat
    fields: read from the on-disk cache when that state was hashed before, else hashed and
    recorded (memoised in memory too)."""
    key = [path, size, mtime_ns, ctime_ns, inode]
    entry = _disk_entry(path)
    try:
        saved = json.loads(entry.read_text())
        if saved.get("key") == key and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:  # best effort: a read-only cache only costs a re-hash next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:
        pass
    return digest


def weights_fingerprint(directory: str | Path) -> str:
    """sha256 (hex) over the sorted ``(name, size, content sha256)`` of
    :func:`checkpoint_files`.

    Raises:
        ValueError: the folder holds no weight file.
    """
    files = checkpoint_files(directory)
    if not files:
        raise ValueError(f"model folder {str(directory)!r} holds no weight files "
                         f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    rows = []
    for p in files:
        st = p.stat()
        rows.append([p.name, st.st_size, digest_of(str(p.resolve()), st.st_size, st.st_mtime_ns,
                                                   st.st_ctime_ns, st.st_ino)])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def model_key(name: str) -> str:
    """The model id a result of model ``name`` is saved under.

    An embedded model name (checked first, as :func:`layerif.load_model` does) or anything
    that is not a local checkpoint folder (a hub id, a label) is returned unchanged; a local
    folder holding weight files gives ``weights-sha256:<fingerprint>``, its absolute path
    being remembered as the :func:`label` of that id.
    """
    if not isinstance(name, str) or name in EMBEDDED_MODELS or name.startswith(PREFIX):
        return name
    path = Path(name).expanduser()
    if not path.is_dir() or not checkpoint_files(path):
        return name
    key = PREFIX + weights_fingerprint(path)
    _LABELS[key] = str(path.resolve())
    return key


def label(key: str | None) -> str | None:
    """The absolute folder a fingerprinted model id was last computed from in this process
    (None for other ids): shown beside the id, never part of it."""
    return _LABELS.get(key) if isinstance(key, str) else None
