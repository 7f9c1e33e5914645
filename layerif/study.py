"""Run the study's notebooks with a parameter profile, and build the book.

A notebook's source is a jupytext MyST file ``notebooks/<name>.md``; its parameters for a
profile live in ``params/<profile>/<name>.yaml`` (papermill injects them after the cell
tagged ``parameters``). Executed notebooks go to ``book/executed/<name>.ipynb``, where the
book picks them up. A notebook whose source, parameters and profile are unchanged since its
last *successful* run is skipped; a failed run leaves no stamp, so it is retried next time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

__all__ = [
    "PROFILES",
    "build_book",
    "list_notebooks",
    "load_params",
    "repo_root",
    "results_dir",
    "run_all",
    "run_notebook",
    "sync_notebooks",
]

PROFILES = ("smoke", "cpu", "paper")


def repo_root() -> Path:
    """The study's root folder (``$LAYERIF_ROOT``, else the checkout holding this package)."""
    env = os.environ.get("LAYERIF_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """Where notebooks of ``profile`` write results that later notebooks read back."""
    _check_profile(profile)
    return Path(root or repo_root()) / "results" / profile


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown: choose from {PROFILES}")


def list_notebooks(root: str | Path | None = None) -> list[str]:
    """Notebook names (file stems under ``notebooks/``) in run order."""
    folder = Path(root or repo_root()) / "notebooks"
    return sorted(p.stem for p in folder.glob("*.md"))


def load_params(name: str, profile: str, root: str | Path | None = None) -> dict:
    """The papermill parameters of notebook ``name`` for ``profile`` (``{}`` if no file).

    ``profile`` itself is always injected, so notebooks know where to write results.
    """
    _check_profile(profile)
    path = Path(root or repo_root()) / "params" / profile / f"{name}.yaml"
    params = {}
    if path.exists():
        params = yaml.safe_load(path.read_text()) or {}
        if not isinstance(params, dict):
            raise ValueError(f"{path} must hold a mapping of parameter names to values")
    params.setdefault("profile", profile)
    return params


def _digest(source: Path, params: dict) -> str:
    h = hashlib.sha256()
    h.update(source.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def run_notebook(
    name: str,
    profile: str = "cpu",
    params: dict | None = None,
    root: str | Path | None = None,
    output_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Execute one notebook with papermill and return the executed ``.ipynb`` path.

    Args:
        name: notebook stem, e.g. ``"00_model_and_data"``.
        profile: ``smoke`` | ``cpu`` | ``paper``; selects ``params/<profile>/<name>.yaml``.
        params: extra parameters overriding the profile's file.
        root: study root (default :func:`repo_root`).
        output_dir: where to write (default ``book/executed``).
        force: run even when nothing changed since the last successful run.
        progress: show papermill's cell progress bar.
    """
    import jupytext
    import papermill

    root = Path(root or repo_root())
    source = root / "notebooks" / f"{name}.md"
    if not source.exists():
        raise ValueError(f"name={name!r} is not a notebook: choose from {list_notebooks(root)}")
    merged = {**load_params(name, profile, root), **(params or {})}
    out_dir = Path(output_dir or root / "book" / "executed")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.ipynb"
    stamp = out_dir / ".stamps" / f"{name}.json"
    digest = _digest(source, merged)
    if not force and target.exists() and stamp.exists():
        if json.loads(stamp.read_text()).get("digest") == digest:
            log.info("%s unchanged since its last run; skipped", name)
            return target
    stamp.unlink(missing_ok=True)
    notebook = jupytext.read(source)
    staged = out_dir / f".{name}.input.ipynb"
    jupytext.write(notebook, staged, fmt="ipynb")
    try:
        papermill.execute_notebook(
            str(staged), str(target), parameters=merged, cwd=str(root / "notebooks"),
            kernel_name="python3", progress_bar=progress, log_output=False,
        )
    finally:
        staged.unlink(missing_ok=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"digest": digest, "profile": profile, "params": merged}, indent=2))
    return target


def sync_notebooks(root: str | Path | None = None) -> list[Path]:
    """Write ``notebooks/<name>.ipynb`` beside each MyST source, for nbval to collect.

    The ``.ipynb`` copies are build products (git-ignored); their parameter cells keep the
    source's smoke defaults. Only notebooks whose source is newer are rewritten.
    """
    import jupytext

    root = Path(root or repo_root())
    written = []
    for name in list_notebooks(root):
        src = root / "notebooks" / f"{name}.md"
        dst = src.with_suffix(".ipynb")
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            jupytext.write(jupytext.read(src), dst, fmt="ipynb")
        written.append(dst)
    return written


def run_all(profile: str = "cpu", root: str | Path | None = None, force: bool = False,
            progress: bool = True) -> list[Path]:
    """Run every notebook in order for ``profile``; stops at the first failure."""
    return [run_notebook(n, profile, root=root, force=force, progress=progress)
            for n in list_notebooks(root)]


def build_book(profile: str = "cpu", root: str | Path | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Execute all notebooks for ``profile`` and render the book; returns its index.html."""
    root = Path(root or repo_root())
    run_all(profile, root=root, force=force, progress=progress)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root)]
    subprocess.run(cmd, check=True)
    index = root / "_build" / "html" / "index.html"
    if not index.exists():
        raise RuntimeError(f"jupyter-book finished but {index} is missing")
    return index
