"""YOLO5Face as a :class:`FaceDetector`: preprocessing, anchor grids and box decoding.

Reference: deepcam-cn/yolov5-face (``detect_face.py``, ``models/yolo.py``). The nets take RGB
in 0..1 at any size that is a multiple of 32; upstream letterboxes with grey 114, we pad
bottom/right with the same grey so boxes stay in input pixels. Each of the 3 anchors per cell
predicts (x, y, w, h, obj, 10 landmark coords, face class); a face's score is
``sigmoid(obj) * sigmoid(cls)`` as in upstream's ``non_max_suppression_face``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.models.base import (
    DensePrediction,
    FaceDetector,
    log_odds_of_product,
    read_state_dict,
)
from deepguard.models.yolo5face.net import (
    STRIDES,
    YOLO5Face,
    yolo5face_csp,
    yolo5face_shufflenet,
)

#: Upstream letterbox fill value (``letterbox(color=(114, 114, 114))``).
PAD_VALUE = 114.0
MAX_STRIDE = max(STRIDES)


def make_grid(height: int, width: int, device: torch.device) -> Tensor:
    """Cell offsets (x, y) shaped 1×1×H×W×2, broadcastable over N×anchors×H×W×2."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1).view(1, 1, height, width, 2)


def decode(raw: list[Tensor], anchor_grid: Tensor, grids: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Raw head outputs (per level N×3×H×W×16) to face log-odds N×A and xyxy boxes N×A×4.

    ``anchor_grid`` holds anchor sizes in pixels (levels×1×3×1×1×2, the checkpoint buffer);
    anchors are ordered level, anchor, row, column as upstream concatenates them.
    """
    logits, boxes = [], []
    for level, (y, grid, stride) in enumerate(zip(raw, grids, STRIDES, strict=True)):
        n = y.shape[0]
        centre = (y[..., 0:2].sigmoid() * 2 - 0.5 + grid) * stride
        size = (y[..., 2:4].sigmoid() * 2) ** 2 * anchor_grid[level]
        box = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
        logits.append(
            log_odds_of_product(F.logsigmoid(y[..., 4]), F.logsigmoid(y[..., 15])).reshape(n, -1)
        )
        boxes.append(box.reshape(n, -1, 4))
    return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class YOLO5FaceDetector(FaceDetector):
    """YOLO5Face at its demo defaults (``detect_face.py``: conf_thres 0.6, iou_thres 0.5).

    ``max_size`` optionally resizes the input so its longer side has that many pixels, as
    ``detect_face.py`` does with 640; by default the net sees the input at native size.
    """

    name = "yolo5face"
    score_threshold = 0.6
    nms_iou = 0.5
    variant = ""
    weight_file = ""

    def __init__(self, net: YOLO5Face, max_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.feature_modules = {f"model.{i}": f"net.model.{i}" for i in net.taps}
        self.max_size = max_size
        self._grids: dict[tuple[int, int, torch.device], list[Tensor]] = {}

    @staticmethod
    def build_net() -> YOLO5Face:
        raise NotImplementedError

    def _grids_for(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        key = (height, width, device)
        if key not in self._grids:
            self._grids[key] = [make_grid(-(-height // s), -(-width // s), device) for s in STRIDES]
        return self._grids[key]

    def net_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the image is resized to before padding (itself unless ``max_size`` is set)."""
        if self.max_size is None:
            return height, width
        gain = self.max_size / max(height, width)
        return round(height * gain), round(width * gain)

    def preprocess(self, x: Tensor) -> Tensor:
        """RGB 0..255 → net input: RGB 0..1, resized if ``max_size`` is set, then padded
        bottom/right with upstream's letterbox grey to a multiple of 32."""
        size = self.net_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            shrink = size[0] < x.shape[-2]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        pad_h = (-x.shape[-2]) % MAX_STRIDE
        pad_w = (-x.shape[-1]) % MAX_STRIDE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=PAD_VALUE)
        return x / 255.0

    def dense(self, x: Tensor) -> DensePrediction:
        height, width = x.shape[-2:]
        inputs = self.preprocess(x)
        raw = self.net(inputs)
        grids = self._grids_for(*inputs.shape[-2:], inputs.device)
        logits, boxes = decode(raw, self.net.detect.anchor_grid, grids)
        net_h, net_w = self.net_size(height, width)
        if (net_h, net_w) != (height, width):  # back from the resized frame to the input's
            sx, sy = width / net_w, height / net_h
            boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
        # upstream clips boxes to the image (scale_coords → clip_coords)
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        return DensePrediction(scores=logits.sigmoid(), boxes=boxes, logits=logits)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone outputs at strides 8, 16 and 32, named by their checkpoint prefix."""
        inputs = self.preprocess(x)
        maps = self.net.backbone(inputs)
        return {f"model.{index}": fmap for index, fmap in zip(self.net.taps, maps, strict=True)}


class YOLO5FaceN05(YOLO5FaceDetector):
    """YOLOv5n-0.5-face: ShuffleNetV2 backbone at half width (~0.45 M parameters)."""

    name = "yolo5face_n05"
    variant = "n-0.5"
    weight_file = "yolov5face_n05.pth"

    @staticmethod
    def build_net() -> YOLO5Face:
        return yolo5face_shufflenet(64)


class YOLO5FaceN(YOLO5FaceDetector):
    """YOLOv5n-face: ShuffleNetV2 backbone (~1.7 M parameters)."""

    name = "yolo5face_n"
    variant = "n"
    weight_file = "yolov5face_n.pth"

    @staticmethod
    def build_net() -> YOLO5Face:
        return yolo5face_shufflenet(128)


class YOLO5FaceS(YOLO5FaceDetector):
    """YOLOv5s-face: CSP backbone with StemBlock and SPP(3, 5, 7) (~7.1 M parameters)."""

    name = "yolo5face_s"
    variant = "s"
    weight_file = "yolov5face_s.pth"

    @staticmethod
    def build_net() -> YOLO5Face:
        return yolo5face_csp(32, 1)


VARIANTS: dict[str, type[YOLO5FaceDetector]] = {
    cls.variant: cls for cls in (YOLO5FaceN05, YOLO5FaceN, YOLO5FaceS)
}


def load(
    weights: Mapping[str, Path] | None, variant: str = "s", max_size: int | None = None
) -> FaceDetector:
    """Build a YOLO5Face variant ("n-0.5", "n" or "s"), loading converted state dicts.

    ``weights`` maps the file name (``yolov5face_n05.pth``, ``yolov5face_n.pth``,
    ``yolov5face_s.pth``) to a path; ``None`` keeps the random initialisation.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown YOLO5Face variant {variant!r}; choose from {list(VARIANTS)}")
    cls = VARIANTS[variant]
    net = cls.build_net()
    if weights is not None:
        net.load_state_dict(read_state_dict(weights[cls.weight_file]), strict=True)
    detector = cls(net, max_size=max_size)
    detector.eval()
    detector.requires_grad_(False)
    return detector
