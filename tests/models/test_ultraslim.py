"""Face-Detector-1MB specifics: the two variants, their prior layout and the long-side option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.retinaface import priors
from deepguard.models.ultraslim import predictor
from deepguard.models.ultraslim.net import BasicRFB, UltraSlimNet
from tests.conftest import read_rgb

#: the face in lp_s0.jpg (x1, y1, x2, y2), read off the image by hand
LP_S0_FACE = (275.0, 65.0, 362.0, 188.0)


def load(weights_dir: Path, variant: str, **options: object) -> predictor.UltraSlimDetector:
    path = weights_dir / predictor.WEIGHTS_FILES[variant]
    detector = predictor.load({path.name: path}, variant=variant, **options)
    assert isinstance(detector, predictor.UltraSlimDetector)
    return detector


def best_box_iou(detector: predictor.UltraSlimDetector, media_dir: Path) -> float:
    found = detector.detect(read_rgb(media_dir / "lp_s0.jpg"))
    best = torch.from_numpy(found.boxes[found.scores.argmax()])
    return box_iou(best[None], torch.tensor([LP_S0_FACE])).item()


@pytest.mark.parametrize(("variant", "name"), [("slim", "slim320"), ("rfb", "rfb320")])
def test_variants_have_their_names_and_reference_thresholds(variant: str, name: str) -> None:
    detector = predictor.load(None, variant=variant)
    assert detector.name == name
    assert (detector.score_threshold, detector.nms_iou) == (0.6, 0.4)
    assert isinstance(detector.net.conv8, BasicRFB) == (variant == "rfb")


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="variant"):
        predictor.load(None, variant="large")
    with pytest.raises(ValueError, match="variant"):
        UltraSlimNet("large")  # type: ignore[arg-type]


def test_priors_are_shared_with_retinaface() -> None:
    assert predictor.PriorCache is priors.PriorCache
    assert predictor.PRIORS.anchors_per_cell == (3, 2, 2, 3)


@pytest.mark.parametrize("variant", ["slim", "rfb"])
def test_dense_has_one_score_per_prior_at_four_strides(variant: str) -> None:
    detector = predictor.load(None, variant=variant)
    with torch.no_grad():
        pred = detector.dense(torch.full((1, 3, 100, 70), 128.0))
    # 13×9 cells at stride 8, 7×5 at 16, 4×3 at 32, 2×2 at 64
    assert pred.scores.shape == (1, 3 * 13 * 9 + 2 * 7 * 5 + 2 * 4 * 3 + 3 * 2 * 2)
    assert pred.boxes.shape == (*pred.scores.shape, 4)


@pytest.mark.parametrize("variant", ["slim", "rfb"])
def test_lp_s0_face_box(variant: str, weights_dir: Path, media_dir: Path) -> None:
    assert best_box_iou(load(weights_dir, variant), media_dir) > 0.7


def test_long_side_resizes_inside_and_maps_boxes_back(weights_dir: Path, media_dir: Path) -> None:
    detector = load(weights_dir, "slim", long_side=320)
    with torch.no_grad():
        features = detector.features(torch.zeros(1, 3, 704, 600))
    # 704×600 → 320×273 at the net input: stride 8, 16 and 32 maps
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(40, 35), (20, 18), (10, 9)]
    assert best_box_iou(detector, media_dir) > 0.7


def test_features_are_named_backbone_layers() -> None:
    detector = predictor.load(None, variant="rfb")
    with torch.no_grad():
        features = detector.features(torch.full((1, 3, 64, 96), 100.0))
    assert list(features) == ["conv8", "conv11", "conv13"]
    shapes = [tuple(f.shape) for f in features.values()]
    assert shapes == [(1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]
