"""FaceBoxes: prior layout, BGR preprocessing, and the portrait box on the real weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.base import image_to_tensor
from deepguard.models.faceboxes.predictor import WEIGHTS_FILE, FaceBoxes, load, make_priors
from tests.conftest import read_rgb


@pytest.fixture(scope="module")
def faceboxes(weights_dir: Path) -> FaceBoxes:
    path = weights_dir / WEIGHTS_FILE
    if not path.exists():
        pytest.skip(f"{WEIGHTS_FILE} not in {weights_dir}")
    return load({WEIGHTS_FILE: path})


def test_prior_count_matches_the_heads() -> None:
    # 1024²: 32² cells × 21 anchors + 16² + 8²
    assert make_priors(1024, 1024, torch.device("cpu")).shape == (32 * 32 * 21 + 16**2 + 8**2, 4)
    model = load(None)
    height, width = 97, 200  # not a multiple of any stride: grids round up
    prediction = model.dense(torch.rand(1, 3, height, width) * 255)
    expected = 4 * 7 * 21 + 2 * 4 + 1 * 2
    assert prediction.scores.shape == (1, expected)
    assert prediction.boxes.shape == (1, expected, 4)


def test_anchor_densification_order() -> None:
    priors = make_priors(64, 64, torch.device("cpu"))
    first_cell = priors[:21]
    # 4×4 dense 32-px anchors from the cell corner (x fastest), then 2×2 64-px, then 128-px
    assert first_cell[:4, 0].tolist() == [0.0, 8.0, 16.0, 24.0]
    assert first_cell[:16:4, 1].tolist() == [0.0, 8.0, 16.0, 24.0]
    assert (first_cell[:16, 2:] == 32).all()
    assert first_cell[16:20, :2].tolist() == [[0, 0], [16, 0], [0, 16], [16, 16]]
    assert (first_cell[16:20, 2:] == 64).all()
    assert first_cell[20].tolist() == [16.0, 16.0, 128.0, 128.0]
    # the second cell of the first row starts one stride to the right
    assert priors[21, :2].tolist() == [32.0, 0.0]


def test_input_is_bgr_minus_mean() -> None:
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 255
    assert load(None).preprocess(red)[0, :, 0, 0].tolist() == [-104.0, -117.0, 132.0]


def test_portrait_box(faceboxes: FaceBoxes, media_dir: Path) -> None:
    found = faceboxes.detect(read_rgb(media_dir / "lp_s0.jpg"))
    assert len(found) == 1
    face = torch.tensor([[273.0, 67.0, 362.0, 189.0]])  # measured on lp_s0.jpg (600×704)
    assert box_iou(torch.from_numpy(found.boxes), face).max() > 0.7


def test_features_are_the_detection_sources(faceboxes: FaceBoxes) -> None:
    x = image_to_tensor(torch.zeros(130, 260, 3, dtype=torch.uint8).numpy())
    shapes = {name: tuple(f.shape) for name, f in faceboxes.features(x).items()}
    assert shapes == {
        "inception3": (1, 128, 5, 9),
        "conv3_2": (1, 256, 3, 5),
        "conv4_2": (1, 256, 2, 3),
    }


def test_rejects_unknown_options() -> None:
    with pytest.raises(TypeError):
        load(None, variant="slim")
