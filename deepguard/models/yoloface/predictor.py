"""YOLOv8n-face as FaceFusion runs it (``facefusion/face_detector.py``, ``detect_with_yolo_face``).

FaceFusion shrinks a frame to fit its 640×640 detector size (never enlarging it), pastes it
at the top left of a black 640×640 canvas, feeds it BGR divided by 255, keeps detections
scoring above 0.5 and turns each (centre, size) into a box; NMS follows at 0.4. Here a
picture larger than the graph's input is shrunk the same way (bilinear, differentiable) and
the boxes are scaled back to the picture's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.models.base import DensePrediction, FaceDetector, rgb_to_bgr
from deepguard.models.onnx import graph_file
from deepguard.models.yoloface.net import YoloFaceNet

WEIGHT_FILE = "yoloface_8n.onnx"


class YoloFaceDetector(FaceDetector):
    """YOLOv8n-face at FaceFusion's defaults (score 0.5, NMS 0.4); fp32 until measured."""

    name = "yoloface_8n"
    score_threshold = 0.5
    nms_iou = 0.4
    autocast_safe = False

    def __init__(self, net: YoloFaceNet) -> None:
        super().__init__()
        self.net = net

    def dense(self, x: Tensor) -> DensePrediction:
        height, width = self.net.input_size or (x.shape[-2], x.shape[-1])
        scale = min(1.0, height / x.shape[-2], width / x.shape[-1])
        if scale < 1.0:
            size = (max(1, int(x.shape[-2] * scale)), max(1, int(x.shape[-1] * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        canvas = F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=0.0)
        heads = self.net(rgb_to_bgr(canvas) / 255.0)
        centre, size = heads.boxes[..., :2], heads.boxes[..., 2:]
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        return DensePrediction(heads.logits.sigmoid(), boxes / scale, heads.logits)


def load(weights: Mapping[str, Path] | None, file: str = WEIGHT_FILE) -> YoloFaceDetector:
    """YOLOv8n-face from its ONNX graph."""
    path = graph_file("yoloface_8n", weights, file, {})
    return YoloFaceDetector(YoloFaceNet.from_file(path)).eval().requires_grad_(False)
