"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepguard.fileio import default_file_mode, write_atomically


def test_write_lands_whole_with_default_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.jpg"
    write_atomically(target, b"protected bytes")
    assert target.read_bytes() == b"protected bytes"
    assert target.stat().st_mode & 0o777 == default_file_mode()
    assert [p.name for p in target.parent.iterdir()] == ["result.jpg"]


def test_failed_write_leaves_nothing_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.jpg"
    target.write_bytes(b"previous result")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"half of a new result")
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.jpg"]
