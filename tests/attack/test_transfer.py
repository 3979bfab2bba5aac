"""Options for transfer to detectors outside the ensemble (docs/results.md, leave-one-out):
each changes what the optimiser does, shown here on its loss or its gradient."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison
from deepguard.attack.diversity import TRANSFORMS, InputDiversity, _rotate
from deepguard.attack.losses import FeatureImportance
from deepguard.attack.optimiser import _summed, importance_for
from deepguard.attack.regions import Window
from deepguard.attack.surrogates import ghost
from deepguard.models.base import image_to_tensor
from deepguard.models.registry import load_detector
from tests.conftest import read_rgb


@pytest.fixture(scope="module")
def portrait(media_dir: Path) -> torch.Tensor:
    return image_to_tensor(read_rgb(media_dir / "lp_s12.jpg"))


def test_loss_weighting_gives_the_least_fooled_look_the_most_say() -> None:
    ones, twos = [torch.ones(3)], [torch.full((3,), 2.0)]
    said = [(True, ones, 3.0), (True, twos, 1.0)]
    equal, _ = _summed(said, "equal")
    by_loss, _ = _summed(said, "loss")
    torch.testing.assert_close(equal[0], torch.full((3,), 3.0))
    # weights 2 × 3/4 and 2 × 1/4: the look with three quarters of the loss counts three times
    torch.testing.assert_close(by_loss[0], torch.full((3,), 1.5 * 1 + 0.5 * 2))
    direct = _summed([(False, ones, 1.0)], "loss")
    assert direct[0] is None and direct[1] is not None  # MTCNN's kind stays apart


def test_the_feature_weight_sets_the_feature_terms_share(portrait: torch.Tensor) -> None:
    """Each term is normalised on its own, then the feature term is weighed: a look's
    gradient moves linearly with the weight (before the fix the weight cancelled out)."""
    from collections import Counter
    from types import SimpleNamespace

    from deepguard.attack.delivery import CHAINS
    from deepguard.attack.optimiser import _View
    from deepguard.attack.verification import Look

    config = load_preset("balanced", detectors=["retinaface"], tools=[], feature_loss=True)
    attack = FacePoison(config)
    detector = attack.table["retinaface"]
    height, width = portrait.shape[-2:]
    window = Window(0, 0, 0, width, height)
    importance = FeatureImportance.estimate(detector, portrait, 2, 0.9,
                                            torch.Generator().manual_seed(0))  # fmt: skip
    faces, _ = attack.faces_of(portrait[0].permute(1, 2, 0).byte().numpy()[None])
    boxes = faces[0][0].boxes
    look = Look("retinaface", 1.0, 0.6, True, crops=True)
    gradients = {}
    for weight in (0.0, 1.0, 4.0):
        optimiser = FacePoison(config.model_copy(update={"feature_weight": weight}),
                               attack.detectors).optimiser  # fmt: skip
        run = SimpleNamespace(importance={("retinaface", "crop", 0, 0, 0): importance},
                              passes=Counter(), peaks={}, peaks_at={}, losses={},
                              iterations=0)  # fmt: skip
        view = portrait.clone().requires_grad_(True)
        group = [_View(view, boxes, float(height * width), window, 0, window)]
        gradient, excess = optimiser._look_gradient(run, CHAINS["saved"], look, view,
                                                    [torch.from_numpy(boxes)], group)  # fmt: skip
        assert excess > 0 and run.passes["attack"] == 1
        gradients[weight] = gradient
    feature_share = gradients[1.0] - gradients[0.0]
    assert float(feature_share.abs().mean()) == pytest.approx(1.0, rel=1e-3)  # normalised
    torch.testing.assert_close(gradients[4.0] - gradients[0.0], 4 * feature_share,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_feature_dropout_makes_a_new_surrogate_each_pass_and_leaves_detection_alone(
    portrait: torch.Tensor, weights_dir: Path
) -> None:
    for name in ("retinaface", "scrfd_500m"):  # a torch net, and an ONNX graph's nodes
        detector = load_detector(name)
        assert len(detector.dropout_points()) == 3
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            clean = detector.dense(portrait).logits
            with ghost(detector, 0.1, generator):
                first = detector.dense(portrait).logits
                second = detector.dense(portrait).logits
            after = detector.dense(portrait).logits
        assert not torch.allclose(first, clean) and not torch.allclose(first, second)
        torch.testing.assert_close(after, clean)  # the hooks are gone again
        with ghost(detector, 0.0, generator), torch.no_grad():
            torch.testing.assert_close(detector.dense(portrait).logits, clean)


def test_input_diversity_draws_what_other_detectors_do() -> None:
    x = torch.rand(1, 3, 60, 80) * 255
    seen = {}
    diversity = InputDiversity(1.0, random.Random(0))
    for _ in range(60):
        out, _, kind = diversity(x)
        seen[kind] = out.shape
    assert set(seen) == set(TRANSFORMS)
    assert seen["squash"][-1] == seen["squash"][-2]  # square, as an SSD's blob
    assert seen["downscale"][-1] < 80 and seen["rotate"] == x.shape == seen["noise"]
    assert InputDiversity(0.0, random.Random(0))(x)[2] == ""


def test_a_rotation_moves_the_boxes_with_the_picture() -> None:
    x = torch.zeros(1, 3, 120, 200)
    x[..., 20:50, 30:70] = 255  # a bright box at x 30-70, y 20-50
    turned, boxes_map = _rotate(x, np.radians(7))
    ys, xs = torch.nonzero(turned[0, 0] > 128, as_tuple=True)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    mapped = boxes_map(np.array([[30, 20, 70, 50]], np.float32))
    inter = np.clip(np.minimum(found[0, 2:], mapped[0, 2:]) - np.maximum(found[0, :2],
                    mapped[0, :2]), 0, None).prod()  # fmt: skip
    union = (found[0, 2:] - found[0, :2]).prod() + (mapped[0, 2:] - mapped[0, :2]).prod() - inter
    assert inter / union > 0.85


def test_a_crop_with_less_context_meets_the_importance_of_its_own_pixels() -> None:
    weights = {"a": torch.arange(16.0).view(1, 1, 4, 4), "b": torch.ones(1, 1, 2, 2)}
    importance = FeatureImportance(weights)
    features = {"a": torch.ones(1, 1, 2, 2), "b": torch.ones(1, 1, 1, 1)}
    # the right half of the bottom half: importance values 10, 11, 14, 15
    part = importance.loss(features, (0.5, 0.5, 1.0, 1.0))
    assert float(part) == pytest.approx(0.2 * (10 + 11 + 14 + 15) + 0.3 * 1)


def test_the_feature_loss_can_run_on_the_tools_looks(portrait: torch.Tensor) -> None:
    config = load_preset("balanced", detectors=["retinaface"], tools=["faceswap"],
                         feature_loss=True, feature_looks="all", feature_masks=2)  # fmt: skip
    attack = FacePoison(config)
    looks = [look for look in attack.looks(*portrait.shape[-2:]) if not look.crops]
    window = Window(0, 100, 80, 260, 280)
    found = importance_for(config, portrait, [window], torch.Generator().manual_seed(0),
                           attack.detectors, tool_looks=looks)  # fmt: skip
    assert ("retinaface", "look", round(looks[0].scale, 4), 0) in found
    crop = found[("retinaface", "crop", 0, 100, 80)]
    assert crop.window.x1 < 100 and crop.window.x2 > 260  # estimated with all its context
