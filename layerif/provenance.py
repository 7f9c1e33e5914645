"""Backward-compatible names for :mod:`layerif.store`, which now guards saved results.

``ProvenanceError`` (the base of :class:`layerif.store.ResultMismatch`), ``MANIFEST`` and
``read_manifest`` (:func:`layerif.store.load_manifest`) stay importable from here. Results
are written through :func:`layerif.store.save`, atomically and guarded by their identity.
"""
from __future__ import annotations

from .store import MANIFEST, ProvenanceError, ResultMismatch
from .store import load_manifest as read_manifest

__all__ = ["MANIFEST", "ProvenanceError", "ResultMismatch", "read_manifest"]
