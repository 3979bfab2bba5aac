"""YuNet through the shared ONNX converter: agreement with OpenCV's own FaceDetectorYN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.models.yunet.predictor import WEIGHT_FILE, YuNet, load
from tests.conftest import read_rgb, weight_file


@pytest.fixture(scope="module")
def yunet(weights_dir: Path) -> YuNet:
    return load({WEIGHT_FILE: weight_file(weights_dir, WEIGHT_FILE)})


def test_matches_opencv_face_detector_yn(yunet: YuNet, weights_dir: Path, media_dir: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    rgb = read_rgb(media_dir / "lp_s0.jpg")
    height, width = rgb.shape[:2]
    reference = cv2.FaceDetectorYN.create(str(weights_dir / WEIGHT_FILE), "", (width, height))
    _, faces = reference.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    assert faces is not None and len(faces) == 1
    ref_box = np.concatenate([faces[0, :2], faces[0, :2] + faces[0, 2:4]])

    ours = yunet.detect(rgb)
    assert len(ours) == 1
    np.testing.assert_allclose(ours.boxes[0], ref_box, atol=2.0)
    assert abs(float(ours.scores[0]) - float(faces[0, 14])) < 1e-3


def test_any_input_size(yunet: YuNet, media_dir: Path) -> None:
    with torch.no_grad():
        dense = yunet.dense(torch.rand(2, 3, 101, 77) * 255)
    # padded to 128×96: 16·12 + 8·6 + 4·3 cells
    assert dense.scores.shape == (2, 252) and dense.boxes.shape == (2, 252, 4)

    crop = read_rgb(media_dir / "lp_s0.jpg")[:651, :589]  # neither side a multiple of 32
    found = yunet.detect(crop)
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0]
    assert 255 < x1 < 295 and 50 < y1 < 90 and 345 < x2 < 385 and 170 < y2 < 210


def test_batch_of_two_equals_two_single_runs(yunet: YuNet) -> None:
    """The exported heads reshape to [1, -1, C]; the converter makes that 1 the live batch."""
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        both = yunet.dense(x)
        singles = [yunet.dense(x[i : i + 1]) for i in range(2)]
    # batched convolutions sum in another order: float32 noise only
    close = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(both.logits, torch.cat([s.logits for s in singles]), **close)
    torch.testing.assert_close(both.boxes, torch.cat([s.boxes for s in singles]), **close)


def test_features_are_backbone_strides_8_16_32(yunet: YuNet) -> None:
    with torch.no_grad():
        feats = yunet.features(torch.rand(1, 3, 96, 64) * 255)
    assert list(feats) == ["backbone.model3", "backbone.model4", "backbone.model5"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(12, 8), (6, 4), (3, 2)]


def test_load_needs_the_onnx_graph() -> None:
    with pytest.raises(ValueError, match=WEIGHT_FILE):
        load(None)
