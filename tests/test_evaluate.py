"""``deepguard eval``: the per-tool table next to the per-detector one, on real pairs.

The pairs are built so the truth is known without running an attack: a photo against itself
(every face still found) and against a flat grey picture (none found).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepguard.attack.profiles import enabled_profiles
from deepguard.cli import main
from deepguard.models.base import Detections
from deepguard.models.registry import load_detector
from deepguard.pipeline.evaluate import _distinct, evaluate

ENSEMBLE = {"retinaface", "yunet"}


@pytest.fixture(scope="module")
def pair(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """lp_s0 halved, and a grey picture of the same size standing in for a perfect result."""
    folder = tmp_path_factory.mktemp("eval")
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    image = image.resize((image.width // 2, image.height // 2))
    clean, grey = folder / "clean.png", folder / "grey.png"
    image.save(clean)
    Image.new("RGB", image.size, (128, 128, 128)).save(grey)
    return clean, grey


def test_tools_are_scored_through_their_own_looks(pair: tuple[Path, Path]) -> None:
    clean, grey = pair
    table = {name: load_detector(name) for name in ("retinaface", "yunet", "yolo5face_n05")}
    attacked = [table["retinaface"], table["yunet"]]
    profiles = enabled_profiles()
    unchanged = evaluate([(clean, clean)], attacked, None, profiles, table)
    hidden = evaluate([(clean, grey)], attacked, None, profiles, table)
    assert set(unchanged.scores) == ENSEMBLE  # the detector table is what was asked for

    for name in ("faceswap", "deepfacelab", "wav2lip"):  # RetinaFace stands for each
        assert unchanged.tools[name].faces.clean_faces >= 1
        assert unchanged.tools[name].faces.still_found == unchanged.tools[name].faces.clean_faces
        assert unchanged.tools[name].status(ENSEMBLE) == "not protected"
        assert hidden.tools[name].faces.still_found == 0
        assert hidden.tools[name].faces.hide_rate == 1.0
        assert hidden.tools[name].status(ENSEMBLE) == "protected"
    # YOLO5Face was loaded but not attacked: its figures are there, its verdict is not
    deepfacelive = hidden.tools["deepfacelive"]
    assert deepfacelive.faces.clean_faces >= 1 and deepfacelive.missing == ()
    assert deepfacelive.status(ENSEMBLE) == "not covered"
    # MTCNN is not in the table: faceswap (CPU) has no looks, and says so
    cpu = hidden.tools["faceswap-cpu"]
    assert cpu.missing == ("mtcnn",) and cpu.faces.clean_faces == 0
    assert cpu.status(ENSEMBLE) == "not covered"
    assert cpu.status(ENSEMBLE | {"mtcnn"}) == "not counted"


def test_a_face_found_by_several_looks_is_one_face() -> None:
    boxes = [np.array([[10, 10, 50, 50]], np.float32), np.array([[12, 11, 51, 52],
             [100, 100, 140, 140]], np.float32)]  # fmt: skip
    parts = [Detections(b, np.full(len(b), 0.9, np.float32)) for b in boxes]
    assert len(_distinct(parts)) == 2
    assert len(_distinct([Detections.empty(), Detections.empty()])) == 0


def test_cli_eval_prints_the_tool_table(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    clean, grey = pair
    args = ["eval", str(clean), str(grey), "--detectors", "retinaface,yunet"]
    assert main([*args, "--ensemble", "retinaface,yunet"]) == 0
    out = capsys.readouterr().out
    detectors, tools = out.split("tools (their detectors after their own resize", 1)
    assert "attacked (in the ensemble)" in detectors and "retinaface" in detectors
    lines = {line.split("  ")[0]: line for line in tools.splitlines()}
    assert lines["faceswap (GPU)"].endswith("100.0 %  protected")
    assert lines["DeepFaceLive"].endswith("100.0 %  not covered")
    assert lines["faceswap (CPU)"].endswith("not covered")  # MTCNN loaded for the table
    assert "1 image pairs" in out
