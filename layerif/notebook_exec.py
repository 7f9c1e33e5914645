"""Execute one notebook with papermill, quietly, and return it with its run record.

The kernel runs under :data:`QUIET_ENV` (no progress bars); what still reaches stderr is
moved out of the executed notebook (:func:`quiet_outputs`) into ``<name>.stderr.txt``. A
failed run leaves its partial notebook and a one-line error beside the failure marker.
Deciding whether to run, and where the result goes, is :mod:`layerif.study`'s.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from pathlib import Path

from . import notebook_record as rec
from . import usage

__all__ = ["QUIET_ENV", "execute", "quiet_outputs"]

#: The kernel's environment while a notebook executes: no progress bars (tqdm's defaults and
#: the hub's / transformers' "Loading weights"), no "IProgress not found" warning. What still
#: reaches stderr is moved out of the notebook by :func:`quiet_outputs`.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore:IProgress not found"}


def execute(name: str, inputs: dict, root: Path, marker: Path, progress: bool):
    """Run ``notebooks/<name>.md`` under ``root`` with ``inputs["params"]`` into the folder of
    ``marker`` (the git-ignored ``.stamps``); return the executed notebook with its record
    (:func:`layerif.notebook_record.make_record` of ``inputs``, with the stored results the
    execution read or computed: :mod:`layerif.usage`). ``progress``: papermill's
    cell progress bar.

    On failure the partial notebook is kept as ``<marker>.ipynb`` and the error written to
    ``marker``, then the exception propagates.
    """
    import jupytext
    import nbformat
    import papermill

    marker.parent.mkdir(parents=True, exist_ok=True)
    running = marker.parent / f"{name}.running.ipynb"
    started, clock = dt.datetime.now(dt.timezone.utc), time.monotonic()
    uses = marker.parent / f"{name}.results.jsonl"
    try:
        with _environment(QUIET_ENV), usage.recording(uses):
            papermill.execute_notebook(
                jupytext.read(root / "notebooks" / f"{name}.md"), str(running),
                parameters=inputs["params"], cwd=str(root / "notebooks"), kernel_name="python3",
                progress_bar=progress, log_output=False,
            )
    except BaseException as err:
        uses.unlink(missing_ok=True)
        if running.exists():
            os.replace(running, marker.with_suffix(".ipynb"))
        # papermill's error names the notebook's own exception; others give their message.
        kind = getattr(err, "ename", type(err).__name__)
        text = (str(getattr(err, "evalue", err)).strip().splitlines() or [""])[0]
        marker.write_text(json.dumps({
            "error": f"{kind}: {text}"[:500],
            "digest": rec.digest(inputs), "at": started.isoformat(timespec="seconds"),
        }, indent=2))
        raise
    nb, stderr = quiet_outputs(nbformat.read(running, as_version=4))
    (marker.parent / f"{name}.stderr.txt").write_text(stderr)
    running.unlink()
    record = rec.make_record(inputs, started, time.monotonic() - clock, root,
                             f"notebooks/{name}.md", results=usage.read(uses, root))
    uses.unlink()
    return rec.with_record(nb, record)


@contextlib.contextmanager
def _environment(values: dict):
    """Set environment variables (a kernel started inside inherits them); restore on exit.
    ``PYTHONWARNINGS`` is appended to, not replaced."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        old = saved[key] if key == "PYTHONWARNINGS" else None
        os.environ[key] = f"{old},{value}" if old else value
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def quiet_outputs(nb):
    """``(nb, text)``: the notebook without its stderr stream outputs (progress bars, library
    warnings: the book shows results only) and the text they held, cell by cell."""
    removed = []
    for index, cell in enumerate(nb.cells):
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                removed.append(f"[cell {index}] {output.get('text', '')}")
            else:
                kept.append(output)
        if cell.cell_type == "code":
            cell.outputs = kept
    return nb, "".join(removed)
