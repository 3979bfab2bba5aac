"""S3FD as a :class:`~deepguard.models.base.FaceDetector`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from deepguard.models.base import FaceDetector
from deepguard.models.s3fd.net import S3FD
from deepguard.models.s3fd.ssd import SSDFaceDetector, load_checkpoint

WEIGHT_FILE = "s3fd.pth"


class S3FDDetector(SSDFaceDetector):
    """S3FD at the input resolution.

    Thresholds are yxlijun/S3FD.pytorch's: ``demo.py --thresh 0.6`` on top of ``Detect``
    (NMS IoU 0.3, keep top 750).
    """

    name = "s3fd"
    score_threshold = 0.6
    nms_iou = 0.3
    max_detections = 750
    #: the layers FacePoison attacks for S3FD (``vgg[7], vgg[16], vgg[31]``), taken after their
    #: ReLU, which is what FacePoison's hooks see once the in-place ReLUs have run
    feature_taps: ClassVar[dict[str, int]] = {"conv2_2": 8, "pool3": 16, "fc6": 32}


def build_s3fd(weights: Mapping[str, Path] | None) -> S3FD:
    net = S3FD()
    if weights is not None:
        load_checkpoint(net, weights[WEIGHT_FILE])
    return net


def load(weights: Mapping[str, Path] | None, **options: Any) -> FaceDetector:
    """S3FD in eval mode with frozen parameters; ``weights=None`` gives random weights."""
    if options:
        raise TypeError(f"s3fd takes no options, got {sorted(options)}")
    return S3FDDetector(build_s3fd(weights)).eval().requires_grad_(False)
