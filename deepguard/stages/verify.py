"""The verify stage: count the faces each ensemble detector and each tool profile still finds
in the decoded output.

H.264 washes out part of any perturbation, so protection is judged on frames decoded from
the file that was written, never on the pixels that went into the encoder. Tools are counted
through the ensemble's looks and through their own detectors outside the ensemble (loaded for
reports only), so the report can say which tools the clip is protected against.
"""

from __future__ import annotations

from deepguard.attack.core import FacePoison
from deepguard.attack.tool_counts import with_uncovered
from deepguard.stages.chunk import Chunk


class VerifyStage:
    def __init__(self, attack: FacePoison) -> None:
        self.attack = attack

    def process(self, chunk: Chunk) -> Chunk:
        verdict = self.attack.judge([chunk.frames])
        counts = verdict.by_detector()
        tools = with_uncovered(self.attack, verdict.by_tool(), [chunk.frames])
        chunk.stats = [
            {
                "faces_after": {name: found[index] for name, found in counts.items()},
                "tools_after": {tool: found[index] for tool, found in tools.items()},
            }
            for index in range(len(chunk))
        ]
        chunk.frames = chunk.frames[:0]  # the verdict is all that travels back
        return chunk
