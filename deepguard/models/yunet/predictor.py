"""YuNet (OpenCV zoo) face detector: preprocessing and decoding as in ``cv::FaceDetectorYN``.

OpenCV feeds the network a BGR image in 0..255 (``blobFromImage`` with no scaling or mean),
zero-padded at the bottom/right to a multiple of 32. The heads give, per stride 8/16/32 and
grid cell (row r, column c), sigmoid ``cls`` and ``obj`` scores and a box
``(dx, dy, log w, log h)`` in stride units; OpenCV scores a cell ``sqrt(cls * obj)`` and
decodes the centre ``((c + dx) * s, (r + dy) * s)`` and size ``(exp(log w) * s, ...)``
(``postProcess`` in opencv/modules/objdetect/src/face_detect.cpp).

The network itself is OpenCV zoo's ONNX graph, converted by :mod:`deepguard.models.onnx`
into one module that returns the box heads, the log-odds before the cls/obj Sigmoids and
three backbone features in a single pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.base import (
    DensePrediction,
    FaceDetector,
    LogitMap,
    cell_grid,
    log_odds_of_product,
    pad_to_multiple,
    rgb_to_bgr,
)
from deepguard.models.onnx import OnnxModule, graph_file, sigmoid_inputs

WEIGHT_FILE = "yunet_2026may.onnx"
STRIDES = (8, 16, 32)
DIVISOR = 32

#: Backbone outputs at strides 8, 16 and 32 (ONNX tensor names → readable module names).
FEATURE_TENSORS = {
    "backbone.model3": "214",
    "backbone.model4": "223",
    "backbone.model5": "232",
}


class YuNet(FaceDetector):
    """YuNet with FaceDetectorYN's defaults (score 0.9, NMS IoU 0.3, top-k 5000)."""

    name = "yunet"
    score_threshold = 0.9
    nms_iou = 0.3
    max_detections = 5000
    #: bench/passes.py, 2-core CPU, 2026-12-07: 0.51x the NCHW pass in both runs
    channels_last_on_cpu = True

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        # cls/obj heads end in Sigmoid; the attack needs the log-odds just before it
        before_sigmoid = sigmoid_inputs(model)
        self._before_sigmoid = {
            head: before_sigmoid.get(head)
            for head in (f"{kind}_{s}" for kind in ("cls", "obj") for s in STRIDES)
        }
        if None in self._before_sigmoid.values():
            raise ValueError("not a YuNet graph: its cls/obj heads do not end in Sigmoid")
        heads = [f"bbox_{s}" for s in STRIDES] + list(self._before_sigmoid.values())
        self.graph = OnnxModule(model, [*heads, *FEATURE_TENSORS.values()])
        self._grids: dict[tuple[int, int, torch.device], list[Tensor]] = {}

    def dropout_points(self) -> list[nn.Module]:
        """The graph's modules that compute the backbone outputs."""
        modules = [self.graph.module_computing(tensor) for tensor in FEATURE_TENSORS.values()]
        return [module for module in modules if module is not None]

    @staticmethod
    def preprocess(x: Tensor) -> Tensor:
        """RGB 0..255 → BGR 0..255, zero-padded bottom/right to a multiple of 32."""
        return pad_to_multiple(rgb_to_bgr(x), DIVISOR)

    def _run(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One pass through the graph: head tensors and backbone features."""
        padded = self.preprocess(x)
        return padded, self.graph(padded)

    def _decode(self, padded: Tensor, out: dict[str, Tensor]) -> DensePrediction:
        """score = sqrt(sigmoid(cls) · sigmoid(obj)), kept as log-odds for the attack."""
        height, width = padded.shape[-2:]
        grids = self._grid(height, width, padded.device)
        logits, boxes = [], []
        for stride, grid in zip(STRIDES, grids, strict=True):
            cls = out[self._before_sigmoid[f"cls_{stride}"]][..., 0]
            obj = out[self._before_sigmoid[f"obj_{stride}"]][..., 0]
            log_score = 0.5 * (F.logsigmoid(cls) + F.logsigmoid(obj))
            logits.append(log_odds_of_product(log_score))
            boxes.append(decode_boxes(out[f"bbox_{stride}"], grid.to(padded.dtype), stride))
        face_logits = torch.cat(logits, dim=1)
        return DensePrediction(face_logits.sigmoid(), torch.cat(boxes, dim=1), face_logits)

    def dense(self, x: Tensor) -> DensePrediction:
        return self._decode(*self._run(x))

    def face_maps_and_features(self, x: Tensor) -> tuple[list[LogitMap], dict[str, Tensor]]:
        """One pass through the graph for both (its nodes are not named modules to hook)."""
        padded, out = self._run(x)
        features = {name: out[tensor] for name, tensor in FEATURE_TENSORS.items()}
        prediction = self._decode(padded, out)
        return [LogitMap(prediction.logits, prediction.boxes.detach())], features

    def _grid(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        """Per stride, the (column, row) of every cell in row-major order, as (H·W)×2."""
        key = (height, width, device)
        if key not in self._grids:
            self._grids[key] = [cell_grid(height, width, s, device) for s in STRIDES]
        return self._grids[key]


def decode_boxes(bbox: Tensor, grid: Tensor, stride: int) -> Tensor:
    """N×A×4 ``(dx, dy, log w, log h)`` at one stride → N×A×4 xyxy pixels."""
    centre = (grid + bbox[..., :2]) * stride
    half = bbox[..., 2:].exp() * (stride / 2)
    return torch.cat([centre - half, centre + half], dim=-1)


def load(weights: Mapping[str, Path] | None, **options: object) -> YuNet:
    """YuNet from its ONNX graph."""
    path = graph_file("yunet", weights, WEIGHT_FILE, options)
    model = YuNet(onnx.load(path))
    model.eval()
    model.requires_grad_(False)
    return model
