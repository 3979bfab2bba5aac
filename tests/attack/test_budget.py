"""Each face's budget: the ε ladder, the bound it makes, and the attack climbing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepguard.attack import budget as budget_module
from deepguard.attack.budget import FaceBudgets, Rung, ladder
from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison
from deepguard.attack.regions import face_windows
from deepguard.attack.verification import Face
from tests.conftest import read_rgb


def test_the_ladder_runs_from_six_to_the_cap_then_lifts_the_texture_floor() -> None:
    assert [r.level for r in ladder(12)] == [6, 8, 10, 12, 12]
    assert [r.flat for r in ladder(12)] == [False, False, False, False, True]
    assert [r.level for r in ladder(7)] == [6, 7, 7]
    assert ladder(4) == (Rung(4.0), Rung(4.0, flat=True))  # a cap below 6 is the first rung
    # the presets' caps, and --epsilon E setting the cap of the ladder
    assert load_preset("balanced").rungs[-1] == Rung(12.0, flat=True)
    assert load_preset("small-faces").rungs[-1] == Rung(12.0, flat=True)
    assert load_preset("strong").rungs[-2:] == (Rung(16.0), Rung(16.0, flat=True))
    assert [r.level for r in load_preset("balanced", epsilon=9).rungs] == [6, 8, 9, 9]
    assert load_preset("strong").max_epsilon == 16  # smoothing's bound is the cap


def _textured(height: int = 120, width: int = 200, frames: int = 1) -> np.ndarray:
    """Frames with a flat left half and a noisy right half."""
    rng = np.random.default_rng(0)
    picture = np.full((frames, height, width, 3), 128, np.uint8)
    picture[:, :, width // 2 :] = rng.integers(0, 255, (frames, height, width // 2, 3))
    return picture


def _budgets(frames: np.ndarray, faces, shared: bool = False, texture: float = 1.0):
    height, width = frames.shape[1:3]
    windows = [
        w
        for index, frame_faces in enumerate(faces)
        for face in frame_faces
        for w in face_windows(face.box[None], index, height, width, 0.3, 4)
    ]
    return FaceBudgets(ladder(12), frames, faces, windows, margin=0.3, least_margin=4,
                       fade=0.1, texture=texture, shared=shared)  # fmt: skip


def _face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(np.array([[x1, y1, x2, y2]], np.float32))


def test_a_face_that_climbs_raises_its_own_bound_and_no_other() -> None:
    frames = _textured()
    left, right = _face(10, 30, 50, 80), _face(140, 30, 180, 80)
    budgets = _budgets(frames, [[left, right]])
    before = budgets.bound()
    assert float(before.max()) <= 6 + 1e-6
    assert budgets.climb({(0, 1)}) == [1]
    after = budgets.bound()
    assert budgets.rung_of((0, 0)) == Rung(6) and budgets.rung_of((0, 1)) == Rung(8)
    torch.testing.assert_close(after[..., :100], before[..., :100])  # the left face: as it was
    assert float(after[..., 100:].max()) == pytest.approx(8)
    assert float(after[..., 100:].max()) <= 8 and float(after.max()) <= 12
    # up to the cap, then the cap on every pixel of the face, flat skin included
    for _ in range(4):  # 8, 10, 12, 12 flat
        budgets.climb({(0, 0)})
    assert budgets.rung_of((0, 0)) == Rung(12, flat=True)
    assert budgets.climb({(0, 0)}) == []  # nothing left to climb
    flat = budgets.bound()[0, 0, 30:80, 10:50]
    assert torch.all(flat == 12)  # the flat left half got 0.4 of the level before
    assert float(budgets.bound()[0, 0, 0, 199]) == 0  # far from any face: nothing


def test_a_face_starts_on_the_rung_of_its_hint_or_of_its_warm_start() -> None:
    frames = _textured()
    faces = [[_face(10, 30, 50, 80), _face(140, 30, 180, 80)]]
    budgets = _budgets(frames, faces)
    budgets.start_at(hints=[[((12, 31, 52, 82), Rung(10))]])  # a tracked face at 10
    assert budgets.per_frame(1) == [[Rung(10), Rung(6)]]
    warm = torch.zeros(1, 3, *frames.shape[1:3])
    warm[0, :, 40:60, 150:160] = 7.9  # the right face carries a perturbation of 8
    budgets.start_at(warm=warm)
    assert budgets.per_frame(1) == [[Rung(10), Rung(8)]]
    flat = _budgets(frames, faces)
    flat.start_at(hints=[[((140, 30, 180, 80), Rung(12, flat=True))]])
    assert flat.rung_of((0, 1)) == Rung(12, flat=True)


def test_frames_that_share_a_perturbation_share_one_bound_and_one_budget_per_face() -> None:
    frames = _textured(frames=2)
    faces = [[_face(10, 30, 50, 80)], [_face(12, 31, 52, 82), _face(140, 30, 180, 80)]]
    budgets = _budgets(frames, faces, shared=True)
    assert budgets.groups == [[(0, 0), (1, 0)], [(1, 1)]]
    budgets.climb({(1, 0)})  # the face found on the second frame climbs on both
    assert budgets.per_frame(2) == [[Rung(8)], [Rung(8), Rung(6)]]
    bound = budgets.bound()
    torch.testing.assert_close(bound[0], bound[1])


def test_a_face_still_found_after_a_round_is_attacked_a_rung_higher_and_no_other_moves(
    weights_dir: Path, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine faces, RetinaFace as faceswap runs it, two iterations a round: after every round
    exactly the faces the real check still found climb one rung, the bound elsewhere stays
    as it was, and the written pixels never leave a face's rung (nor the cap)."""
    clean = read_rgb(media_dir / "fdlite_group.jpg")
    config = load_preset(
        "balanced", detectors=["retinaface"], tools=["faceswap"], iterations=2,
        repair_iterations=2, min_iterations=1, shrink_steps=0,
    )  # fmt: skip
    attack = FacePoison(config)
    climbs: list[tuple[set, list[int], list[int], torch.Tensor, torch.Tensor]] = []
    real_climb = budget_module.FaceBudgets.climb

    def observed(self: FaceBudgets, keys: set) -> list[int]:
        steps, bound = list(self.steps), self.bound()
        moved = real_climb(self, keys)
        climbs.append((set(keys), steps, list(self.steps), bound, self.bound()))
        return moved

    monkeypatch.setattr(budget_module.FaceBudgets, "climb", observed)
    result = attack.protect(clean[None])
    assert climbs, "two iterations at ε 6 hid every face from faceswap: nothing to test"
    faces = result.faces[0]
    height, width = clean.shape[:2]
    for keys, steps, after, bound, new_bound in climbs:
        climbed = {index for _, index in keys}
        for index in range(len(faces)):
            expected = min(steps[index] + (index in climbed), len(config.rungs) - 1)
            assert after[index] == expected
        # away from every climbing face's window and fade band, the bound did not change
        untouched = torch.ones(height, width, dtype=torch.bool)
        for index in climbed:
            (w,) = face_windows(faces[index].box[None], 0, height, width, 0.3, 32)
            band = max(2, round(0.1 * min(w.x2 - w.x1, w.y2 - w.y1)))
            untouched[max(0, w.y1 - band) : w.y2 + band, max(0, w.x1 - band) : w.x2 + band] = 0
        assert torch.equal(new_bound[0, 0][untouched], bound[0, 0][untouched])
    levels = [rung.level for rung in result.rungs[0]]
    assert levels == [config.rungs[step].level for step in climbs[-1][2]]
    moved = np.abs(result.frames[0].astype(int) - clean.astype(int))
    assert moved.max() <= config.epsilon  # the cap holds on the written pixels
    for face, level in zip(faces, levels, strict=True):
        x1, y1, x2, y2 = face.box.astype(int)
        others = [f for f, lv in zip(faces, levels, strict=True) if lv > level]
        if not any(_overlap(f.box, face.box, 80) for f in others):
            assert moved[y1:y2, x1:x2].max() <= level


def _overlap(a: np.ndarray, b: np.ndarray, grow: float) -> bool:
    return bool(a[0] - grow < b[2] and b[0] - grow < a[2] and a[1] - grow < b[3]
                and b[1] - grow < a[3])  # fmt: skip
