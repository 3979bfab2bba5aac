"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepguard.errors import OutputError
from deepguard.fileio import check_writable, default_file_mode, write_atomically


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
    with pytest.raises(OutputError, match=r"result.jpg: cannot write \(No space left on device\)"):
        write_atomically(target, b"half of a new result")
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.jpg"]


def test_check_writable_refuses_what_a_write_would_fail_on(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="not a folder"):
        check_writable(tmp_path / "afile" / "deeper" / "out.jpg")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path / "folder")
    check_writable(tmp_path / "new" / "sub" / "out.jpg")  # folders to be made are fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]  # nothing made


def test_a_write_under_a_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    with pytest.raises(OutputError, match=r"out\.jpg: cannot write"):
        write_atomically(tmp_path / "afile" / "out.jpg", b"data")


def test_partial_files_name_their_writer_and_stale_ones_are_removed(tmp_path: Path) -> None:
    from deepguard.fileio import remove_stale_partials, temporary_beside
    from tests.processes import dead_pid

    handle, partial = temporary_beside(tmp_path / "photo.jpg")
    os.close(handle)
    assert partial.name.startswith(f".photo.jpg.{os.getpid()}.")  # this process is writing it
    stale = [tmp_path / f".{name}.{dead_pid()}.abcd_123.part" for name in ("photo.jpg", "b.jpg")]
    for path in stale:
        path.write_bytes(b"half")
    assert remove_stale_partials(tmp_path, "photo.jpg") == [stale[0]]  # that output's only
    assert remove_stale_partials(tmp_path) == [stale[1]]
    assert partial.exists()  # its writer still runs
