"""RetinaFace-ResNet-50 as a :class:`~deepguard.models.base.FaceDetector`.

As facexlib runs it (``facexlib/detection/retinaface.py``, which GFPGAN, CodeFormer and PuLID
call): the picture at its own size (``use_origin_size``), BGR minus the per-channel mean
(104, 117, 123), priors of ``cfg_re50`` (16/32, 64/128, 256/512 pixels at strides 8, 16, 32),
SSD decoding with variances 0.1 and 0.2, a face score of softmax(logits)[1], NMS at 0.4 and
facexlib's default confidence of 0.8.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from deepguard.models.base import read_state_dict
from deepguard.models.retinaface.predictor import RetinaFaceDetector
from deepguard.models.retinaface.priors import PriorConfig
from deepguard.models.retinaface_r50.net import retinaface_r50

WEIGHTS_FILE = "detection_Resnet50_Final.pth"
PRIORS = PriorConfig(min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32))


class RetinaFaceR50Detector(RetinaFaceDetector):
    """RetinaFace-ResNet-50 at the input's own resolution, facexlib's defaults."""

    name = "retinaface_r50"
    feature_modules = {
        "body.layer2": "net.body.layer2",
        "body.layer3": "net.body.layer3",
        "body.layer4": "net.body.layer4",
    }
    score_threshold = 0.8
    prior_config = PRIORS
    build_net = staticmethod(retinaface_r50)


def load(weights: Mapping[str, Path] | None) -> RetinaFaceR50Detector:
    """The detector; ``weights`` maps ``detection_Resnet50_Final.pth`` to a local path (none:
    random initialisation, for tests and timings)."""
    detector = RetinaFaceR50Detector()
    if weights is not None:
        detector.net.load_state_dict(read_state_dict(weights[WEIGHTS_FILE]), strict=True)
    return detector.eval().requires_grad_(False)
