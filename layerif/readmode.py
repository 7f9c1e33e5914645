"""The store's read-only mode: within ``with store.read_only(notebook, command):`` the one
load-or-compute (:func:`layerif.store.cached`) loads what is saved and never computes; a result
that is absent or saved under another identity raises :class:`MissingResult`, naming the
notebook whose run saves it and the command to run. Notebook 10 re-reads every notebook's
results this way. Pure state (a context variable): no files are read here.
"""
from __future__ import annotations

import contextvars

__all__ = ["MissingResult", "current", "is_read_only", "read_only"]


class MissingResult(FileNotFoundError):
    """A result asked for under :func:`read_only` is not saved, or saved under another identity.

    Its message names the notebook that produces the result and the command to run."""

    def __init__(self, notebook, what: list[str], command: str | None = None):
        self.notebooks = [notebook] if isinstance(notebook, str) else list(notebook)
        self.notebook, self.what = self.notebooks[0], list(what)
        shown = "; ".join(self.what[:4]) + (f" (+{len(self.what) - 4} more)" if len(self.what) > 4 else "")
        names = " ".join(self.notebooks)
        run = command or f"layerif run {names}"
        super().__init__(f"{'notebooks' if len(self.notebooks) > 1 else 'notebook'} {names} "
                         f"saved no {shown}: run `{run}`")


_MODE = contextvars.ContextVar("layerif_store_read_only", default=None)


class read_only:
    """Within ``with store.read_only(notebook, command):`` :func:`layerif.store.cached` never computes.

    A result that is absent, or saved under another identity, raises :class:`MissingResult`
    naming ``notebook`` (the one whose run saves it) and ``command`` (how to run it).
    Notebook 10 re-reads every notebook's results this way."""

    def __init__(self, notebook: str, command: str | None = None):
        self.notebook, self.command = notebook, command
        self._token = None

    def __enter__(self) -> "read_only":
        self._token = _MODE.set((self.notebook, self.command))
        return self

    def __exit__(self, *exc) -> None:
        _MODE.reset(self._token)


def is_read_only() -> bool:
    """Whether the caller is inside :class:`read_only`."""
    return _MODE.get() is not None


def current() -> tuple[str, str | None] | None:
    """``(notebook, command)`` of the enclosing :class:`read_only`, or None outside one."""
    return _MODE.get()
