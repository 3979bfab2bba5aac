"""``deepguard eval``: per face and per delivery, the per-tool table next to the per-detector
one, on real pairs.

The pairs are built so the truth is known without running an attack: a photo against itself
(every face still found) and against a flat grey picture (none found).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from deepguard.attack.delivery import parse_chains
from deepguard.attack.profiles import enabled_profiles
from deepguard.cli import main
from deepguard.models.registry import load_detector
from deepguard.pipeline.evaluate import evaluate

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
    chains = parse_chains("saved,sns")
    unchanged = evaluate([(clean, clean)], attacked, chains, profiles, table)
    hidden = evaluate([(clean, grey)], attacked, chains, profiles, table)
    assert unchanged.chains == ("saved", "sns")
    for chain in unchanged.chains:
        assert set(unchanged.scores[chain]) == ENSEMBLE  # the detector table is what was asked
        tools, gone = unchanged.tools[chain], hidden.tools[chain]
        for name in ("faceswap", "deepfacelab", "wav2lip"):  # RetinaFace stands for each
            assert tools[name].faces.clean_faces >= 1
            assert tools[name].faces.still_found == tools[name].faces.clean_faces
            assert tools[name].status(ENSEMBLE) == "not protected"
            assert gone[name].faces.still_found == 0
            assert gone[name].faces.hide_rate == 1.0
            assert gone[name].status(ENSEMBLE) == "protected"
        # YOLO5Face was loaded but not attacked: its figures are there, its verdict is not
        deepfacelive = gone["deepfacelive"]
        assert deepfacelive.faces.clean_faces >= 1 and deepfacelive.missing == ()
        assert deepfacelive.status(ENSEMBLE) == "not covered"
        # MTCNN is not in the table: faceswap (CPU) has no looks, and says so
        cpu = gone["faceswap-cpu"]
        assert cpu.missing == ("mtcnn",) and cpu.faces.clean_faces == 0
        assert cpu.status(ENSEMBLE) == "not covered"
        assert cpu.status(ENSEMBLE | {"mtcnn"}) == "not counted"
    # the faces are the clean picture's, whatever the protected one shows
    assert unchanged.faces == hidden.faces >= 1


def test_cli_eval_prints_the_tool_table(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    clean, grey = pair
    args = ["eval", str(clean), str(grey), "--detectors", "retinaface,yunet"]
    assert main([*args, "--ensemble", "retinaface,yunet"]) == 0
    out = capsys.readouterr().out
    saved, sns = out.split("== delivery: sns", 1)
    assert saved.startswith("== delivery: saved")
    for part in (saved, sns):
        detectors, tools = part.split("tools (their detectors after their own resize", 1)
        assert "attacked (in the ensemble)" in detectors and "retinaface" in detectors
        lines = {line.split("  ")[0]: line for line in tools.splitlines()}
        assert lines["faceswap (GPU)"].endswith("100.0 %          0  protected")
        assert lines["DeepFaceLive"].endswith("not covered")
        assert lines["faceswap (CPU)"].endswith("not covered")  # MTCNN loaded for the table
    assert "1 image pairs, " in out
