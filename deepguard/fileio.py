"""Atomic file writes: a crash never leaves a half-written file that looks finished."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
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
