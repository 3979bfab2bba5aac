"""The unit of work that flows through the stages: a few consecutive frames of one input.

Each stage fills in its own fields and hands the chunk on, so data only ever flows forward:
decode → scenecut → track → poison → smooth → remux.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: one tracked face in one frame: track id → smoothed box (x1, y1, x2, y2) in frame pixels
FrameTracks = dict[int, tuple[float, float, float, float]]


@dataclass
class Chunk:
    """Consecutive frames (N×H×W×3 uint8 RGB, display orientation) and what stages add."""

    start: int  # index of the first frame in the input
    frames: np.ndarray
    pts: np.ndarray | None = None  # int64 presentation timestamps in the stream's time base
    durations: np.ndarray | None = None  # int64 frame durations, same time base
    scene_starts: list[int] = field(default_factory=list)  # chunk-relative cut frames
    tracks: list[FrameTracks] = field(default_factory=list)  # per frame
    protected: np.ndarray | None = None  # N×H×W×3 uint8, set by the poison stage
    stats: list[dict[str, Any]] = field(default_factory=list)  # per-frame report rows
    #: detector passes the stages before the poison stage spent on these frames, by kind
    passes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def stop(self) -> int:
        return self.start + len(self.frames)
