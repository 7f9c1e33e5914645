"""Saved results carry their provenance, and refuse to be silently overwritten.

Every result directory holds a ``manifest.json``: the kind of result, the config that made
it, the package version, the model id, the data slice, and a creation time. Saving into a
directory whose manifest records a *different* config (or kind) raises unless
``overwrite=True``; re-saving the same config replaces the files (same experiment, re-run).
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

__all__ = ["ProvenanceError", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"


class ProvenanceError(FileExistsError):
    """A result exists at the target path and was made with another configuration."""


def _version() -> str:
    from . import __version__

    return __version__


def write_manifest(
    directory: str | Path,
    kind: str,
    config: dict[str, Any],
    model_id: str | None = None,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Create ``directory`` and write its manifest, guarding an existing result.

    Args:
        directory: result folder.
        kind: what the result is (``"layer_scores"``, ``"moe_adapter"``, ...).
        config: the config as a JSON-ready dict (``Config.to_dict()``).
        model_id: model identifier (:func:`layerif.models.model_id`).
        data: the data slice (task, split, example ids, ...).
        extra: anything else worth recording.
        overwrite: replace a result that was made with a different config.

    Returns:
        The manifest path.

    Raises:
        ProvenanceError: the folder holds a result of another kind or config and
            ``overwrite`` is False.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old.get("kind") != kind or old.get("config") != json.loads(json.dumps(config)):
            raise ProvenanceError(
                f"{directory} already holds a {old.get('kind')!r} result made with another "
                f"config ({old.get('config')}); pass overwrite=True to replace it"
            )
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "config": config,
        "layerif_version": _version(),
        "model_id": model_id,
        "data": data or {},
        "extra": extra or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def read_manifest(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a result's manifest, checking its kind when given."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: not a layerif result")
    manifest = json.loads(path.read_text())
    if kind is not None and manifest.get("kind") != kind:
        raise ValueError(f"{directory} holds a {manifest.get('kind')!r} result, not {kind!r}")
    return manifest
