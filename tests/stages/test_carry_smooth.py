"""Warm starts follow the faces; smoothing stays inside ε and never reveals a face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison
from deepguard.stages.carry import carry_delta
from deepguard.stages.chunk import Chunk
from deepguard.stages.smooth import SmoothStage
from tests.media import read_frames


def test_carry_moves_the_patch_with_the_face() -> None:
    delta = torch.zeros(3, 100, 120)
    delta[:, 20:40, 30:50] = torch.arange(20.0)[None, None, :]  # a ramp inside the face
    source = {7: (30.0, 20.0, 50.0, 40.0)}
    target = {7: (50.0, 30.0, 70.0, 50.0)}  # moved by (+20, +10)
    carried, defined = carry_delta(delta, source, target, margin=0.0, min_margin=0.0)
    assert torch.allclose(carried[:, 32:38, 52:68], delta[:, 22:28, 32:48], atol=0.6)
    assert defined[0, 40, 60] == 1 and defined[0, 5, 5] == 0
    assert carried[:, :, :45].abs().sum() == 0  # nothing left at the old place


def test_carry_scales_with_the_box_and_ignores_new_faces() -> None:
    delta = torch.ones(3, 64, 64)
    carried, defined = carry_delta(
        delta, {1: (10.0, 10.0, 20.0, 20.0)}, {1: (10.0, 10.0, 40.0, 40.0), 2: (50, 50, 60, 60)},
        margin=0.0, min_margin=0.0,
    )  # fmt: skip
    assert defined[0, 10:40, 10:40].all() and defined[0, 55, 55] == 0
    assert torch.allclose(carried[:, 12:38, 12:38], torch.ones(3, 26, 26))


def test_a_face_that_barely_moved_keeps_its_pattern_pixel_for_pixel() -> None:
    # an adversarial pattern alternates from pixel to pixel; resampling it at a sub-pixel
    # offset would average neighbours and wash it out
    delta = torch.zeros(3, 64, 64)
    delta[:, 10:40, 10:40] = 6 * (1 - 2 * ((torch.arange(30)[:, None] + torch.arange(30)) % 2))
    source = {3: (10.0, 10.0, 40.0, 40.0)}
    nudged = {3: (10.4, 9.7, 40.6, 39.8)}  # moved by a fraction of a pixel, 0.7 % wider
    carried, _ = carry_delta(delta, source, nudged, margin=0.0, min_margin=0.0)
    assert torch.equal(carried[:, 11:39, 11:39], delta[:, 11:39, 11:39])
    moved = {3: (13.2, 15.1, 43.4, 45.0)}  # three pixels right, five down
    carried, _ = carry_delta(delta, source, moved, margin=0.0, min_margin=0.0)
    assert torch.equal(carried[:, 16:44, 14:42], delta[:, 11:39, 11:39])


@pytest.fixture(scope="module")
def yunet_attack() -> FacePoison:
    # the smoothing mechanics, judged at native size only (tools=[])
    config = load_preset("balanced", detectors=["yunet"], epsilon=6, step=2, tools=[]).for_video()
    config = config.model_copy(update={"video": config.video.model_copy(update={"smoothing": 0.6})})
    return FacePoison(config)


def test_smoothing_stays_in_the_epsilon_ball_and_keeps_faces_hidden(
    yunet_attack: FacePoison, videos_dir: Path
) -> None:
    frames = np.stack(read_frames(videos_dir / "lp_d11.mp4", 3))[:, ::2, ::2].copy()
    height, width = frames.shape[1:3]
    first = yunet_attack.protect(frames[:1])
    second = yunet_attack.protect(frames[1:2])  # attacked on its own: a different pattern
    protected = np.concatenate([first.frames, second.frames])
    assert sum(first.faces_after["yunet"]) == 0 and sum(second.faces_after["yunet"]) == 0
    box = (width * 0.2, height * 0.1, width * 0.8, height * 0.9)
    chunk = Chunk(0, frames[:2], protected=protected, tracks=[{1: box}, {1: box}],
                  scene_starts=[0])  # fmt: skip
    chunk.stats = [{"faces_after_roundtrip": {"yunet": 0}} for _ in range(2)]
    SmoothStage(yunet_attack).process(chunk)
    change = chunk.protected.astype(int) - frames[:2].astype(int)
    assert np.abs(change).max() <= 6
    assert sum(yunet_attack.verify(chunk.protected, None)["yunet"]) == 0
    assert chunk.stats[1]["smoothing"] > 0  # the blend was kept
    before = np.abs(protected[1].astype(int) - protected[0].astype(int) -
                    (frames[1].astype(int) - frames[0].astype(int))).mean()  # fmt: skip
    assert chunk.stats[1]["flicker"] < before
