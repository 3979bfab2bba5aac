"""``protect`` on inputs and outputs it must handle or refuse cleanly: one line on stderr,
exit 2, nothing left behind, the original never replaced unasked, and output problems found
before the attack runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepguard.attack.metrics import ssim
from deepguard.attack.transforms import resize
from deepguard.cli import main
from deepguard.settings import get_settings
from deepguard.stages.poison import PoisonStage
from tests.conftest import REPO_ROOT
from tests.fuzzing import CHEAP_ATTACK, huge_png, time_limit

IS_ROOT = os.geteuid() == 0


def protect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``deepguard protect ARGS`` (cheap attack) in this process: (exit code, stderr)."""
    with time_limit(60):  # a hang fails the test instead of stalling the suite
        code = main(["protect", *args, *CHEAP_ATTACK])
    return code, capsys.readouterr().err.strip()


def assert_one_line(error: str, *words: str) -> None:
    assert error.startswith("deepguard: error: ") and "\n" not in error, error
    assert "Traceback" not in error
    for word in words:
        assert word in error, error


@pytest.fixture
def photo(media_dir: Path, tmp_path: Path) -> Path:
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    image.thumbnail((64, 64))
    path = tmp_path / "photo.png"
    image.save(path)
    return path


@pytest.fixture
def attack_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the attacks that run (the real ones still run)."""
    runs: list[int] = []
    original = PoisonStage.protect_frames

    def counted(self, *args, **kwargs):
        runs.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PoisonStage, "protect_frames", counted)
    return runs


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small or read-only file system at ``path`` (root can mount one; others skip)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# -- defect 1: tiny images ----------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (10, 400), (400, 10)])
def test_tiny_images_are_protected(
    size: tuple[int, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "tiny.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).save(source)
    out = tmp_path / "out" / "tiny.png"
    code, error = protect(capsys, str(source), "-o", str(out), "--report", str(tmp_path / "r"))
    assert (code, error) == (0, "")
    assert Image.open(out).size == size
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.png"]


def test_ssim_fits_its_window_to_small_images() -> None:
    rng = np.random.default_rng(1)
    for shape in [(1, 1, 3), (2, 2, 3), (10, 400, 3), (400, 10, 3)]:
        clean = rng.integers(0, 256, shape, np.uint8)
        noisy = np.clip(clean + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
        assert ssim(clean, clean) == pytest.approx(1.0)
        assert 0 < ssim(clean, noisy) < 1


def test_resizing_a_sliver_keeps_one_pixel() -> None:
    """The attack's random rescale of a 1-pixel-high image must not make it 0 pixels high."""
    sliver = torch.rand(1, 3, 1, 1000)
    assert resize(sliver, 0.8).shape == (1, 3, 1, 800)
    assert resize(sliver.transpose(2, 3), 0.5).shape == (1, 3, 500, 1)


def test_an_image_named_as_a_video_is_refused_before_ray(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "clip.mp4"
    source.write_bytes(photo.read_bytes())  # FFmpeg reads PNG too, but this is no MP4
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.mp4"))
    assert code == 2
    assert_one_line(error, "clip.mp4", "not a readable video")
    assert not (tmp_path / "out.mp4").exists()


def test_a_failure_after_the_attack_leaves_no_output(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args) -> float:
        raise RuntimeError("a bug in a metric")

    monkeypatch.setattr("deepguard.pipeline.photo.ssim", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug in a metric"):
        main(["protect", str(photo), "-o", str(out / "photo.png"), *CHEAP_ATTACK])
    assert not out.exists() or not any(out.iterdir())


# -- defect 2: output paths ---------------------------------------------------------------


def test_output_under_a_file_is_refused_before_the_attack(
    photo: Path, tmp_path: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    code, error = protect(capsys, str(photo), "-o", str(tmp_path / "afile" / "out.png"))
    assert code == 2 and not attack_runs
    assert_one_line(error, "afile", "not a folder")


def test_report_under_a_file_is_refused_before_the_attack(
    photo: Path, tmp_path: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "out.png"
    code, error = protect(capsys, str(photo), "-o", str(out), "--report", f"{tmp_path}/afile/r")
    assert code == 2 and not attack_runs and not out.exists()
    assert_one_line(error, "not a folder")


def test_unwritable_output_folder_is_refused_before_the_attack(
    photo: Path, tmp_path: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    if IS_ROOT:  # root writes through permissions, not into a read-only file system
        folder = tmpfs(tmp_path / "readonly", "ro,size=64k")
    else:
        (tmp_path / "readonly").mkdir(mode=0o555)
        folder = contextlib.nullcontext(tmp_path / "readonly")
    with folder as readonly:
        code, error = protect(capsys, str(photo), "-o", str(readonly / "sub" / "out.png"))
        assert not any(readonly.iterdir())
    assert code == 2 and not attack_runs
    assert_one_line(error, "cannot write", "out.png")


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "noise.png"  # incompressible: ~120 kB, more than the disk holds
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), np.uint8)).save(source)
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        code, error = protect(capsys, str(source), "-o", str(disk / "out.png"))
        assert not list(disk.iterdir())
    assert code == 2
    assert_one_line(error, "out.png", "No space left on device")


# -- defect 4: things that are not regular files ------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("make", [_fifo, _socket, _device], ids=["fifo", "socket", "device"])
def test_non_regular_files_are_refused(
    make, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "x.jpg"
    make(source)
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.jpg"))
    assert code == 2
    assert_one_line(error, "x.jpg", "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jpg"]


def test_a_fifo_in_a_folder_is_refused_and_the_rest_protected(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    shutil.copy(photo, inbox / "good.png")
    os.mkfifo(inbox / "x.jpg")
    os.mkfifo(inbox / "clip.mp4")  # a video goes another way: it must be checked too
    (inbox / "folder.jpg").mkdir()
    code, error = protect(capsys, str(inbox), "-o", str(tmp_path / "out"))
    assert code == 2
    lines = error.splitlines()
    assert len(lines) == 3 and all(line.startswith("deepguard: error: ") for line in lines)
    assert "x.jpg: not a regular file" in error and "clip.mp4: not a regular file" in error
    assert "folder.jpg: is a folder" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


# -- defect 10: settings ------------------------------------------------------------------


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("DEEPGUARD_MAX_IMAGE_PIXELS", "abc", ["protect", "photo.jpg"]),
        ("DEEPGUARD_RETENTION_HOURS", "0", ["cleanup"]),
        ("DEEPGUARD_WATCH_CONCURRENCY", "-1", ["watch", "in", "out", "--once"]),
        ("DEEPGUARD_DEVICE", "tpu", ["models", "list"]),
        ("DEEPGUARD_GPU_SHARE", "2", ["eval", "a.jpg", "b.jpg"]),
        ("PORT", "http", ["serve"]),
        ("DEEPGUARD_WEB_MAX_QUEUE", "0", ["jobs", "list"]),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    variable: str,
    value: str,
    command: list[str],
    fresh_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    with time_limit(60):
        code = main(command)
    assert code == 2
    assert_one_line(capsys.readouterr().err.strip(), variable, repr(value))


# -- defect 13: the output is the input ---------------------------------------------------


def _same_path(photo: Path) -> Path:
    return photo


def _relative(photo: Path) -> Path:
    return Path(os.path.relpath(photo.parent, Path.cwd())) / ".." / photo.parent.name / photo.name


def _symlink(photo: Path) -> Path:
    (photo.parent / "link.png").symlink_to(photo.name)
    return photo.parent / "link.png"


def _hard_link(photo: Path) -> Path:
    (photo.parent / "hard.png").hardlink_to(photo)
    return photo.parent / "hard.png"


@pytest.mark.parametrize("output_for", [_same_path, _relative, _symlink, _hard_link])
def test_the_output_may_not_replace_the_input(
    output_for, photo: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    original = photo.read_bytes()
    code, error = protect(capsys, str(photo), "-o", str(output_for(photo)))
    assert code == 2 and not attack_runs
    assert_one_line(error, "--overwrite")
    assert photo.read_bytes() == original


def test_a_folder_may_not_be_protected_onto_itself(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    shutil.copy(photo, inbox / "a.png")
    original = (inbox / "a.png").read_bytes()
    code, error = protect(capsys, str(inbox), "-o", str(inbox))
    assert code == 2
    assert_one_line(error, "a.png", "--overwrite")
    assert (inbox / "a.png").read_bytes() == original


def test_overwrite_replaces_the_input_when_asked(
    photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = photo.stat().st_ino
    code, error = protect(capsys, str(photo), "-o", str(photo), "--overwrite")
    assert (code, error) == (0, "")
    assert photo.stat().st_ino != original  # the protected file was renamed into its place
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.png"]


# -- defect 14: the reason for a refusal --------------------------------------------------


def test_a_decompression_bomb_names_the_pixel_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bomb.png"
    source.write_bytes(huge_png(30000, 30000))
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.png"))
    assert code == 2
    assert_one_line(error, "30000×30000", "DEEPGUARD_MAX_IMAGE_PIXELS")


def test_a_side_longer_than_jpeg_allows_is_refused(
    tmp_path: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every result is verified as a JPEG, and libjpeg stops at 65,500 pixels a side."""
    source = tmp_path / "long.png"
    Image.new("RGB", (65_536, 1), (120, 90, 60)).save(source)
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.png"))
    assert code == 2 and not attack_runs
    assert_one_line(error, "65536×1", "65,500")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.png"]


def test_a_webp_output_wider_than_webp_allows_is_refused_before_the_attack(
    tmp_path: Path, attack_runs: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "wide.png"
    Image.new("RGB", (16_400, 2), (120, 90, 60)).save(source)
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.webp"))
    assert code == 2 and not attack_runs
    assert_one_line(error, "16,383", ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.png"]


def _exif_pointing_past_its_end() -> bytes:
    """An EXIF block: a TIFF header and one entry (Make, ASCII) whose 1000 bytes are missing."""
    entry = struct.pack(">HHII", 0x010F, 2, 1000, 26)
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1) + entry + b"\x00\x00\x00\x00"
    return b"Exif\x00\x00" + tiff


def test_a_damaged_exif_does_not_add_decoder_notes_to_the_output(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "exif.jpg"
    Image.open(photo).save(source, quality=95, exif=_exif_pointing_past_its_end())
    with warnings.catch_warnings(record=True) as shown:  # what Python would print on stderr
        warnings.simplefilter("always")
        code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.jpg"))
    assert (code, error) == (0, "")
    assert [str(w.message) for w in shown] == []


def test_a_broken_png_chunk_is_refused_as_corrupt(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fuzzer: Pillow reports a bad chunk with a SyntaxError, not an OSError."""
    data = bytearray(photo.read_bytes())
    data[35] = 0x01  # the length of the chunk after IHDR: the next "chunk" is pixel data
    source = tmp_path / "broken.png"
    source.write_bytes(data)
    code, error = protect(capsys, str(source), "-o", str(tmp_path / "out.png"))
    assert code == 2
    assert_one_line(error, "broken.png: corrupt image", "broken PNG file")


def test_an_unreadable_input_says_permission_denied(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo.chmod(0)
    args = ["protect", str(photo), "-o", str(tmp_path / "out.png"), *CHEAP_ATTACK]
    if IS_ROOT:  # root reads any file: run the CLI without the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and no setpriv to drop the file-reading override")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, "--bounding-set", drop, sys.executable, "-m", "deepguard.cli", *args]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        code, error = result.returncode, result.stderr.strip()
    else:
        code, error = main(args), capsys.readouterr().err.strip()
    assert code == 2
    assert_one_line(error, "photo.png", "cannot read", "Permission denied")
    assert not (tmp_path / "out.png").exists()


# -- a quiet run prints nothing -----------------------------------------------------------


def test_starting_a_local_ray_prints_no_notice(tmp_path: Path) -> None:
    """`protect -q` on a clip starts a local Ray; Ray must not print its token notice."""
    code = (
        "import ray\n"
        "from deepguard.pipeline.cluster import connect\n"
        "from deepguard.settings import Settings\n"
        "connect(Settings())\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Token authentication" not in result.stdout + result.stderr
