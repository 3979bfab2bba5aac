"""The Kalman tracker on synthetic moving boxes: stable ids, bridged misses, resets."""

from __future__ import annotations

import numpy as np

from deepguard.stages.track import FaceTracker, iou_matrix


def _box(x: float, y: float, size: float = 60) -> np.ndarray:
    return np.array([x, y, x + size, y + size])


def test_two_faces_keep_their_ids_through_misses() -> None:
    tracker = FaceTracker(max_misses=4)
    missed = {5, 6, 7}  # face A is not detected for three frames
    ids_a, ids_b = set(), set()
    for t in range(20):
        a, b = _box(10 + 4 * t, 50), _box(300 - 3 * t, 200 + 2 * t)
        detections = [b] if t in missed else [a, b]
        tracks = tracker.update(np.array(detections))
        by_overlap = {tid: box for tid, box in tracks.items()}
        for tid, box in by_overlap.items():
            if iou_matrix(np.array([box]), a[None])[0, 0] > 0.5:
                ids_a.add(tid)
            if iou_matrix(np.array([box]), b[None])[0, 0] > 0.5:
                ids_b.add(tid)
        if t in missed:  # the predicted box bridges the miss, close to the true position
            assert any(iou_matrix(np.array([box]), a[None])[0, 0] > 0.6 for box in tracks.values())
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_a_face_that_stays_away_is_dropped() -> None:
    tracker = FaceTracker(max_misses=2)
    tracker.update(np.array([_box(0, 0)]))
    for _ in range(3):
        tracks = tracker.update(np.zeros((0, 4)))
    assert tracks == {}


def test_boxes_are_smoothed_against_jitter() -> None:
    rng = np.random.default_rng(0)
    tracker = FaceTracker()
    errors_raw, errors_tracked = [], []
    for t in range(40):
        truth = _box(100 + 2 * t, 100)
        noisy = truth + rng.normal(0, 4, 4)
        (box,) = tracker.update(noisy[None]).values()
        if t > 5:
            errors_raw.append(np.abs(noisy - truth).mean())
            errors_tracked.append(np.abs(np.array(box) - truth).mean())
    assert np.mean(errors_tracked) < 0.8 * np.mean(errors_raw)


def test_reset_starts_new_ids() -> None:
    tracker = FaceTracker()
    (first,) = tracker.update(np.array([_box(0, 0)]))
    tracker.reset()
    (second,) = tracker.update(np.array([_box(0, 0)]))
    assert first != second
