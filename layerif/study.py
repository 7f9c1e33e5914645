"""Run the study's notebooks with a parameter profile, know which are current, build the book.

Sources and parameters
    A notebook's source is a jupytext MyST file ``notebooks/<name>.md``; run order is the
    sorted file names. Its parameters for a profile live in ``params/<profile>/<name>.yaml``
    (papermill injects them after the cell tagged ``parameters``; ``profile`` is always
    injected). A notebook that reads results saved by earlier ones declares them in its
    front matter, as a top-level key beside ``jupytext`` and ``kernelspec``::

        ---
        jupytext: ...
        kernelspec: ...
        layerif:
          needs: [01_layer_scores]
        ---

    ``jupytext.read`` keeps this key in ``notebook.metadata["layerif"]``. (Hand-edit the
    ``.md``; if you regenerate it with jupytext, add ``notebook_metadata_filter: layerif``
    under ``jupytext:`` or jupytext drops the key on write.) Every name in ``needs`` must be
    a notebook earlier in run order, else ``ValueError``.

Where executed notebooks go
    ``cpu`` (the book's profile) -> ``book/executed/<name>.ipynb``, committed to git so a
    fresh clone renders the book without re-running; ``smoke`` and ``paper`` ->
    ``results/<profile>/executed/<name>.ipynb`` (git-ignored). Profiles never overwrite each
    other's notebooks. Executing one notebook is :mod:`layerif.notebook_exec`: the kernel
    runs without progress bars (its ``QUIET_ENV``), what still reaches stderr is moved out of
    the executed notebook into the git-ignored ``.stamps/<name>.stderr.txt`` (its
    ``quiet_outputs``), the run record is attached and a failure marker written: the book
    shows results only.

When a notebook runs
    Its *digest* covers the source bytes, the merged parameters, the profile and, for every
    notebook in ``needs``, the digest and ``run_id`` recorded in that notebook's executed
    file (see :mod:`layerif.notebook_record`). A notebook is skipped when its executed file
    records the same digest and its last attempt did not fail; so editing or forcing an
    upstream notebook (a forced run records a new ``run_id``) makes its dependents re-run,
    and :func:`run_all` runs in order, so one call brings everything up to date.

The record, and failures
    The record (digest, inputs, run_id, git commit and dirty flag, layerif version, start
    time, wall time, host) lives in the executed notebook's ``metadata["layerif"]``, and a
    markdown note under the title shows it in the book. The executed file is written only on
    success, atomically (temporary file + rename), so it is never half-written. A failed run
    keeps the previous executed notebook (it is still the honest output of its recorded
    inputs) and writes, git-ignored beside it, ``.stamps/<name>.failed.json`` (the error)
    and ``.stamps/<name>.failed.ipynb`` (the notebook as far as it ran). While that marker
    exists the notebook is reported ``failed`` and is never skipped; the next success
    removes it. A fresh clone has no markers, so its committed notebooks are judged by
    their digests alone.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from . import notebook_record as rec
from . import store
from .notebook_exec import execute
from .notebook_params import (cell_params, check_param_types, list_notebooks, load_params,  # noqa: F401
                              needs_of, notebook_source, parameter_defaults, parameter_names,
                              read_params_file)
from ._config import check

log = logging.getLogger(__name__)

__all__ = [
    "BOOK_PROFILE",
    "PROFILES",
    "build_book",
    "executed_dir",
    "list_notebooks",
    "load_params",
    "needs_of",
    "check_param_types",
    "parameter_defaults",
    "parameter_names",
    "params_dir",
    "ran_since",
    "read_params_file",
    "render_book",
    "repo_root",
    "results_dir",
    "run_all",
    "run_notebook",
    "run_with_params",
    "status",
    "sync_notebooks",
]

PROFILES = store.PROFILES
BOOK_PROFILE = "cpu"
# jupyter-book's flags for the book: every Sphinx warning (and every missing reference) is an
# error, reported all together at the end; --all re-reads every page so none is skipped.
RENDER_FLAGS = ("-W", "-n", "--keep-going", "--all")
#: File mode of executed notebooks (readable by all, like the sources they come from).
EXECUTED_MODE = 0o644


def repo_root() -> Path:
    """The study's root folder (``$LAYERIF_ROOT``, else the checkout holding this package)."""
    return store.study_root()


def _check_profile(profile: str) -> None:
    check(profile in PROFILES, "profile", profile, f"one of {PROFILES}")


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """Where notebooks of ``profile`` write results that later notebooks read back."""
    _check_profile(profile)
    return store.results_dir(profile, root)


def executed_dir(profile: str, root: str | Path | None = None) -> Path:
    """Where executed notebooks of ``profile`` go: ``book/executed`` for ``cpu``, else
    ``results/<profile>/executed``."""
    _check_profile(profile)
    if profile == BOOK_PROFILE:
        return Path(root or repo_root()) / "book" / "executed"
    return results_dir(profile, root) / "executed"


def _failure_marker(out_dir: Path, name: str) -> Path:
    return out_dir / ".stamps" / f"{name}.failed.json"


def _current_inputs(name: str, profile: str, root: Path, out_dir: Path,
                    params: dict | None = None) -> tuple[dict, list[str]]:
    """The inputs a run of ``name`` would record now, and the upstream names lacking a record
    (upstream executed notebooks are looked up in ``out_dir``)."""
    merged = {**load_params(name, profile, root), **(params or {})}
    refs = {n: rec.upstream_ref(rec.read_record(out_dir / f"{n}.ipynb"))
            for n in needs_of(name, root)}
    missing = [n for n, ref in refs.items() if ref is None]
    return rec.make_inputs(notebook_source(name, root).read_bytes(), profile, merged, refs), missing


def run_notebook(
    name: str,
    profile: str = "cpu",
    params: dict | None = None,
    root: str | Path | None = None,
    output_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    upstream_dir: str | Path | None = None,
) -> Path:
    """Execute one notebook with papermill unless it is current; return the executed path.

    Args:
        name: notebook stem, e.g. ``"00_model_and_data"``.
        profile: ``smoke`` | ``cpu`` | ``paper``; selects ``params/<profile>/<name>.yaml``.
        params: extra parameters overriding the profile's file (they enter the digest).
        root: study root (default :func:`repo_root`).
        output_dir: where to write and find upstream notebooks (default :func:`executed_dir`).
        force: run even when the notebook is current (records a new ``run_id``).
        progress: show papermill's cell progress bar.
        upstream_dir: where the executed notebooks of ``needs`` are read (default
            ``output_dir``); :func:`run_with_params` points it at the profile's folder.

    Returns:
        ``<output_dir>/<name>.ipynb``, holding a record of the run that produced it.

    Raises:
        ValueError: unknown notebook or profile, or a bad ``needs``.
        FileNotFoundError: an upstream notebook has no executed record in ``output_dir``.
        Exception: whatever the notebook raised (papermill's execution error); the
            previous executed notebook is kept and marked failed.
    """
    root = Path(root or repo_root())
    out_dir = Path(output_dir or executed_dir(profile, root))
    up_dir = Path(upstream_dir or out_dir)
    inputs, missing = _current_inputs(name, profile, root, up_dir, params)
    if missing:
        raise FileNotFoundError(
            f"{name} needs {missing}, which have no executed notebook in {up_dir}: run "
            f"`layerif run {' '.join(missing)} --profile {profile}` first")
    target, marker = out_dir / f"{name}.ipynb", _failure_marker(out_dir, name)
    recorded = rec.read_record(target) or {}
    if not force and not marker.exists() and recorded.get("digest") == rec.digest(inputs):
        log.info("%s is current (digest %s); skipped", name, recorded["digest"][:12])
        return target
    nb = execute(name, inputs, root, marker, progress)
    rec.write_atomic(nb, target)
    os.chmod(target, EXECUTED_MODE)  # the temporary file's 0600 would hide it from others
    marker.unlink(missing_ok=True)
    marker.with_suffix(".ipynb").unlink(missing_ok=True)
    return target


def params_dir(profile: str, params: dict, root: str | Path | None = None) -> Path:
    """Where notebooks run with override ``params`` go:
    ``results/<profile>/with-params/<sha256 of the params' canonical JSON, 12 digits>``."""
    import hashlib

    key = hashlib.sha256(json.dumps(rec.normalise(params), sort_keys=True).encode())
    return results_dir(profile, root) / "with-params" / key.hexdigest()[:12]


def run_with_params(name: str, profile: str, params_file: str | Path,
                    root: str | Path | None = None, force: bool = False,
                    progress: bool = True) -> Path:
    """Run ``name`` with the profile's parameters overridden by a YAML file's.

    The executed notebook goes to :func:`params_dir` (never to the profile's executed folder,
    so ``status`` and the book keep showing the profile's own run), and its record holds the
    merged parameters. Upstream notebooks are the profile's own (``needs`` are looked up in
    :func:`executed_dir`). Results the notebook saves go through the store into the profile's
    results folder as usual: one whose identity the override changes is refused there
    (``store.ResultMismatch``) rather than replacing the profile's.

    Raises:
        ValueError: a key that is not one of the notebook's parameters, a value whose type
            is not its default's (:func:`check_param_types`), or ``profile``.
    """
    root = Path(root or repo_root())
    params = read_params_file(params_file)
    accepted = [k for k in parameter_names(name, root) if k != "profile"]
    accepted += [k for k in load_params(name, profile, root) if k not in accepted + ["profile"]]
    unknown = [k for k in params if k not in accepted]
    check(not unknown, f"--params {str(params_file)!r} keys", unknown,
          f"parameters of {name}: {', '.join(accepted)} (the profile comes from --profile)")
    check_param_types(name, profile, params, f"--params {str(params_file)!r}:", root)
    return run_notebook(name, profile, params=params, root=root, force=force, progress=progress,
                        output_dir=params_dir(profile, params, root),
                        upstream_dir=executed_dir(profile, root))


def ran_since(executed: str | Path, since: dt.datetime) -> bool:
    """Whether the executed notebook at ``executed`` was produced by a run that started at
    or after ``since`` (timezone-aware), i.e. it ran rather than was skipped as current."""
    record = rec.read_record(executed) or {}
    if "run_id" not in record:
        return False
    started = dt.datetime.strptime(record["run_id"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return started.replace(tzinfo=dt.timezone.utc) >= since


def _advice(name: str, profile: str, state: str, changed: list[str], error: str) -> str:
    rerun = f"run `layerif run {name} --profile {profile}`"
    if state == "current":
        return ""
    if state == "missing":
        return f"{name} has no executed notebook for profile {profile!r}: {rerun}"
    if state == "failed":
        return f"the last run of {name} failed ({error}): fix it and {rerun}"
    why = {"source": f"notebooks/{name}.md edited without re-running it",
           "params": f"params/{profile}/{name}.yaml changed without re-running it",
           "profile": f"it records another profile than {profile!r}",
           "record": "its executed notebook holds no layerif record"}
    parts = [why.get(c, f"upstream {c.split(':', 1)[-1]} re-ran (or lost its record) "
                        f"since {name} ran") for c in changed]
    return f"{'; '.join(parts)}: {rerun}"


def _status_row(name: str, profile: str, root: Path, out_dir: Path) -> dict:
    target, marker = out_dir / f"{name}.ipynb", _failure_marker(out_dir, name)
    recorded = rec.read_record(target)
    inputs, missing = _current_inputs(name, profile, root, out_dir)
    error = json.loads(marker.read_text())["error"] if marker.exists() else ""
    changed = [f"upstream:{n}" for n in missing]
    if recorded is not None and not missing:
        changed = rec.changed_inputs(recorded, inputs)
    elif recorded is None and target.exists():
        changed = ["record"]
    state = ("failed" if error else "missing" if not target.exists()
             else "stale" if changed else "current")
    row = {"notebook": name, "state": state, "changed": ", ".join(changed),
           "message": _advice(name, profile, state, changed, error), "path": str(target)}
    for key in ("run_id", "commit", "dirty", "wall_s"):
        row[key] = (recorded or {}).get(key)
    return row


def status(profile: str = "cpu", root: str | Path | None = None) -> pd.DataFrame:
    """One row per notebook (index: name, in run order) saying whether its executed
    notebook for ``profile`` is current.

    Columns: ``state`` (``current`` | ``stale`` | ``missing`` | ``failed``), ``changed``
    (for stale: which inputs differ, among ``source``, ``profile``, ``params``,
    ``upstream:<name>`` and ``record``), ``message`` (what happened and the command that
    fixes it; empty when current), ``path``, and the record's ``run_id``, ``commit``,
    ``dirty``, ``wall_s``. ``failed`` means the last attempt failed (its marker exists),
    whether or not an older executed notebook is kept.
    """
    root = Path(root or repo_root())
    out_dir = executed_dir(profile, root)
    rows = [_status_row(n, profile, root, out_dir) for n in list_notebooks(root)]
    columns = ["notebook", "state", "changed", "message", "path", "run_id", "commit",
               "dirty", "wall_s"]
    return pd.DataFrame(rows, columns=columns).set_index("notebook")


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
    """Run every notebook in order for ``profile`` (each skipped when current).

    Every notebook's ``needs`` is validated before the first runs; stops at the first
    failure. ``force`` re-runs all of them.
    """
    names = list_notebooks(root)
    for name in names:
        needs_of(name, root)
    return [run_notebook(n, profile, root=root, force=force, progress=progress) for n in names]


def build_book(profile: str = "cpu", root: str | Path | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Bring every notebook of ``profile`` up to date; for ``cpu``, also render the book.

    The book always shows the ``cpu`` notebooks (``book/executed``, which ``_toc.yml``
    lists). With ``smoke`` or ``paper`` the notebooks are only run, into
    ``results/<profile>/executed``, and nothing is rendered.

    Returns:
        ``_build/html/index.html`` for ``cpu``; the executed folder for other profiles.
    """
    root = Path(root or repo_root())
    run_all(profile, root=root, force=force, progress=progress)
    if profile != BOOK_PROFILE:
        return executed_dir(profile, root)
    return render_book(root)


def render_book(root: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Render the book from the executed notebooks as they are (nothing is executed).

    Runs ``jupyter-book build ROOT`` with :data:`RENDER_FLAGS`: any Sphinx warning, or a
    reference that does not resolve, fails the build.

    Args:
        root: the study root (``_config.yml``, ``_toc.yml``).
        output: folder that receives ``_build/`` (default: ``root``).

    Returns:
        ``<output>/_build/html/index.html``.

    Raises:
        RuntimeError: the build failed or warned (its last lines are in the message).
    """
    root = Path(root or repo_root())
    out = Path(output or root)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), *RENDER_FLAGS,
           "--path-output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    index = out / "_build" / "html" / "index.html"
    if done.returncode != 0 or not index.exists():
        # Sphinx writes its warnings to stderr, its progress to stdout.
        text = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr.strip() or done.stdout)  # colours
        tail = "\n".join(text.strip().splitlines()[-30:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    return index
