"""The verify stage: count the faces each ensemble detector still finds in the decoded output.

H.264 washes out part of any perturbation, so protection is judged on frames decoded from
the file that was written, never on the pixels that went into the encoder.
"""

from __future__ import annotations

from deepguard.attack.core import FacePoison
from deepguard.stages.chunk import Chunk


class VerifyStage:
    def __init__(self, attack: FacePoison) -> None:
        self.attack = attack

    def process(self, chunk: Chunk) -> Chunk:
        counts = self.attack.count_faces(chunk.frames)
        chunk.stats = [
            {"faces_after": {name: found[index] for name, found in counts.items()}}
            for index in range(len(chunk))
        ]
        chunk.frames = chunk.frames[:0]  # the verdict is all that travels back
        return chunk
