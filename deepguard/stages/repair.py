"""The repair stage: a second pass over a clip whose written file still shows a face on some
frames.

Every frame is rebuilt from its clean pixels and the perturbation it was written with (the
:class:`~deepguard.stages.spill.DeltaSpill`), so the encoder sees exactly the frames it saw
before except the failing ones. Those are attacked again with the key frame's full budget,
starting from their own perturbation and judged through a harsher encode (a higher CRF, after
the frames written before them): they passed the lone-frame check at the output's CRF
already, and still showed the face inside the clip, where most frames are P or B frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from deepguard.attack.core import Roundtrip
from deepguard.attack.metrics import report_psnr
from deepguard.stages.chunk import Chunk
from deepguard.stages.poison import PoisonStage
from deepguard.stages.spill import SpilledDeltas


class RepairStage:
    """Applies the spilled perturbations and re-attacks the failing frames."""

    def __init__(
        self,
        poison: PoisonStage,
        deltas: SpilledDeltas,
        failing: Mapping[int, Sequence[str]],
        roundtrip: Roundtrip | None,
        context: int = 2,
    ) -> None:
        """``failing``: frame index → the detectors its scene still attacks. A repaired frame
        is judged through ``roundtrip`` encoded after up to ``context`` frames written before
        it in the chunk, so that, as in the clip, it is coded from a reference frame."""
        self.poison = poison
        self.deltas = deltas
        self.failing = failing
        self.roundtrip = roundtrip
        self.context = context

    def process(self, chunk: Chunk) -> Chunk:
        """Sets ``protected`` (as written before, failing frames repaired) and one stats row
        per frame: empty for a frame left as it was."""
        protected = [self.deltas.apply(chunk.start + i, f) for i, f in enumerate(chunk.frames)]
        chunk.protected = np.stack(protected)
        chunk.stats = [{} for _ in range(len(chunk))]
        for offset in range(len(chunk)):
            targets = self.failing.get(chunk.start + offset)
            if not targets:
                continue
            clean = chunk.frames[offset : offset + 1]
            start = torch.from_numpy(
                chunk.protected[offset : offset + 1].astype(np.float32) - clean
            ).permute(0, 3, 1, 2)
            before = chunk.protected[max(0, offset - self.context) : offset]
            roundtrip = _after(before, self.roundtrip)
            result = self.poison.repair_frame(clean, start, roundtrip, list(targets))
            chunk.protected[offset] = result.frames[0]
            after = {name: found[0] for name, found in result.faces_after.items()}
            chunk.stats[offset] = {
                "final_repair": {
                    "rounds": 1,
                    "targets": sorted(targets),
                    "passes": result.passes,
                    "iterations": result.iterations,
                    "faces_after_roundtrip": after,
                },
                "psnr_db": report_psnr(clean[0], chunk.protected[offset]),
                # the repaired frame's faces climb from the rung their perturbation carried
                "epsilon": [rung.level for rung in result.rungs[0]],
                "floor_lifted": [j for j, rung in enumerate(result.rungs[0]) if rung.flat],
            }
        return chunk


def _after(before: np.ndarray, roundtrip: Roundtrip | None) -> Roundtrip | None:
    """``roundtrip`` of frames encoded after the ``before`` frames, which are dropped from its
    result."""
    if roundtrip is None or not len(before):
        return roundtrip

    def in_context(frames: np.ndarray) -> np.ndarray:
        return roundtrip(np.concatenate([before, frames]))[len(before) :]

    return in_context
