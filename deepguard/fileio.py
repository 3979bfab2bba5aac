"""Atomic file writes: a crash never leaves a half-written file that looks finished.

A write that fails (no permission, a full disk, a file where a folder should be) is an
:class:`~deepguard.errors.OutputError`: one line for the user, and nothing left behind.

A temporary file is named ``.NAME.PID.RANDOM.part`` after the process writing it, so one
left by a process that was killed can be told from one still being written, and removed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import psutil

from deepguard.errors import OutputError

#: ``.NAME.PID.RANDOM.part``: mkstemp's eight random characters
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.part$")


def default_file_mode() -> int:
    """The permissions a plain ``open(..., "w")`` would give (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_error(path: Path, error: OSError) -> OutputError:
    """One line for a write that the system refused, e.g. ``out.jpg: cannot write (No space
    left on device)``."""
    reason = error.strerror or str(error) or type(error).__name__
    return OutputError(f"{path}: cannot write ({reason})")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output that cannot be written: a folder in its place, a
    file where a folder should be, a folder we may not write to (checked by creating and
    removing a hidden file there, which also catches read-only mounts)."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name a file to write")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot write ({folder} is not a folder)")
    try:
        with tempfile.NamedTemporaryFile(prefix=".deepguard-", suffix=".part", dir=folder):
            pass
    except OSError as error:
        raise write_error(path, error) from None


def temporary_beside(path: Path) -> tuple[int, Path]:
    """An open descriptor and name for a hidden temporary file next to ``path``.

    ``mkstemp`` creates files readable by the owner only; results are meant to be shared,
    so the temporary gets the usual permissions before it is renamed into place.
    """
    prefix = f".{path.name}.{os.getpid()}."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
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
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
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
