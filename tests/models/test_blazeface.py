"""BlazeFace: anchors, letterboxing to the fixed square, weighted NMS, both variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.blazeface.predictor import (
    VARIANTS,
    BlazeFace,
    BlazeFaceBack,
    BlazeFaceFront,
    load,
    make_anchors,
    read_anchors,
    weighted_nms,
)
from tests.conftest import read_rgb

#: the portrait's face in lp_s0.jpg (600×704), as FaceBoxes and both BlazeFace variants see it
PORTRAIT_FACE = torch.tensor([[268.0, 87.0, 368.0, 187.0]])


def _files(weights_dir: Path, variant: str) -> dict[str, Path]:
    _, weight_file, anchor_file = VARIANTS[variant]
    files = {name: weights_dir / name for name in (weight_file, anchor_file)}
    missing = [name for name, path in files.items() if not path.exists()]
    if missing:
        pytest.skip(f"{missing} not in {weights_dir}")
    return files


@pytest.fixture(scope="module", params=["front", "back"])
def blazeface(request: pytest.FixtureRequest, weights_dir: Path) -> BlazeFace:
    return load(_files(weights_dir, request.param), variant=request.param)


@pytest.mark.parametrize("variant", ["front", "back"])
def test_generated_anchors_match_the_shipped_files(weights_dir: Path, variant: str) -> None:
    anchor_file = VARIANTS[variant][2]
    shipped = read_anchors(_files(weights_dir, variant)[anchor_file])
    torch.testing.assert_close(make_anchors(), shipped)


@pytest.mark.parametrize(
    ("variant", "cls", "grids"),
    [("front", BlazeFaceFront, (32, 16, 8)), ("back", BlazeFaceBack, (64, 16, 8))],
)
def test_variant_shapes(variant: str, cls: type, grids: tuple[int, ...]) -> None:
    model = load(None, variant=variant)
    assert isinstance(model, cls)
    x = torch.rand(2, 3, 90, 170) * 255
    prediction = model.dense(x)
    assert prediction.scores.shape == (2, 896)
    assert prediction.boxes.shape == (2, 896, 4)
    assert tuple(f.shape[-1] for f in model.features(x).values()) == grids


def test_letterbox_keeps_aspect_and_centres() -> None:
    model = load(None, variant="front")
    x = torch.full((1, 3, 100, 400), 255.0)
    net_input, (scale_x, scale_y, pad_x, pad_y) = model.letterbox(x)
    assert net_input.shape == (1, 3, 128, 128)
    assert (scale_x, scale_y, pad_x, pad_y) == (0.32, 0.32, 0.0, 48.0)
    column = net_input[0, 0, :, 64]
    expected = torch.cat([torch.full((48,), -1.0), torch.ones(32), torch.full((48,), -1.0)])
    torch.testing.assert_close(column, expected)


def test_weighted_nms_blends_overlapping_boxes() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10], [50.0, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.8])
    merged, merged_scores = weighted_nms(boxes, scores, 0.3)
    torch.testing.assert_close(merged_scores, torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(merged[0], torch.tensor([0.8, 0.0, 10.8, 10.0]))
    torch.testing.assert_close(merged[1], boxes[2])
    empty_boxes, empty_scores = weighted_nms(boxes[:0], scores[:0], 0.3)
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


def test_portrait_box_survives_padding(blazeface: BlazeFace, media_dir: Path) -> None:
    """Boxes map back to input pixels whatever the aspect ratio and offset."""
    image = read_rgb(media_dir / "lp_s0.jpg")
    found = blazeface.detect(image)
    assert len(found) == 1
    assert box_iou(torch.from_numpy(found.boxes), PORTRAIT_FACE).max() > 0.7
    shift = 300
    wide = np.pad(image, ((0, 0), (shift, 0), (0, 0)))
    shifted = blazeface.detect(wide)
    assert len(shifted) == 1
    expected = PORTRAIT_FACE + torch.tensor([shift, 0, shift, 0])
    assert box_iou(torch.from_numpy(shifted.boxes), expected).max() > 0.6


def test_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        load(None, variant="full")
