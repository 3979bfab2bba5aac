"""Face-Detector-1MB (slim and RFB) as :class:`~deepguard.models.base.FaceDetector` s.

Inference follows biubug6/Face-Detector-1MB-with-landmark ``detect.py``: by default
(``--origin_size True``) the image is used at its own size, in BGR order minus the
per-channel mean (104, 117, 123). Thresholds: ``detect.py`` keeps boxes above
``--confidence_threshold 0.02``, runs NMS at ``--nms_threshold 0.4`` and draws faces scoring
at least ``--vis_thres 0.6``; the repository's ncnn C++ detector uses the same 0.6 / 0.4.
``score_threshold`` is the 0.6 visualisation threshold (what a user sees as a face).

The repository's C++ demo instead scales every image to a 320-pixel long side (hence the
"320" in the names); ``load(..., long_side=320)`` reproduces that, resizing inside the
differentiable path and mapping boxes back to input pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.models.base import DensePrediction, FaceDetector, read_state_dict
from deepguard.models.retinaface.predictor import BGR_MEAN, bgr_minus_mean
from deepguard.models.retinaface.priors import PriorCache, PriorConfig
from deepguard.models.ultraslim.net import UltraSlimNet, Variant

WEIGHTS_FILES: dict[str, str] = {"slim": "ultraslim_slim320.pth", "rfb": "ultraslim_rfb320.pth"}

#: ``cfg_slim`` / ``cfg_rfb`` in Face-Detector-1MB-with-landmark ``data/config.py``
PRIORS = PriorConfig(
    min_sizes=((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)), steps=(8, 16, 32, 64)
)


class UltraSlimDetector(FaceDetector):
    """Shared predictor of the two Face-Detector-1MB variants."""

    variant: Variant = "slim"
    feature_modules = {"conv8": "net.conv8", "conv11": "net.conv11", "conv13": "net.conv13"}
    score_threshold = 0.6
    nms_iou = 0.4
    max_detections = 750

    def __init__(self, long_side: int | None = None) -> None:
        super().__init__()
        if long_side is not None and long_side < 64:
            raise ValueError(f"long_side must be at least 64 pixels, got {long_side}")
        self.long_side = long_side
        self.net = UltraSlimNet(self.variant)
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.priors = PriorCache(PRIORS)

    def _network_input(self, x: Tensor) -> Tensor:
        """BGR minus mean, resized to ``long_side`` when one is set."""
        if self.long_side is not None:
            height, width = x.shape[-2:]
            scale = self.long_side / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            if size != (height, width):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return bgr_minus_mean(x, self.mean)

    def dense(self, x: Tensor) -> DensePrediction:
        height, width = x.shape[-2:]
        inputs = self._network_input(x)
        net_height, net_width = inputs.shape[-2:]
        loc, logits, _ = self.net(inputs)
        face_logits = logits[..., 1] - logits[..., 0]  # softmax(...)[1] == sigmoid(this)
        scores = face_logits.sigmoid()
        boxes = self.priors.decode(loc, net_height, net_width)
        if (net_height, net_width) != (height, width):
            to_input = boxes.new_tensor(
                [width / net_width, height / net_height, width / net_width, height / net_height]
            )
            boxes = boxes * to_input
        return DensePrediction(scores=scores, boxes=boxes, logits=face_logits)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        s8, s16, s32, _ = self.net.backbone(self._network_input(x))
        return {"conv8": s8, "conv11": s16, "conv13": s32}


class Slim320Detector(UltraSlimDetector):
    """Face-Detector-1MB, slim variant (depthwise-separable ``conv8``)."""

    name = "slim320"
    variant = "slim"


class RFB320Detector(UltraSlimDetector):
    """Face-Detector-1MB, RFB variant (Receptive Field Block ``conv8``)."""

    name = "rfb320"
    variant = "rfb"


DETECTORS: dict[str, type[UltraSlimDetector]] = {"slim": Slim320Detector, "rfb": RFB320Detector}


def load(
    weights: Mapping[str, Path] | None, variant: str = "slim", long_side: int | None = None
) -> FaceDetector:
    """Build a variant (``"slim"`` or ``"rfb"``); ``weights`` maps its file name to a path.

    ``long_side=None`` runs at the input's own size (``detect.py``'s default); an integer
    scales the long side to that many pixels first (the C++ demo uses 320).
    """
    if variant not in DETECTORS:
        raise ValueError(f"unknown Face-Detector-1MB variant {variant!r}; use 'slim' or 'rfb'")
    detector = DETECTORS[variant](long_side=long_side)
    if weights is not None:
        state = read_state_dict(weights[WEIGHTS_FILES[variant]])
        detector.net.load_state_dict(state, strict=True)
    return detector.eval().requires_grad_(False)
