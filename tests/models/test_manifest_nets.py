"""S3FD, DSFD and PyramidBox: nets built from their weight manifests (no weights are shipped)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from deepguard.models import dsfd, pyramidbox, s3fd
from deepguard.models.base import FaceDetector
from deepguard.models.dsfd.predictor import WEIGHT_FILE as DSFD_FILE
from deepguard.models.pyramidbox.predictor import WEIGHT_FILE as PYRAMIDBOX_FILE
from deepguard.models.s3fd.predictor import WEIGHT_FILE as S3FD_FILE

DETECTORS = {
    "s3fd": (s3fd, S3FD_FILE, 1),
    "dsfd": (dsfd, DSFD_FILE, 2),
    "pyramidbox": (pyramidbox, PYRAMIDBOX_FILE, 1),
}


def _manifest(manifests_dir: Path, name: str) -> dict[str, list[int]]:
    return json.loads((manifests_dir / f"{name}.json").read_text())["state_dict"]


def _zeros(manifest: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """All-zero state dict; expanded views of one zero, so it costs no memory (or disk)."""
    return {key: torch.zeros(()).expand(shape) for key, shape in manifest.items()}


@pytest.fixture(scope="module", params=list(DETECTORS))
def detector(request: pytest.FixtureRequest) -> tuple[str, FaceDetector]:
    module: ModuleType = DETECTORS[request.param][0]
    torch.manual_seed(0)
    return request.param, module.load(None)


def test_manifest_loads_strictly(detector: tuple[str, FaceDetector], manifests_dir: Path) -> None:
    name, det = detector
    manifest = _manifest(manifests_dir, name)
    params = sum(p.numel() for p in det.net.parameters())
    buffers = sum(b.numel() for b in det.net.buffers())
    assert params + buffers == sum(math.prod(shape) for shape in manifest.values())
    fresh = DETECTORS[name][0].load(None)
    fresh.net.load_state_dict(_zeros(manifest), strict=True)


def test_missing_key_fails_strict_load(
    detector: tuple[str, FaceDetector], manifests_dir: Path
) -> None:
    name, det = detector
    state = _zeros(_manifest(manifests_dir, name))
    state.pop(next(key for key in state if key.startswith("vgg.")))
    net = type(det.net)()  # a failed load still copies the keys it has: keep the fixture intact
    with pytest.raises(RuntimeError, match="Missing key"):
        net.load_state_dict(state, strict=True)


def test_odd_input_shapes_and_gradients(detector: tuple[str, FaceDetector]) -> None:
    name, det = detector
    x = (torch.rand(1, 3, 45, 67) * 255).requires_grad_(True)
    pred = det.dense(x)
    head = det.shots(x)[-1]
    anchors = sum(h * w for h, w in head.sizes)
    assert len(head.sizes) == 6
    assert pred.scores.shape == (1, anchors)
    assert pred.boxes.shape == (1, anchors, 4)
    assert det.priors(x, head).shape == (anchors, 4)
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
    maps = det.score_maps(x)
    assert len(maps) == DETECTORS[name][2]
    assert all(m.shape == (1, anchors) for m in maps)
    sum(m.sum() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_features_are_three_vgg_maps(detector: tuple[str, FaceDetector]) -> None:
    _, det = detector
    features = det.features(torch.rand(1, 3, 48, 64) * 255)
    assert len(features) == 3
    widths = [f.shape[-1] for f in features.values()]
    assert widths == sorted(widths, reverse=True)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_load_from_file_and_pixel_priors(name: str, manifests_dir: Path, tmp_path: Path) -> None:
    """All-zero weights: every offset is 0, so the boxes are the priors themselves, in pixels."""
    module, weight_file, _ = DETECTORS[name]
    path = tmp_path / weight_file
    torch.save(_zeros(_manifest(manifests_dir, name)), path)
    det = module.load({weight_file: path})
    assert not det.training
    assert not any(p.requires_grad for p in det.parameters())
    pred = det.dense(torch.zeros(1, 3, 128, 128))
    # 128 px: 32², 16², 8², 4², 2², 1² locations, one prior each
    assert pred.scores.shape == (1, 1365)
    assert torch.allclose(pred.scores, torch.full_like(pred.scores, 0.5))
    assert pred.boxes[0, 0].tolist() == [-6.0, -6.0, 10.0, 10.0]  # stride 4, side 16
    assert pred.boxes[0, -1].tolist() == [-192.0, -192.0, 320.0, 320.0]  # stride 128, side 512
    (found,) = det.postprocess(pred)
    assert (len(found) > 0) == (det.score_threshold < 0.5)
