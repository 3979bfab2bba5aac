"""The scenecut stage: PySceneDetect's content detector, fed the frames already decoded.

A cut tells the tracker to drop its tracks and the poison stage to attack the new scene's
first frame at full strength instead of warm-starting from an unrelated picture.
"""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode

from deepguard.stages.chunk import Chunk

#: frames are analysed at this width: cuts are a global property, detail only costs time
ANALYSIS_WIDTH = 256


class SceneCutStage:
    """Stateful across chunks: the detector compares each frame with the ones before it."""

    def __init__(self, fps: float | Fraction, threshold: float = 27.0, min_scene_len: int = 15):
        self.fps = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
        self.detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
        self.cuts: list[int] = []

    def process(self, chunk: Chunk) -> Chunk:
        """Mark the chunk-relative frames that start a new scene (frame 0 of the video too)."""
        starts = []
        for offset, frame in enumerate(chunk.frames):
            index = chunk.start + offset
            if index == 0:
                starts.append(offset)
            for cut in self.detector.process_frame(self._timecode(index), _small_bgr(frame)):
                starts.append(cut.frame_num - chunk.start)
                self.cuts.append(cut.frame_num)
        chunk.scene_starts = sorted({s for s in starts if 0 <= s < len(chunk)})
        return chunk

    def _timecode(self, index: int) -> FrameTimecode:
        return FrameTimecode(index, fps=self.fps)


def _small_bgr(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    if width > ANALYSIS_WIDTH:
        size = (ANALYSIS_WIDTH, max(1, round(height * ANALYSIS_WIDTH / width)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:, :, ::-1])
