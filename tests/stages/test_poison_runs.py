"""Frames after a key frame: a carried segment is kept whole when its last frame passes its
check; otherwise one perturbation is learnt for the segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.attack.config import load_preset
from deepguard.models.registry import load_detector
from deepguard.stages.chunk import Chunk, FrameTracks
from deepguard.stages.poison import PoisonStage
from deepguard.stages.track import TrackStage
from tests.media import read_frames


@pytest.fixture(scope="module")
def stage() -> PoisonStage:
    # judged at native size only (tools=[]): the scheduling of runs, not the tool profiles
    config = load_preset("balanced", detectors=["yunet"], epsilon=6, step=2, tools=[], seed=1)
    return PoisonStage(config.for_video())


@pytest.fixture(scope="module")
def still(videos_dir: Path) -> tuple[np.ndarray, list[FrameTracks]]:
    """One talking-head frame (256×256) four times, with its tracks: a face that holds still."""
    frame = np.stack(read_frames(videos_dir / "lp_d11.mp4", 1))[:, ::2, ::2]
    frames = np.repeat(frame, 4, axis=0)
    chunk = TrackStage(load_detector("yunet", "cpu")).process(Chunk(0, frames, scene_starts=[0]))
    assert all(chunk.tracks)
    return frames, chunk.tracks


def test_a_segment_whose_last_frame_stays_hidden_is_kept_without_a_pass(
    stage: PoisonStage, still: tuple[np.ndarray, list[FrameTracks]]
) -> None:
    frames, tracks = still
    key = stage.protect_frames(frames[:1], windows=stage._windows(tracks[:1], frames.shape[1:3]))
    assert key.faces_after["yunet"] == [0]
    run = stage._warm(frames, tracks, (key.delta[0], tracks[0]), set(), [[]] * len(frames))
    assert len(run.frames) == 4 and run.iterations == 0
    # no attack pass: only finding the faces and checking the sampled frame are counted
    assert "attack" not in run.passes_by_kind and run.passes == sum(run.passes_by_kind.values())
    assert 0 < run.passes_by_kind["check"] <= 2


def test_a_segment_that_fails_learns_one_perturbation_and_every_frame_is_hidden(
    stage: PoisonStage, still: tuple[np.ndarray, list[FrameTracks]]
) -> None:
    frames, tracks = still
    nothing = torch.zeros(3, *frames.shape[1:3])  # a carried start that hides nothing
    segment = stage._warm(frames, tracks, (nothing, tracks[0]), set(), [[]] * len(frames))
    assert len(segment.frames) == 4 and segment.passes > 0
    found = stage.attack.verify(segment.frames, None)
    assert found["yunet"] == [0, 0, 0, 0]
    # one perturbation, learnt on frames 0 and 3, kept on all four (the face held still)
    assert all(np.array_equal(segment.frames[0], frame) for frame in segment.frames[1:])


def test_a_tracks_epsilon_holds_until_the_next_scene_cut(
    still: tuple[np.ndarray, list[FrameTracks]],
) -> None:
    """A face that had to climb the ε ladder on its scene's key frame is not restarted on the
    first rung on the frames after it: the carried perturbation keeps its bound, and every
    frame of the scene reports the rung the track reached; a cut starts it over."""
    frames, tracks = still
    config = load_preset(
        "balanced", detectors=["yunet"], epsilon=12, epsilon_start=1, step=1, tools=[], seed=1
    )
    stage = PoisonStage(config.for_video())
    chunk = stage.process(Chunk(0, frames.copy(), scene_starts=[0], tracks=list(tracks)))
    key_level = chunk.stats[0]["epsilon"][0]
    assert key_level > 1, "the first rung hid the face: nothing climbed"
    assert [row["epsilon"] for row in chunk.stats] == [[key_level]] * 4
    # the frames after the key frame kept its perturbation without clipping it to 1 level
    moved = np.abs(chunk.protected.astype(int) - frames.astype(int)).max(axis=(1, 2, 3))
    assert (moved[1:] > 1).all() and (moved <= 12).all()
    # a cut on the third frame: the scene after it starts on the first rung again
    cut = stage.process(Chunk(4, frames.copy(), scene_starts=[2], tracks=list(tracks)))
    assert cut.stats[2]["key_frame"] and cut.stats[1]["epsilon"] == [key_level]
    assert cut.stats[2]["epsilon"][0] <= key_level


def test_every_pass_a_frame_cost_is_in_its_row_by_kind(
    stage: PoisonStage, still: tuple[np.ndarray, list[FrameTracks]]
) -> None:
    """The tracker's detection, the attack's passes and the report's count of the tools'
    other detectors: each frame's row has its share, and they add up to its passes."""
    frames, tracks = still
    chunk = Chunk(0, frames.copy(), scene_starts=[0], tracks=list(tracks), passes={"track": 4})
    rows = stage.process(chunk).stats
    for row in rows:
        assert row["passes_by_kind"]["track"] == 1
        assert row["passes"] == pytest.approx(sum(row["passes_by_kind"].values()))
    key = rows[0]["passes_by_kind"]
    assert key["faces"] > 0 and key["attack"] > 0 and key["check"] > 0
