"""The final repair: every written frame's perturbation kept on disk, and a second pass that
rebuilds the frames from it and attacks only the failing ones again."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from deepguard.attack.config import load_preset
from deepguard.stages.chunk import Chunk
from deepguard.stages.poison import PoisonStage
from deepguard.stages.repair import RepairStage
from deepguard.stages.spill import DeltaSpill
from tests.media import read_frames


def _perturbed(clean: np.ndarray, seed: int, box: tuple[int, int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y1, y2, x1, x2 = box
    out = clean.astype(np.int16)
    out[y1:y2, x1:x2] += rng.integers(-6, 7, size=(y2 - y1, x2 - x1, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_the_spill_gives_back_every_frame_exactly_and_keeps_only_the_perturbed_box(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(3, 120, 160, 3), dtype=np.uint8)
    written = [
        _perturbed(clean[0], 1, (10, 70, 20, 90)),
        clean[1].copy(),  # a frame left untouched
        _perturbed(clean[2], 2, (0, 120, 100, 160)),
    ]
    spill = DeltaSpill(tmp_path / "spill")
    for index in range(3):
        spill.put(index, clean[index], written[index])
    spill.put(0, clean[0], _perturbed(clean[0], 3, (5, 15, 5, 15)))  # replaced later
    spill.put(0, clean[0], written[0])
    deltas = pickle.loads(pickle.dumps(spill.finish()))  # as another process receives it
    for index in range(3):
        assert np.array_equal(deltas.apply(index, clean[index]), written[index])
    # the boxes of the perturbation, not whole frames: far less than the raw frames
    assert (tmp_path / "spill").stat().st_size < clean.nbytes / 4
    deltas.remove()
    assert not (tmp_path / "spill").exists()


def test_a_perturbation_beyond_the_int8_range_is_refused(tmp_path: Path) -> None:
    clean = np.zeros((4, 4, 3), np.uint8)
    spill = DeltaSpill(tmp_path / "spill")
    with pytest.raises(ValueError, match="beyond"):
        spill.put(0, clean, np.full_like(clean, 200))
    spill.abort()
    assert not (tmp_path / "spill").exists()


def test_only_failing_frames_are_attacked_again_and_the_others_come_back_as_written(
    videos_dir: Path, tmp_path: Path
) -> None:
    config = load_preset("balanced", detectors=["yunet"], epsilon=6, step=2, tools=[], seed=1)
    poison = PoisonStage(config.for_video())
    clean = np.stack(read_frames(videos_dir / "lp_d11.mp4", 2))[:, ::2, ::2].copy()
    assert poison.attack.count_faces(clean)["yunet"] == [1, 1]
    kept = _perturbed(clean[0], 4, (0, 40, 0, 40))  # written with a perturbation that is kept
    spill = DeltaSpill(tmp_path / "spill")
    spill.put(0, clean[0], kept)
    spill.put(1, clean[1], clean[1])  # written unprotected: the check found the face
    stage = RepairStage(poison, spill.finish(), {1: ["yunet"]}, None)

    chunk = stage.process(Chunk(0, clean))

    assert np.array_equal(chunk.protected[0], kept) and chunk.stats[0] == {}
    repair = chunk.stats[1]["final_repair"]
    assert repair["passes"] > 0 and repair["faces_after_roundtrip"] == {"yunet": 0}
    assert poison.attack.count_faces(chunk.protected[1:])["yunet"] == [0]
    assert np.abs(chunk.protected[1].astype(int) - clean[1]).max() <= 6
    assert chunk.stats[1]["psnr_db"] > 30
