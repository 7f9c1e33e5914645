"""Where layerif keeps files: its on-disk cache, the study's results, and the one rule that
turns a name into a folder name.

Torch-free, so low modules (data sources, the weights fingerprint, the store) can use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["PROFILES", "cache_dir", "results_dir", "slug", "study_root"]

PROFILES = ("smoke", "cpu", "paper")


def cache_dir() -> Path:
    """Root of layerif's on-disk cache (``$LAYERIF_CACHE``, default ``~/.cache/layerif``)."""
    return Path(os.environ.get("LAYERIF_CACHE", Path.home() / ".cache" / "layerif"))


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


def slug(name: Any) -> str:
    """A model, task or setting name as one path component (``org/model`` -> ``org--model``).

    The one rule for every result folder the study names.

    Raises:
        ValueError: the name gives no folder of its own (empty, ``.`` or ``..``).
    """
    out = str(name).strip("/").replace("/", "--").replace(":", "-").replace(" ", "_").replace("%", "pct")
    if out in ("", ".", ".."):
        raise ValueError(f"name={name!r} is invalid: it gives no folder name of its own")
    return out
