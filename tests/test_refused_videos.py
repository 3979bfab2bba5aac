"""A damaged clip is refused by ``deepguard protect`` in one line, before any Ray work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import damaged_copy, faststart_copy, make_clip


@pytest.fixture(scope="module")
def clip(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("damaged")
    return make_clip(videos_dir / "lp_d11.mp4", folder / "talk.mp4", 20, size=(128, 128))


def _cut_with_index_first(clip: Path, target: Path) -> Path:
    whole = faststart_copy(clip, target.with_name("whole.mp4")).read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    return target


def _corrupt_mid_file(clip: Path, target: Path) -> Path:
    return damaged_copy(clip, target)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_cut_with_index_first, "truncated or corrupt video: decoded"),
        (_corrupt_mid_file, "not a readable video"),
    ],
)
def test_damaged_clip_gives_one_line_and_leaves_nothing(
    make, message: str, clip: Path, tmp_path: Path
) -> None:
    source = make(clip, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    out.mkdir()
    before = set(tmp_path.iterdir())
    # a fresh process: Ray prints its own noise from background threads and at exit
    result = subprocess.run(
        [sys.executable, "-m", "deepguard.cli", "protect", str(source), "-o",
         str(out / "clip.mp4"), "--detectors", "yunet", "--tools", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"deepguard: error: {source.name}: ") and message in lines[0]
    assert set(tmp_path.iterdir()) == before and not list(out.iterdir())
