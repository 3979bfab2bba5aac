"""The track stage: a face detector feeding a Kalman-filtered multi-face tracker.

Design (after the published SORT paper; the code is our own): each face is a constant-velocity
Kalman filter over (centre x, centre y, area, aspect ratio); detections are assigned to tracks
by the Hungarian method on IoU. Track ids stay stable through a scene, a predicted box bridges
a few frames where the detector misses the face, and the filtered boxes do not jitter, so
the protected region moves smoothly with the face.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from filterpy.kalman import KalmanFilter
from scipy.optimize import linear_sum_assignment

from deepguard.attack.core import frames_to_tensor
from deepguard.attack.transforms import resize
from deepguard.models.base import FaceDetector
from deepguard.stages.chunk import Chunk, FrameTracks

#: frames are searched for faces at most this many pixels on their longer side
DETECT_MAX_SIDE = 640


def box_to_state(box: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) → (centre x, centre y, area, aspect ratio) as a 4×1 measurement."""
    width, height = box[2] - box[0], box[3] - box[1]
    return np.array([[box[0] + width / 2], [box[1] + height / 2], [width * height],
                     [width / max(height, 1e-6)]])  # fmt: skip


def state_to_box(state: np.ndarray) -> np.ndarray:
    centre_x, centre_y, area, ratio = (float(v) for v in state[:4, 0])
    width = np.sqrt(max(area, 1e-6) * max(ratio, 1e-6))
    height = max(area, 1e-6) / width
    return np.array([centre_x - width / 2, centre_y - height / 2,
                     centre_x + width / 2, centre_y + height / 2])  # fmt: skip


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of A×4 and B×4 xyxy boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class Track:
    """One face: a Kalman filter with a constant-velocity model of its box."""

    def __init__(self, track_id: int, box: np.ndarray) -> None:
        self.id = track_id
        kf = KalmanFilter(dim_x=7, dim_z=4)
        kf.F = np.eye(7)
        kf.F[0, 4] = kf.F[1, 5] = kf.F[2, 6] = 1.0  # position += velocity each frame
        kf.H = np.eye(4, 7)
        kf.R[2:, 2:] *= 10.0  # area and aspect are noisier measurements than the centre
        kf.P[4:, 4:] *= 1000.0  # velocities start unknown
        kf.P *= 10.0
        kf.Q[-1, -1] *= 0.01
        kf.Q[4:, 4:] *= 0.01
        kf.x[:4] = box_to_state(box)
        self.filter = kf
        self.hits = 1
        self.misses = 0  # consecutive frames without a matching detection

    def predict(self) -> np.ndarray:
        if self.filter.x[2, 0] + self.filter.x[6, 0] <= 0:
            self.filter.x[6, 0] = 0.0  # an area cannot shrink below zero
        self.filter.predict()
        self.misses += 1
        return self.box

    def update(self, box: np.ndarray) -> None:
        self.filter.update(box_to_state(box))
        self.hits += 1
        self.misses = 0

    @property
    def box(self) -> np.ndarray:
        return state_to_box(self.filter.x)


class FaceTracker:
    """Many faces at once; ``update`` once per frame with that frame's detections."""

    def __init__(self, iou_threshold: float = 0.3, max_misses: int = 5, min_hits: int = 1):
        self.iou_threshold = iou_threshold
        self.max_misses = max_misses
        self.min_hits = min_hits
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def reset(self) -> None:
        """Forget every face (a scene cut); ids keep counting so they never repeat."""
        self.tracks = []

    def update(self, boxes: np.ndarray) -> FrameTracks:
        """Advance one frame; returns the boxes of the faces believed present in it."""
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        predicted = np.array([t.predict() for t in self.tracks]).reshape(-1, 4)
        matched_tracks, matched_boxes = self._match(predicted, boxes)
        for t, b in zip(matched_tracks, matched_boxes, strict=True):
            self.tracks[t].update(boxes[b])
        unmatched = set(range(len(boxes))) - set(matched_boxes)
        self.tracks += [Track(next(self._ids), boxes[b]) for b in sorted(unmatched)]
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        return {
            t.id: tuple(float(v) for v in t.box) for t in self.tracks if t.hits >= self.min_hits
        }

    def _match(self, predicted: np.ndarray, boxes: np.ndarray) -> tuple[list[int], list[int]]:
        overlap = iou_matrix(predicted, boxes)
        if not overlap.size:
            return [], []
        rows, cols = linear_sum_assignment(-overlap)
        keep = overlap[rows, cols] >= self.iou_threshold
        return rows[keep].tolist(), cols[keep].tolist()


class TrackStage:
    """Finds faces in every frame and follows them; resets at scene cuts."""

    def __init__(self, detector: FaceDetector, tracker: FaceTracker | None = None) -> None:
        self.detector = detector
        self.tracker = tracker or FaceTracker()

    @torch.no_grad()
    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Face boxes per frame (K×4, frame pixels), found on a downscaled copy for speed."""
        scale = min(1.0, DETECT_MAX_SIDE / max(frames.shape[1:3]))
        x = resize(frames_to_tensor(frames, self.detector.device), scale)
        return [d.boxes / scale for d in self.detector.detect_batch(x)]

    def process(self, chunk: Chunk) -> Chunk:
        chunk.tracks = []
        # one forward pass per frame, counted with the attack's (the report's accounting)
        chunk.passes["track"] = chunk.passes.get("track", 0) + len(chunk)
        for offset, boxes in enumerate(self.detect(chunk.frames)):
            if offset in chunk.scene_starts:
                self.tracker.reset()
            chunk.tracks.append(self.tracker.update(boxes))
        return chunk
