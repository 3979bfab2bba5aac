"""The attack's building blocks, each against an independent reference."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepguard.attack.config import load_preset, preset_names
from deepguard.attack.losses import score_suppression_loss
from deepguard.attack.metrics import psnr, ssim
from deepguard.attack.regions import Window, detector_views, face_windows, merge_windows
from deepguard.attack.transforms import jpeg_roundtrip, quantize_uint8
from deepguard.errors import DeepguardError
from tests.conftest import read_rgb


def test_simulated_jpeg_tracks_libjpeg(media_dir) -> None:
    image = read_rgb(media_dir / "lp_s0.jpg")[:200, :248]
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    for quality in (60, 90):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        real = np.asarray(Image.open(buffer), np.float64)
        simulated = jpeg_roundtrip(x, quality)[0].permute(1, 2, 0).numpy()
        # much closer to libjpeg's output than the uncompressed input is
        assert np.abs(simulated - real).mean() < 0.6 * np.abs(image - real).mean() + 0.5


def test_rounding_passes_gradients_straight_through() -> None:
    x = torch.tensor([0.4, 1.6, 254.7, 300.0], requires_grad=True)
    y = quantize_uint8(x)
    assert y.tolist() == [0.0, 2.0, 255.0, 255.0]
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist()[:3] == [1.0, 1.0, 1.0]


def test_score_loss_counts_only_confidences_above_the_floor() -> None:
    floor = 0.2
    logits = torch.tensor([[math.log(0.1 / 0.9), 0.0, 5.0]], requires_grad=True)
    loss = score_suppression_loss([logits], [floor])
    margin = math.log(floor / (1 - floor))
    assert loss.item() == pytest.approx((0.0 - margin) + (5.0 - margin))
    loss.backward()
    assert logits.grad.tolist() == [[0.0, 1.0, 1.0]]


def test_windows_merge_and_views_grow() -> None:
    boxes = np.array([[10, 10, 30, 30], [35, 12, 55, 32], [300, 300, 320, 320]], np.float32)
    windows = face_windows(boxes, 0, 400, 400, margin=0.3, min_margin=8)
    assert len(windows) == 2  # the two nearby faces merged
    assert merge_windows(windows) == windows
    views = detector_views(windows, 400, 400, min_size=128, whole_fraction=0.9)
    assert all(v.x2 - v.x1 >= 128 and v.y2 - v.y1 >= 128 for v in views)
    whole = detector_views(windows, 400, 400, min_size=300, whole_fraction=0.5)
    assert whole == [Window(0, 0, 0, 400, 400)]


def test_quality_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noisy = np.clip(clean.astype(int) + rng.choice([-2, 2], clean.shape), 0, 255).astype(np.uint8)
    mse = np.mean((clean.astype(float) - noisy) ** 2)
    assert psnr(clean, noisy) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(clean, clean) == math.inf
    assert ssim(clean, clean) == pytest.approx(1.0)
    assert 0.9 < ssim(clean, noisy) < 1.0


def test_presets_load_and_overrides_are_validated() -> None:
    assert set(preset_names()) == {"balanced", "strong", "small-faces"}
    balanced = load_preset("balanced")
    # the detectors the face-swap tools run; MTCNN needs more budget and is strong's
    assert set(balanced.detectors) == {"scrfd_500m", "retinaface", "yolo5face_n05", "yunet"}
    assert "mtcnn" in load_preset("strong").detectors
    custom = load_preset("balanced", epsilon=4, iterations=3, detectors=["yunet"])
    assert (custom.epsilon, custom.iterations, custom.detectors) == (4, 3, ["yunet"])
    with pytest.raises(DeepguardError, match="step"):
        load_preset("balanced", epsilon=1, step=2)
    with pytest.raises(DeepguardError, match="unknown preset"):
        load_preset("gentle")


def test_a_stalled_detector_is_left_out_of_the_repairs() -> None:
    from types import SimpleNamespace

    from deepguard.attack.core import FacePoison

    config = load_preset("balanced").model_copy(update={"give_up_ratio": 0.3})
    names = ["retinaface", "mtcnn", "yunet", "hidden"]
    detectors = [SimpleNamespace(name=name) for name in names]
    attack = FacePoison(config, detectors=detectors)
    run = SimpleNamespace(
        detectors=detectors,
        losses={"retinaface": [100.0, 90.0, 45.0, 40.0], "mtcnn": [463.0, 460.0, 370.0, 368.0],
                "yunet": [172.0, 170.0, 100.0, 98.8], "hidden": [50.0, 50.0, 49.0, 49.0]},
    )  # fmt: skip
    still_found = {"retinaface": [1], "mtcnn": [1], "yunet": [2], "hidden": [0]}
    verdict = SimpleNamespace(by_detector=lambda: still_found)
    # judged over the last two rounds (started at iterations 0 and 2): all four iterations
    kept = [d.name for d in attack._without_stalled(run, verdict, [0, 2])]
    assert kept == ["retinaface", "yunet", "hidden"]  # mtcnn fell 20 %: no more repairs


class _FadingFace:
    """A stand-in detector with one face whose score falls linearly as the perturbation's
    mean size grows: 0.6 × threshold at full strength (16 levels), the threshold at 3.2."""

    name = "fading"
    score_threshold = 0.5
    device = torch.device("cpu")

    def __init__(self, clean: torch.Tensor) -> None:
        self.clean = clean

    def _score(self, x: torch.Tensor) -> float:
        strength = float((x - self.clean).abs().mean()) / 16
        return self.score_threshold * (1.1 - 0.5 * strength)

    def score_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensor([[self._score(x)]])]

    def detect_batch(self, x: torch.Tensor, threshold: float | None = None) -> list:
        from deepguard.models.base import Detections

        score = self._score(x)
        found = score > (threshold or self.score_threshold)
        boxes = np.array([[0, 0, 8, 8]] if found else np.zeros((0, 4)), np.float32)
        return [Detections(boxes, np.array([score] if found else [], np.float32))]


def test_shrinking_keeps_hidden_faces_clear_of_the_threshold() -> None:
    """The final shrink buys back quality, but a face hidden at full strength must stay below
    the early stop's margin, not just below the threshold: a perturbation at the bare
    threshold breaks under the next codec, warm start or smoothing."""
    from collections import Counter
    from types import SimpleNamespace

    from deepguard.attack.core import FacePoison
    from deepguard.attack.perturbation import Perturbation
    from deepguard.attack.verification import Face

    config = load_preset(
        "balanced", epsilon=16, shrink_steps=3, scales=[1.0], tools=[], deliver=["saved"]
    )
    frames = np.full((1, 16, 16, 3), 100, np.uint8)
    clean = torch.full((1, 3, 16, 16), 100.0)
    detector = _FadingFace(clean)
    attack = FacePoison(config, detectors=[detector])
    perturbation = Perturbation(torch.full((1, 1, 16, 16), 16.0), [0])
    perturbation.fix(torch.full_like(clean, 16.0))
    faces = [[Face(np.array([[0, 0, 8, 8]], np.float32))]]
    run = SimpleNamespace(
        x=clean, frames=frames, faces=faces, perturbation=perturbation, roundtrip=None,
        passes=Counter(),
    )  # fmt: skip
    verdict = attack.check(run)
    assert attack.clear(verdict, ["fading"])
    whole = [Window(0, 0, 0, 16, 16)]
    shrunk = attack._shrink(run, verdict, ["fading"], attack._budgets(frames, faces, whole))
    # scales 0.5 (0.85 × threshold: hidden, but inside the margin), 0.75 (0.725), 0.625
    # (0.7875): the bare-threshold rule would have taken 0.25 (0.975 × threshold)
    assert attack.clear(shrunk, ["fading"])
    delta = perturbation.value()
    assert float(delta.mean()) == pytest.approx(16 * 0.625)
    assert detector._score(clean + delta) < config.verify_margin * detector.score_threshold
    assert run.passes["shrink"] == 4  # three bisection steps and the final check


def test_the_budget_fades_out_around_each_face_window_but_not_at_the_frame_edge() -> None:
    from deepguard.attack.perturbation import soft_mask as _soft_mask

    x = torch.zeros(1, 3, 100, 200)
    inner = Window(0, 50, 20, 150, 80)  # 100×60: a band of 6 pixels at fade 0.1
    mask = _soft_mask(x, [inner], 0.1)[0, 0]
    assert bool((mask[20:80, 50:150] == 1).all())  # the window keeps its whole budget
    row = mask[50, 40:50]  # left of the window: rising towards it, 0 beyond the band
    assert float(row[0]) == 0 and bool((row[4:].diff() > 0).all()) and float(row[-1]) < 1
    assert float(mask[50, 30]) == 0 and float(mask[5, 100]) == 0

    at_edge = _soft_mask(x, [Window(0, 0, 0, 80, 100)], 0.1)[0, 0]
    assert bool((at_edge[:, :80] == 1).all())  # no fade along the frame's own edges
    assert float(at_edge[50, 80]) < 1 and float(at_edge[50, 95]) == 0
    assert bool((_soft_mask(x, [inner], 0.0)[0, 0] == (mask == 1).float()).all())  # hard edges


def test_views_of_different_sizes_go_through_a_detector_as_one_batch() -> None:
    from deepguard.attack.optimiser import _pad_batch

    views = [torch.ones(1, 3, 40, 30), torch.full((1, 3, 20, 50), 2.0)]
    batch = _pad_batch(views)
    assert batch.shape == (2, 3, 40, 50)
    assert bool((batch[0, :, :40, :30] == 1).all()) and float(batch[0, :, :, 30:].abs().sum()) == 0
    assert bool((batch[1, :, :20, :50] == 2).all()) and float(batch[1, :, 20:].abs().sum()) == 0
    assert _pad_batch(views[:1]) is views[0]


def test_a_momentum_unsafe_detectors_gradient_moves_the_step_but_not_the_momentum() -> None:
    """MTCNN re-selects its candidates every step: its gradient joins the step as it is and
    never accumulates in the momentum (where it stalled the attack)."""
    from deepguard.attack.perturbation import Perturbation

    perturbation = Perturbation(torch.full((1, 1, 4, 4), 8.0), [0], momentum=0.9)
    direct = torch.full((1, 3, 4, 4), -3.0)
    perturbation.step(None, 1.0, [direct])
    assert bool((perturbation.velocity[0] == 0).all())  # nothing accumulated
    assert bool((perturbation.components[0] == 1).all())  # moved against its gradient
    safe = torch.ones(1, 3, 4, 4)
    perturbation.step([safe], 1.0, [direct])  # one norm for both: the sum's mean size
    assert bool((perturbation.velocity[0] == 0.5).all())
    assert bool((perturbation.components[0] == 2).all())  # 0.5 - 1.5 < 0: still upwards


def test_the_optimiser_keeps_mtcnn_out_of_the_momentum(
    weights_dir: Path, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepguard.attack.core import FacePoison
    from deepguard.attack.perturbation import Perturbation

    steps: list[tuple[bool, bool]] = []
    real_step = Perturbation.step

    def observed(self, gradients, size, direct=None):
        steps.append((gradients is not None, direct is not None))
        return real_step(self, gradients, size, direct)

    monkeypatch.setattr(Perturbation, "step", observed)
    clean = read_rgb(media_dir / "lp_s12.jpg")
    for detectors, expected in ((["mtcnn"], (False, True)), (["yunet"], (True, False))):
        steps.clear()
        config = load_preset("balanced", detectors=detectors, tools=[], iterations=1,
                             repair_rounds=0, shrink_steps=0)  # fmt: skip
        FacePoison(config).protect(clean[None])
        assert steps and set(steps) == {expected}, detectors
