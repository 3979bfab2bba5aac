"""PyramidBox as a :class:`~deepguard.models.base.FaceDetector`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from deepguard.models.base import FaceDetector
from deepguard.models.pyramidbox.net import PyramidBox
from deepguard.models.s3fd.ssd import SSDFaceDetector, load_checkpoint

WEIGHT_FILE = "pyramidbox.pth"


class PyramidBoxDetector(SSDFaceDetector):
    """PyramidBox (face branch) at the input resolution.

    Thresholds are yxlijun/Pyramidbox.pytorch's: ``demo.py --thresh 0.4`` on top of ``Detect``
    (NMS IoU 0.3, ``TOP_K`` 5000 kept).
    """

    name = "pyramidbox"
    score_threshold = 0.4
    nms_iou = 0.3
    max_detections = 5000
    #: the layers FacePoison attacks for PyramidBox (``vgg[15], vgg[22], vgg[28]``), after ReLU
    feature_taps: ClassVar[dict[str, int]] = {"conv3_3": 15, "conv4_3": 22, "conv5_3": 29}


def build_pyramidbox(weights: Mapping[str, Path] | None) -> PyramidBox:
    net = PyramidBox()
    if weights is not None:
        load_checkpoint(net, weights[WEIGHT_FILE])
    return net


def load(weights: Mapping[str, Path] | None, **options: Any) -> FaceDetector:
    """PyramidBox in eval mode with frozen parameters; ``weights=None`` gives random weights."""
    if options:
        raise TypeError(f"pyramidbox takes no options, got {sorted(options)}")
    return PyramidBoxDetector(build_pyramidbox(weights)).eval().requires_grad_(False)
