"""How the ``layerif`` command tells expected failures (one line, exit 2) from bugs (a
traceback), and the checks it makes before any work (a writable result folder)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["check_writable", "one_line"]


def check_writable(folder, option: str) -> None:
    """Refuse, before any work, a result folder that cannot be created or written: the
    nearest existing folder at or above ``folder`` and above its parent must be writable."""
    folder = Path(folder).absolute()
    for start in (folder, folder.parent):
        probe = start
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise NotADirectoryError(f"{option} {str(folder)!r} cannot be created: {probe} is "
                                     "a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError(f"{option} {str(folder)!r} is not writable: {probe} is "
                                  "read-only; make it writable or write elsewhere")


#: OSErrors that are the machine's state, not a bug: one line, no traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _disk_full(err: BaseException) -> bool:
    """``err`` (or an error it was raised from) says the disk is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "StorageFull" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def one_line(err: BaseException) -> str | None:
    """The one-line message for an expected failure, None for a bug (keep its traceback)."""
    if _disk_full(err):
        where = getattr(err, "filename", None)
        return (f"no space left on the device{f' writing {where}' if where else ''}: free "
                "space or write the results elsewhere (--out / --results); nothing "
                "half-written was kept")
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
        return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                        PermissionError, RuntimeError)):
        return str(err) or type(err).__name__
    return None
