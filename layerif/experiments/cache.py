"""Load a saved result table, or compute and save it: the one resume rule of the study."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .. import store

__all__ = ["cached_frame", "slug"]


def cached_frame(directory: str | Path, ident: dict, compute: Callable[[], pd.DataFrame | pd.Series],
                 overwrite: bool = False, extra: dict | None = None):
    """The table saved in ``directory`` under identity ``ident``, computed only if absent.

    A folder holding a result of another identity raises :class:`layerif.store.ResultMismatch`
    (nothing stale or foreign is read silently) unless ``overwrite``, which recomputes.
    """
    if not overwrite:
        found = store.load_frame(directory, ident)
        if found is not None:
            return found
    frame = compute()
    store.save_frame(directory, frame, ident, extra=extra, overwrite=overwrite)
    return frame


def slug(name: str) -> str:
    """A model or task name as one path component (``org/model`` -> ``org--model``)."""
    return str(name).strip("/").replace("/", "--").replace(":", "-")
