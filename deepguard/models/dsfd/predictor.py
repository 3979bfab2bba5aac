"""DSFD as a :class:`~deepguard.models.base.FaceDetector`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from deepguard.models.base import FaceDetector
from deepguard.models.dsfd.net import DSFD
from deepguard.models.s3fd.ssd import MIN_SIZES, SSDFaceDetector, load_checkpoint

WEIGHT_FILE = "dsfd.pth"


class DSFDDetector(SSDFaceDetector):
    """DSFD (VGG-16) at the input resolution; detections come from the second shot.

    Thresholds are yxlijun/DSFD.pytorch's: ``demo.py --thresh 0.4`` on top of ``Detect``
    (NMS IoU 0.3, keep top 750). ``score_maps`` returns both shots' face scores, first shot
    first, so an attack cannot leave the first shot intact.
    """

    name = "dsfd"
    score_threshold = 0.4
    nms_iou = 0.3
    max_detections = 750
    #: second-shot priors (16..512); the first shot's are half as large (8..256) and only its
    #: scores are used
    final_min_sizes = MIN_SIZES
    #: the layers FacePoison attacks for DSFD (``vgg[7], vgg[16], vgg[31]``), after their ReLU
    feature_taps: ClassVar[dict[str, int]] = {"conv2_2": 8, "pool3": 16, "fc6": 32}


def build_dsfd(weights: Mapping[str, Path] | None) -> DSFD:
    net = DSFD()
    if weights is not None:
        load_checkpoint(net, weights[WEIGHT_FILE])
    return net


def load(weights: Mapping[str, Path] | None, **options: Any) -> FaceDetector:
    """DSFD in eval mode with frozen parameters; ``weights=None`` gives random weights."""
    if options:
        raise TypeError(f"dsfd takes no options, got {sorted(options)}")
    return DSFDDetector(build_dsfd(weights)).eval().requires_grad_(False)
