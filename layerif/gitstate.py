"""The git state of the study: the one rule for "which commit, with uncommitted changes?".

Used by the results store (each manifest's environment) and by the notebook run records.
Torch-free: the notebook runner imports it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["OUTPUT_PATHS", "git_state", "package_checkout"]

# Changes under these paths (relative to the root asked about) are the study's own outputs
# and do not make the tree "dirty": otherwise every result or notebook after the first of a
# build would be.
OUTPUT_PATHS = ("book/executed", "results")


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(root: str | Path) -> dict | None:
    """``{"commit", "dirty"}`` of the git work tree holding ``root``; None outside git.

    ``dirty`` is True when tracked or untracked files under ``root`` differ from HEAD,
    ignoring the study's outputs (:data:`OUTPUT_PATHS` under ``root``).
    """
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    excluded = [f":(exclude){p}" for p in OUTPUT_PATHS]
    status = _git(root, "status", "--porcelain", "--", ".", *excluded)
    if status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def package_checkout(package_dir: str | Path | None = None) -> Path | None:
    """The top of the git checkout that holds this package as its own ``layerif/``, or None.

    None when the package is not in a git work tree, or is an installed copy inside some
    other repository (whose state says nothing about this code).
    """
    here = Path(package_dir or Path(__file__).resolve().parent)
    top = _git(here, "rev-parse", "--show-toplevel")
    mine = Path(top) / here.name / "__init__.py" if top else None
    if mine is None or not mine.is_file() or not mine.resolve().samefile(here / "__init__.py"):
        return None
    return Path(top)
