"""RetinaFace-MobileNet-0.25 as a :class:`~deepguard.models.base.FaceDetector`.

The shipped checkpoint is biubug6/Face-Detector-1MB-with-landmark's ``mobilenet0.25_Final.pth``
(see :mod:`deepguard.models.retinaface.net`), so the priors are that repository's ``cfg_mnet``
(sizes 10/20, 32/64, 128/256 at strides 8/16/32), not Pytorch_Retinaface's 16/32, 64/128,
256/512. Inference follows both repositories' ``detect.py``: the image is used at its own
size, in BGR order minus the per-channel mean (104, 117, 123), with no scaling.

Thresholds: ``detect.py`` keeps boxes above ``--confidence_threshold 0.02`` for the WIDER FACE
evaluation, runs NMS at ``--nms_threshold 0.4`` and draws only faces scoring at least
``--vis_thres 0.6``. A product reports visible faces, so ``score_threshold`` is the 0.6
visualisation threshold (greedy NMS makes "NMS at 0.02, then keep ≥ 0.6" and "keep > 0.6,
then NMS" give the same faces).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepguard.models.base import DensePrediction, FaceDetector, read_state_dict, rgb_to_bgr
from deepguard.models.retinaface.net import RetinaFace
from deepguard.models.retinaface.priors import PriorCache, PriorConfig

WEIGHTS_FILE = "retinaface_mobilenet0.25.pth"

#: ``cfg_mnet`` in Face-Detector-1MB-with-landmark ``data/config.py`` (see the module docstring)
PRIORS = PriorConfig(min_sizes=((10, 20), (32, 64), (128, 256)), steps=(8, 16, 32))

#: per-channel mean of the training images, in BGR order
BGR_MEAN = (104.0, 117.0, 123.0)


def bgr_minus_mean(x: Tensor, mean: Tensor) -> Tensor:
    """N×3×H×W RGB 0..255 → BGR minus the per-channel mean, as the biubug6 nets expect."""
    return rgb_to_bgr(x) - mean.to(x.dtype)


class RetinaFaceDetector(FaceDetector):
    """RetinaFace-MobileNet-0.25 at the input's own resolution. A subclass with another body
    sets ``build_net``, ``prior_config`` and its hooked stages."""

    name = "retinaface"
    feature_modules = {
        "body.stage1": "net.body.stage1",
        "body.stage2": "net.body.stage2",
        "body.stage3": "net.body.stage3",
    }
    score_threshold = 0.6
    nms_iou = 0.4
    max_detections = 750
    prior_config: PriorConfig = PRIORS

    @staticmethod
    def build_net() -> RetinaFace:
        return RetinaFace()

    def __init__(self) -> None:
        super().__init__()
        self.net = self.build_net()
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.priors = PriorCache(self.prior_config)

    def dense(self, x: Tensor) -> DensePrediction:
        height, width = x.shape[-2:]
        loc, logits, _ = self.net(bgr_minus_mean(x, self.mean))
        face_logits = logits[..., 1] - logits[..., 0]  # softmax(...)[1] == sigmoid(this)
        scores = face_logits.sigmoid()
        return DensePrediction(
            scores=scores, boxes=self.priors.decode(loc, height, width), logits=face_logits
        )

    def features(self, x: Tensor) -> dict[str, Tensor]:
        levels = self.net.body(bgr_minus_mean(x, self.mean))
        return dict(zip(self.feature_modules, levels, strict=True))


def load(weights: Mapping[str, Path] | None, **options: Any) -> FaceDetector:
    """Build the detector; ``weights`` maps ``retinaface_mobilenet0.25.pth`` to a local path."""
    if options:
        raise TypeError(f"retinaface takes no options, got {sorted(options)}")
    detector = RetinaFaceDetector()
    if weights is not None:
        detector.net.load_state_dict(read_state_dict(weights[WEIGHTS_FILE]), strict=True)
    return detector.eval().requires_grad_(False)
