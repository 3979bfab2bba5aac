"""The verify stage: count the faces each ensemble detector and each tool profile still finds
in the decoded output.

H.264 washes out part of any perturbation, so protection is judged on frames decoded from
the file that was written, never on the pixels that went into the encoder. Tools are counted
through the ensemble's looks and through their own detectors outside the ensemble (loaded for
reports only), so the report can say which tools the clip is protected against.
"""

from __future__ import annotations

import numpy as np

from deepguard.attack.core import FacePoison
from deepguard.attack.tool_report import most_per_tool
from deepguard.attack.verification import Face, Faces
from deepguard.stages.chunk import Chunk


class VerifyStage:
    def __init__(self, attack: FacePoison) -> None:
        self.attack = attack

    def process(self, chunk: Chunk) -> Chunk:
        """Count, per frame, the protected faces each detector and tool still finds on the
        decoded file. The faces come in ``chunk.stats`` (each frame's ``faces`` boxes, from
        the poison stage's rows); without them every detection counts."""
        faces = [row["faces"] for row in chunk.stats] if len(chunk.stats) == len(chunk) else None
        known: Faces = (
            [[Face(np.asarray([box], np.float32)) for box in boxes] for boxes in faces]
            if faces is not None
            else [None] * len(chunk)
        )
        verdict = self.attack.judge(chunk.frames, known)
        counts = verdict.by_detector()
        uncovered = self.attack.judge_uncovered(chunk.frames, known)
        tools = most_per_tool(verdict.by_tool(), uncovered.by_tool())
        passes = (verdict.passes + uncovered.passes) / max(len(chunk), 1)
        chunk.stats = [
            {
                "faces_after": {name: found[index] for name, found in counts.items()},
                "tools_after": {tool: found[index] for tool, found in tools.items()},
                # forward passes of this check, this frame's share (a repair checks again)
                "verify_passes": passes,
            }
            for index in range(len(chunk))
        ]
        chunk.frames = chunk.frames[:0]  # the verdict is all that travels back
        return chunk
