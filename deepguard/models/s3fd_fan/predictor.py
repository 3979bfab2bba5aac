"""S3FD as face_alignment (and Wav2Lip's copy of it) runs it, as a ``FaceDetector``.

``face_alignment/detection/sfd``: the picture at its own size, BGR minus (104, 117, 123) in
BGR order (no flip back to RGB, unlike the ssd.pytorch ports), one square prior of 4 × the
stride per cell at strides 4 to 128 centred at ``stride / 2 + column · stride``, SSD decoding
with variances 0.1 and 0.2, a face score of softmax(logits)[1], NMS at 0.3 and a threshold
of 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from deepguard.models.base import FaceDetector, rgb_to_bgr
from deepguard.models.s3fd.ssd import SSDFaceDetector, load_checkpoint
from deepguard.models.s3fd_fan.net import S3FDFan

WEIGHTS_FILE = "s3fd-619a316812.pth"
BGR_MEAN = (104.0, 117.0, 123.0)


class S3FDFanDetector(SSDFaceDetector):
    """face_alignment's S3FD: threshold 0.5, NMS 0.3, fp32 (its L2 norms, as the others)."""

    name = "s3fd_fan"

    def __init__(self) -> None:
        super().__init__(S3FDFan())
        self.feature_modules = {name: f"net.{name}" for name in ("conv3_3", "conv4_3", "fc7")}

    def preprocess(self, x: Tensor) -> Tensor:
        """RGB 0..255 → BGR minus the mean, as face_alignment feeds the net."""
        return rgb_to_bgr(x) - x.new_tensor(BGR_MEAN).view(1, 3, 1, 1)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """conv3_3, conv4_3 and fc7 (the hooked convolutions' outputs, before their ReLU)."""
        return FaceDetector.features(self, x)


def load(weights: Mapping[str, Path] | None) -> S3FDFanDetector:
    """The detector; ``weights`` maps ``s3fd-619a316812.pth`` to a local path (none: random
    initialisation, for tests and timings)."""
    detector = S3FDFanDetector()
    if weights is not None:
        load_checkpoint(detector.net, weights[WEIGHTS_FILE])
    return detector.eval().requires_grad_(False)
