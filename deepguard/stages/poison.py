"""The poison stage: run the FacePoison attack core on a chunk of frames."""

from __future__ import annotations

import numpy as np
import torch

from deepguard.attack.config import AttackConfig
from deepguard.attack.core import AttackResult, FacePoison, Progress, Roundtrip
from deepguard.attack.regions import Window


class PoisonStage:
    """Holds the loaded ensemble so every chunk reuses it (loading weights is slow)."""

    def __init__(self, config: AttackConfig, device: str = "cpu") -> None:
        self.config = config
        self.attack = FacePoison(config, device=device)

    def process(
        self,
        frames: np.ndarray,
        roundtrip: Roundtrip | None = None,
        progress: Progress | None = None,
        init_delta: torch.Tensor | None = None,
        windows: list[Window] | None = None,
    ) -> AttackResult:
        """Protect N×H×W×3 uint8 RGB frames; see :meth:`FacePoison.protect`."""
        return self.attack.protect(
            frames, init_delta=init_delta, windows=windows, roundtrip=roundtrip, progress=progress
        )
