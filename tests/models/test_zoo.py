"""Contract tests run against every detector in the registry, on real weights and real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.base import FaceDetector, image_to_tensor
from deepguard.models.registry import detector_specs, load_detector
from deepguard.models.store import WeightStore
from deepguard.settings import Settings
from tests.conftest import read_rgb

SPECS = detector_specs()
SHIPPED = [name for name, spec in SPECS.items() if spec.shipped]
MANIFEST_ONLY = [name for name, spec in SPECS.items() if not spec.shipped and spec.manifest]
#: close-up models, by design blind to the small faces of a group photo
CLOSE_UP_ONLY = {"blazeface_front"}


@pytest.fixture(scope="module")
def detectors(weights_dir: Path) -> dict[str, FaceDetector]:
    store = WeightStore(Settings(DEEPGUARD_WEIGHTS_DIR=weights_dir))
    return {name: load_detector(name, "cpu", store=store, download=False) for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_finds_the_portrait_face(name: str, detectors: dict, media_dir: Path) -> None:
    image = read_rgb(media_dir / "lp_s0.jpg")
    found = detectors[name].detect(image)
    assert len(found) >= 1
    # the face of this portrait sits in the middle third horizontally
    x1, _, x2, _ = found.boxes[np.argmax(found.scores)]
    width = image.shape[1]
    assert width / 4 < (x1 + x2) / 2 < 3 * width / 4


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in CLOSE_UP_ONLY])
def test_finds_faces_in_a_group(name: str, detectors: dict, media_dir: Path) -> None:
    found = detectors[name].detect(read_rgb(media_dir / "fdlite_group.jpg"))
    assert len(found) >= 3


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("value", [0, 128])
def test_finds_nothing_in_a_blank_image(name: str, value: int, detectors: dict) -> None:
    blank = np.full((360, 480, 3), value, np.uint8)
    assert len(detectors[name].detect(blank)) == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_attack_path_decodes_to_the_same_boxes(name: str, detectors: dict, media_dir: Path) -> None:
    """The differentiable path the attack uses gives the very boxes ``detect`` reports."""
    detector = detectors[name]
    image = read_rgb(media_dir / "fdlite_group.jpg")
    reference = detector.detect(image)
    x = image_to_tensor(image).requires_grad_(True)
    prediction = detector.dense(x)
    assert prediction.scores.requires_grad
    torch.testing.assert_close(detector.score_maps(x)[-1], prediction.scores)
    decoded = detector.postprocess(prediction)[0]
    assert len(decoded) == len(reference)
    if len(reference):
        iou = box_iou(torch.from_numpy(decoded.boxes), torch.from_numpy(reference.boxes))
        assert iou.max(dim=1).values.min() >= 0.9


@pytest.mark.parametrize("name", SHIPPED)
def test_logit_maps_are_the_log_odds_of_the_scores(
    name: str, detectors: dict, media_dir: Path
) -> None:
    detector = detectors[name]
    x = image_to_tensor(read_rgb(media_dir / "lp_s0.jpg"))
    with torch.no_grad():
        scores, logits = detector.score_maps(x), detector.logit_maps(x)
    assert len(scores) == len(logits)
    for probability, log_odds in zip(scores, logits, strict=True):
        torch.testing.assert_close(
            log_odds.float().sigmoid(), probability.float(), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", SHIPPED)
def test_confident_faces_keep_a_gradient(name: str, detectors: dict, media_dir: Path) -> None:
    """The best face's log-odds move with the pixels, even where its probability is 1.0."""
    detector = detectors[name]
    x = image_to_tensor(read_rgb(media_dir / "lp_s0.jpg")).requires_grad_(True)
    detector.logit_maps(x)[-1].max().backward()
    assert x.grad is not None and x.grad.abs().sum() > 1e-3


@pytest.mark.parametrize("name", SHIPPED)
def test_gradients_reach_the_pixels(name: str, detectors: dict, media_dir: Path) -> None:
    detector = detectors[name]
    x = image_to_tensor(read_rgb(media_dir / "lp_s0.jpg")).requires_grad_(True)
    loss = sum(maps.sum() for maps in detector.logit_maps(x))
    features = detector.features(x)
    assert len(features) == 3
    # the single-pass variant the feature loss uses hooks the very same layers
    _, hooked = detector.logit_maps_and_features(x)
    assert list(hooked) == list(features)
    for key in features:
        torch.testing.assert_close(hooked[key], features[key])
    loss = loss + sum(f.float().pow(2).mean() for f in features.values())
    loss.backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def _manifest(manifests_dir: Path, name: str) -> dict[str, list[int]]:
    manifest = SPECS[name].manifest
    assert manifest is not None
    return json.loads((manifests_dir / manifest).read_text())["state_dict"]


@pytest.mark.parametrize("name", MANIFEST_ONLY)
def test_manifest_detectors_load_strictly(name: str, manifests_dir: Path) -> None:
    shapes = _manifest(manifests_dir, name)
    net = SPECS[name].build(None).net
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True)
    own = {key: list(value.shape) for key, value in net.state_dict().items()}
    assert own == shapes


@pytest.mark.parametrize("name", MANIFEST_ONLY)
def test_manifest_detectors_run_and_differentiate(name: str) -> None:
    detector = SPECS[name].build(None)
    x = torch.rand(1, 3, 97, 131, requires_grad=True) * 255
    x.retain_grad()
    prediction = detector.dense(x)
    assert prediction.boxes.shape[:2] == prediction.scores.shape
    assert len(detector.features(x)) == 3
    assert list(detector.logit_maps_and_features(x)[1]) == list(detector.features(x))
    sum(maps.sum() for maps in detector.score_maps(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
