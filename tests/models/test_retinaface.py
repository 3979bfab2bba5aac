"""RetinaFace-MobileNet-0.25 specifics: prior layout, decoding, checkpoint flavour, features."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.retinaface import predictor
from deepguard.models.retinaface.priors import (
    PriorCache,
    PriorConfig,
    decode_boxes,
    decode_landmarks,
    make_priors,
)
from tests.conftest import read_rgb

#: the face in lp_s0.jpg (x1, y1, x2, y2), read off the image by hand
LP_S0_FACE = (275.0, 65.0, 362.0, 188.0)


def reference_priors(config: PriorConfig, height: int, width: int) -> torch.Tensor:
    """The biubug6 ``PriorBox`` loop, normalised coordinates scaled back to pixels."""
    rows = []
    for step, sizes in zip(config.steps, config.min_sizes, strict=True):
        grid = itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step)))
        for (i, j), size in itertools.product(grid, sizes):
            rows.append([(j + 0.5) * step / width, (i + 0.5) * step / height,
                         size / width, size / height])  # fmt: skip
    return torch.tensor(rows) * torch.tensor([width, height, width, height])


@pytest.fixture(scope="module")
def detector(weights_dir: Path) -> predictor.RetinaFaceDetector:
    return predictor.load({predictor.WEIGHTS_FILE: weights_dir / predictor.WEIGHTS_FILE})


@pytest.mark.parametrize(("height", "width"), [(64, 64), (97, 61), (33, 250)])
def test_priors_match_reference_loop(height: int, width: int) -> None:
    ours = make_priors(predictor.PRIORS, height, width)
    assert torch.allclose(ours, reference_priors(predictor.PRIORS, height, width), atol=1e-4)
    assert ours.shape[0] == predictor.PRIORS.num_priors(height, width)


def test_dense_has_one_score_per_prior_for_odd_sizes() -> None:
    detector = predictor.load(None)
    with torch.no_grad():
        pred = detector.dense(torch.full((2, 3, 97, 61), 128.0))
    # 13×8 cells at stride 8, 7×4 at 16, 4×2 at 32, two priors each
    assert pred.scores.shape == (2, 2 * (13 * 8 + 7 * 4 + 4 * 2))
    assert pred.boxes.shape == (*pred.scores.shape, 4)


def test_decode_zero_offsets_gives_the_prior_and_scales_exponentially() -> None:
    priors = torch.tensor([[10.0, 20.0, 8.0, 16.0]])
    loc = torch.zeros(1, 1, 4)
    assert decode_boxes(loc, priors, (0.1, 0.2)).tolist() == [[[6.0, 12.0, 14.0, 28.0]]]
    loc = torch.tensor([[[1.0, -1.0, 0.0, 5.0]]])  # centre moves by 0.1·size; h grows by e
    x1, y1, x2, y2 = decode_boxes(loc, priors, (0.1, 0.2))[0, 0].tolist()
    assert (x1 + x2) / 2 == pytest.approx(10.8)
    assert (y1 + y2) / 2 == pytest.approx(18.4)
    assert y2 - y1 == pytest.approx(16.0 * math.e)
    points = decode_landmarks(torch.ones(1, 1, 10), priors, (0.1, 0.2))
    assert points.shape == (1, 1, 5, 2)
    assert points[0, 0, 0].tolist() == pytest.approx([10.8, 21.6])


def test_prior_cache_builds_once_per_size_and_survives_deepcopy() -> None:
    cache = PriorCache(predictor.PRIORS)
    first = cache(64, 48, torch.device("cpu"))
    assert cache(64, 48, torch.device("cpu")) is first
    assert cache(48, 64, torch.device("cpu")) is not first
    clone = copy.deepcopy(cache)
    assert torch.equal(clone(64, 48, torch.device("cpu")), first)


def test_checkpoint_flavour_and_thresholds(detector: predictor.RetinaFaceDetector) -> None:
    """Face-Detector-1MB's RetinaFace: ReLU (Pytorch_Retinaface's LeakyReLU misplaces boxes)."""
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in detector.modules())
    assert detector.score_threshold == 0.6
    assert detector.nms_iou == 0.4


def test_lp_s0_face_box(detector: predictor.RetinaFaceDetector, media_dir: Path) -> None:
    found = detector.detect(read_rgb(media_dir / "lp_s0.jpg"))
    best = torch.from_numpy(found.boxes[found.scores.argmax()])
    assert found.scores.max() > 0.95
    assert box_iou(best[None], torch.tensor([LP_S0_FACE])).item() > 0.7


def test_features_are_the_three_body_stages(detector: predictor.RetinaFaceDetector) -> None:
    with torch.no_grad():
        features = detector.features(torch.full((1, 3, 64, 96), 100.0))
    assert list(features) == ["body.stage1", "body.stage2", "body.stage3"]
    shapes = [tuple(f.shape) for f in features.values()]
    assert shapes == [(1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]


def test_priors_cached_under_inference_mode_still_serve_autograd() -> None:
    detector = predictor.load(None)
    x = torch.full((1, 3, 40, 56), 90.0)
    with torch.inference_mode():
        detector.dense(x)
    x.requires_grad_(True)
    detector.dense(x).boxes.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
