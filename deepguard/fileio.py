"""Atomic file writes: a crash never leaves a half-written file that looks finished.

A temporary file is named ``.NAME.PID.RANDOM.part`` after the process writing it, so one
left by a process that was killed can be told from one still being written, and removed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import psutil

#: ``.NAME.PID.RANDOM.part``: mkstemp's eight random characters
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.part$")


def default_file_mode() -> int:
    """The permissions a plain ``open(..., "w")`` would give (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_beside(path: Path) -> tuple[int, Path]:
    """An open descriptor and name for a hidden temporary file next to ``path``.

    ``mkstemp`` creates files readable by the owner only; results are meant to be shared,
    so the temporary gets the usual permissions before it is renamed into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=path.parent)
    os.fchmod(handle, default_file_mode())
    return handle, Path(name)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    handle, tmp = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files in ``folder`` (those for ``name`` only, if given) whose
    writing process no longer runs; returns them."""
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _PARTIAL.match(path.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if not psutil.pid_exists(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
