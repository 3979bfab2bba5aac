"""The smooth stage: steady the perturbation along each track, so protection does not flicker.

Each frame's perturbation is blended with the previous frame's (carried along the tracked
faces), re-projected into the ε-ball, and verified on the codec round-trip. A blend that lets
a face reappear is weakened, and at worst dropped for that frame: smoothing may cost
steadiness, never protection.
"""

from __future__ import annotations

import numpy as np
import torch

from deepguard.attack.core import FacePoison, Roundtrip
from deepguard.attack.metrics import report_psnr
from deepguard.attack.verification import Face
from deepguard.stages.carry import carry_delta
from deepguard.stages.chunk import Chunk, FrameTracks

#: blend weights tried in turn, as fractions of the configured one
_FALLBACK = (1.0, 0.5, 0.0)


class SmoothStage:
    """Stateful across chunks: it remembers the last frame's perturbation and tracks."""

    def __init__(self, attack: FacePoison, roundtrip: Roundtrip | None = None) -> None:
        self.attack = attack
        self.config = attack.config
        self.roundtrip = roundtrip
        self.previous: tuple[torch.Tensor, FrameTracks] | None = None

    def process(self, chunk: Chunk) -> Chunk:
        assert chunk.protected is not None, "the poison stage runs before smoothing"
        strength = self.config.video.smoothing
        chunk.protected = np.array(chunk.protected)  # frames from Ray are read-only views
        for index in range(len(chunk)):
            tracks = chunk.tracks[index] if chunk.tracks else {}
            clean = chunk.frames[index]
            delta = _delta(chunk.protected[index], clean)
            stats = chunk.stats[index] if index < len(chunk.stats) else {}
            # a frame that kept its carried perturbation unchecked is already steady
            unchecked = "faces_after_roundtrip" in stats and stats["faces_after_roundtrip"] is None
            if index in chunk.scene_starts or self.previous is None or not strength or unchecked:
                stats["smoothing"] = 0.0
            else:
                chunk.protected[index], used = self._smooth(clean, delta, tracks, stats, strength)
                stats["smoothing"] = used
                delta = _delta(chunk.protected[index], clean)
            if self.previous is not None and index not in chunk.scene_starts:
                stats["flicker"] = float((delta - self.previous[0]).abs().mean())
            stats["psnr_db"] = report_psnr(clean, chunk.protected[index])
            self.previous = (delta, tracks)
        return chunk

    def _smooth(
        self,
        clean: np.ndarray,
        delta: torch.Tensor,
        tracks: FrameTracks,
        stats: dict,
        strength: float,
    ) -> tuple[np.ndarray, float]:
        previous_delta, previous_tracks = self.previous
        config = self.config
        carried, defined = carry_delta(
            previous_delta, previous_tracks, tracks, config.region_margin,
            config.region_margin_min, keep_background=not config.region_mode,
        )  # fmt: skip
        allowed = stats.get("faces_after_roundtrip")
        unsmoothed = _apply(clean, delta, config.max_epsilon)
        for fraction in _FALLBACK:
            weight = strength * fraction
            if weight == 0:
                return unsmoothed, 0.0
            blended = delta + weight * defined * (carried - delta)
            candidate = _apply(clean, blended, config.max_epsilon)
            found = self.attack.verify(candidate[None], self.roundtrip, [_faces(stats)])
            if allowed is None or all(found[name][0] <= allowed.get(name, 0) for name in found):
                return candidate, weight
        return unsmoothed, 0.0


def _faces(stats: dict) -> list[Face] | None:
    """The frame's protected faces from its row (None: not known, every detection counts)."""
    if "faces" not in stats:
        return None
    return [Face(np.asarray([box], np.float32)) for box in stats["faces"]]


def _delta(protected: np.ndarray, clean: np.ndarray) -> torch.Tensor:
    """The added perturbation as a C×H×W float tensor."""
    difference = protected.astype(np.float32) - clean.astype(np.float32)
    return torch.from_numpy(difference).permute(2, 0, 1)


def _apply(clean: np.ndarray, delta: torch.Tensor, epsilon: float) -> np.ndarray:
    """Clean + perturbation, rounded to 8 bits and kept exactly inside the ε-ball."""
    bound = int(np.floor(epsilon))
    step = delta.permute(1, 2, 0).round().clamp(-bound, bound).numpy().astype(np.int16)
    return np.clip(clean.astype(np.int16) + step, 0, 255).astype(np.uint8)
