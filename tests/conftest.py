"""Shared fixtures: real weights and real media, read in place from ../shared."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPGUARD_SHARED_DIR", REPO_ROOT.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# the product reads weights through its settings; point them at the shared folder by default
os.environ.setdefault("DEEPGUARD_WEIGHTS_DIR", str(SHARED / "weights"))
# no test reaches the internet: the first-use fetch of the tools' own detector files is off
# (tests/test_tool_weights.py turns it on against a local server)
os.environ.setdefault("DEEPGUARD_TOOL_WEIGHTS", "off")
# job store, uploads and results of the code under test go to a throwaway folder
if "DEEPGUARD_DATA_DIR" not in os.environ:
    _DATA_DIR = tempfile.mkdtemp(prefix="deepguard-test-data-")
    os.environ["DEEPGUARD_DATA_DIR"] = _DATA_DIR
    atexit.register(shutil.rmtree, _DATA_DIR, ignore_errors=True)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        message = f"{what} not found at {path}"
        if IN_CI:
            pytest.fail(message + " (CI=true: missing data is a failure)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _require(
        Path(os.environ.get("DEEPGUARD_WEIGHTS_DIR", SHARED / "weights")).resolve(), "weights"
    )


def weight_file(weights_dir: Path, name: str) -> Path:
    """One file of the shared weights: missing, it skips the test here and fails it in CI."""
    return _require(weights_dir / name, f"weight file {name}")


@pytest.fixture(scope="session")
def manifests_dir(weights_dir: Path) -> Path:
    return _require(weights_dir / "manifests", "weight manifests")


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return _require(SHARED / "media" / "images", "media images")


@pytest.fixture(scope="session")
def press_dir() -> Path:
    return _require(SHARED / "media" / "press", "press photos")


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    return _require(SHARED / "media" / "videos", "media videos")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {path}"
    return np.ascontiguousarray(image[:, :, ::-1])
