"""MTCNN: pyramid, crop convention, "Min" NMS, padding, and gradients through R-/O-Net crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from deepguard.models.base import image_to_tensor
from deepguard.models.mtcnn.predictor import (
    MTCNN,
    WEIGHT_FILES,
    crop_regions,
    load,
    min_overlap_nms,
    pyramid_scales,
)
from tests.conftest import read_rgb

#: lp_s0.jpg (600×704) face as MTCNN (facenet-pytorch 2.6.0) boxes it
LP_S0_FACE = (276.0, 68.0, 361.0, 185.0)


@pytest.fixture(scope="module")
def mtcnn(weights_dir: Path) -> MTCNN:
    paths = {name: weights_dir / name for name in WEIGHT_FILES.values()}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        pytest.skip(f"{missing} not in {weights_dir}")
    return load(paths)


@pytest.fixture(scope="module")
def portrait(media_dir: Path) -> torch.Tensor:
    """lp_s0.jpg at half size (300×352), to keep the cascade fast."""
    image = image_to_tensor(read_rgb(media_dir / "lp_s0.jpg"))
    return F.interpolate(image, size=(352, 300), mode="area")


def test_pyramid_scales() -> None:
    scales = pyramid_scales(720, 1280, min_face_size=20, factor=0.709)
    # 720 · 0.6 = 432 shrinks by 0.709 while it is at least 12 pixels: 11 levels
    assert len(scales) == 11
    assert scales[0] == pytest.approx(0.6)
    assert scales[-1] == pytest.approx(0.6 * 0.709**10)
    assert pyramid_scales(19, 640, min_face_size=20, factor=0.709) == []


def test_tiny_image_gives_empty_outputs() -> None:
    model = load(None)
    prediction = model.dense(torch.rand(2, 3, 16, 40) * 255)
    assert prediction.scores.shape == (2, 0)
    assert prediction.boxes.shape == (2, 0, 4)
    assert [m.shape for m in model.score_maps(torch.rand(2, 3, 16, 40) * 255)] == [(2, 0)] * 3


def test_crop_regions_follow_the_reference_slicing() -> None:
    # reference: x = int(x1) clipped to >= 1, ex = int(x2) clipped to <= w; crop [x-1, ex)
    boxes = torch.tensor([[10.7, 20.2, 40.9, 50.5], [-5.0, -3.0, 30.0, 120.0], [200.0, 0, 220, 9]])
    regions, valid = crop_regions(boxes, height=100, width=150)
    assert regions[0].tolist() == [9.0, 19.0, 40.0, 50.0]
    assert regions[1].tolist() == [0.0, 0.0, 30.0, 100.0]  # clipped, not zero-padded
    assert valid.tolist() == [True, True, False]  # the third box lies right of the image


def test_roi_align_crop_is_area_resampling_on_exact_multiples() -> None:
    # a 48×48 region cropped to 24×24 must average 2×2 pixel blocks, as the reference does
    image = torch.rand(1, 3, 80, 90)
    region = torch.tensor([[0.0, 9.0, 19.0, 57.0, 67.0]])  # (image, x1, y1, x2, y2)
    crop = roi_align(image, region, 24, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    expected = F.interpolate(image[:, :, 19:67, 9:57], size=(24, 24), mode="area")
    torch.testing.assert_close(crop, expected)


def test_min_overlap_nms_drops_boxes_inside_a_better_one() -> None:
    boxes = torch.tensor([[0.0, 0, 99, 99], [10, 10, 39, 39], [200, 200, 239, 239]])
    scores = torch.tensor([0.9, 0.95, 0.8])
    # the small box has IoU 0.09 with the large one but lies entirely inside it
    assert min_overlap_nms(boxes, scores, 0.7).tolist() == [1, 2]


def test_portrait_box_and_batch_padding(mtcnn: MTCNN, portrait: torch.Tensor) -> None:
    batch = torch.cat([portrait, torch.full_like(portrait, 128.0)])
    prediction = mtcnn.dense(batch)
    assert prediction.scores.shape[1] > 0
    assert prediction.boxes.shape == (*prediction.scores.shape, 4)
    assert (prediction.scores[1] < 1e-9).all()  # the grey image has no O-Net candidate
    found, grey = mtcnn.postprocess(prediction)
    assert len(found) == 1 and len(grey) == 0
    face = torch.tensor([LP_S0_FACE]) / 2
    assert box_iou(torch.from_numpy(found.boxes), face).max() > 0.75


def test_refiner_gradients_reach_pixels(mtcnn: MTCNN, portrait: torch.Tensor) -> None:
    x = portrait.clone().requires_grad_(True)
    pnet, rnet, onet = mtcnn.score_maps(x)
    assert pnet.shape[1] > 0 and rnet.shape[1] > 0 and onet.shape[1] > 0
    # R-Net scores alone (not through P-Net) reach the pixels via the 24×24 crops
    (grad,) = torch.autograd.grad(rnet.sum(), x, retain_graph=True)
    assert grad.abs().sum() > 0
    # the best O-Net candidate is the face: its gradient stays near the face's 48×48 crop
    (grad,) = torch.autograd.grad(onet.max(), x)
    touched = (grad.abs().sum(dim=(0, 1)) > 0).nonzero().float()
    assert len(touched) > 0
    x1, y1, x2, y2 = (torch.tensor(LP_S0_FACE) / 2).tolist()
    margin = 0.5 * (x2 - x1)
    assert touched[:, 1].min() > x1 - margin and touched[:, 1].max() < x2 + margin
    assert touched[:, 0].min() > y1 - margin and touched[:, 0].max() < y2 + margin
