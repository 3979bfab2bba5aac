"""A clip's frames after a key frame: a carried perturbation kept without a detector pass, and
the attack seeing the real delivery codec now and then."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison, _through
from deepguard.attack.regions import Window
from tests.media import read_frames


@pytest.fixture(scope="module")
def yunet_attack() -> FacePoison:
    # judged at native size only (tools=[]): the mechanics, not the tool profiles
    config = load_preset("balanced", detectors=["yunet"], epsilon=6, step=2, tools=[]).for_video()
    return FacePoison(config)


@pytest.fixture(scope="module")
def frame(videos_dir: Path) -> np.ndarray:
    return np.stack(read_frames(videos_dir / "lp_d11.mp4", 1))[:, ::2, ::2].copy()


def test_a_carried_perturbation_that_still_hides_is_kept_without_a_pass(
    yunet_attack: FacePoison, frame: np.ndarray
) -> None:
    protected = yunet_attack.protect(frame)
    assert protected.faces_before["yunet"] == [1] and protected.faces_after["yunet"] == [0]
    held = yunet_attack.hold(frame, protected.delta, None, None, sample=[0])
    assert held is not None and held.passes == 0 and held.iterations == 0
    # the same pixels, but for a level of rounding in the band where the attack's budget fades
    assert np.abs(held.frames.astype(int) - protected.frames.astype(int)).max() <= 1
    assert held.faces_before["yunet"] == [1]
    assert held.faces_after["yunet"] == [None]  # not counted here: the written file's check is


def test_a_carried_perturbation_that_no_longer_hides_is_refused(
    yunet_attack: FacePoison, frame: np.ndarray
) -> None:
    nothing = torch.zeros(1, 3, *frame.shape[1:3])
    assert yunet_attack.hold(frame, nothing, None, None, sample=[0]) is None


def test_the_delivery_codec_is_seen_forward_and_passed_straight_through_backward(
    yunet_attack: FacePoison,
) -> None:
    attack = FacePoison(
        yunet_attack.config.model_copy(update={"eot_delivery": 1.0}), yunet_attack.detectors
    )
    coarse = lambda frames: (frames // 16 * 16).astype(np.uint8)  # noqa: E731  a harsh "codec"
    run = SimpleNamespace(rng=random.Random(0), through_codec=_through(coarse))
    x = (torch.arange(2 * 3 * 4 * 5, dtype=torch.float32) % 256).view(2, 3, 4, 5)
    x.requires_grad_(True)
    seen = attack.optimiser._through_delivery(run, x)
    expected = torch.from_numpy(coarse(x.detach().permute(0, 2, 3, 1).byte().numpy()))
    torch.testing.assert_close(seen.detach(), expected.permute(0, 3, 1, 2).float())
    (seen * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    # off (the photo default): the frames pass untouched
    assert yunet_attack.config.model_copy(update={"eot_delivery": 0.0}).eot_delivery == 0.0
    untouched = FacePoison(load_preset("balanced", detectors=["yunet"]), attack.detectors)
    assert untouched.optimiser._through_delivery(run, x) is x


def test_frames_attacked_with_a_shared_perturbation_end_with_the_same_one(
    yunet_attack: FacePoison, videos_dir: Path
) -> None:
    frames = np.stack(read_frames(videos_dir / "lp_d11.mp4", 9))[[0, 8], ::2, ::2].copy()
    height, width = frames.shape[1:3]
    around_the_face = [
        Window(i, width // 4, height // 8, 3 * width // 4, 7 * height // 8) for i in (0, 1)
    ]
    result = yunet_attack.protect(frames, windows=around_the_face, shared=True)
    assert result.iterations > 0 and result.delta.abs().max() > 0
    # the same up to float rounding (each frame is clipped to 0..255 on its own)
    torch.testing.assert_close(result.delta[0], result.delta[1], atol=1e-3, rtol=0)
