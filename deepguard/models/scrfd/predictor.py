"""SCRFD graphs as a :class:`FaceDetector`: SCRFD-500M (insightface's buffalo_s/buffalo_sc
detector), SCRFD-10G (buffalo_l's ``det_10g.onnx``, what roop, Deep-Live-Cam, LivePortrait and
SimSwap run) and FaceFusion's ``retinaface_10g.onnx`` (an SCRFD-10G re-export fed BGR).

Decoding follows insightface's ``model_zoo/scrfd.py``: the net takes RGB normalised as
``(x − 127.5) / 128``; insightface letterboxes the image into a black canvas at top-left,
here the input is padded bottom/right with pixel value 0 to a multiple of 32 before
normalising, which keeps boxes in input pixels. Per stride s, every cell (row r, column c)
has two anchors centred at ``(c·s, r·s)``; a face's probability is the sigmoid of its score
head, and its box is the centre minus/plus the predicted distances times s
(``distance2bbox``). Defaults: score threshold 0.5, NMS IoU 0.4.

Licence: InsightFace's pretrained models are for non-commercial research only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.base import DensePrediction, FaceDetector, LogitMap, cell_grid, rgb_to_bgr
from deepguard.models.onnx import graph_file
from deepguard.models.scrfd.net import ANCHORS_PER_CELL, STRIDES, SCRFDHeads, SCRFDNet

WEIGHT_FILE = "det_500m.onnx"
DIVISOR = 32
INPUT_MEAN = 127.5
INPUT_STD = 128.0


class SCRFDDetector(FaceDetector):
    """An SCRFD graph with insightface's defaults (score 0.5, NMS IoU 0.4). ``bgr``: the graph
    is fed the picture in BGR order (FaceFusion's re-exports), not RGB (insightface's)."""

    name = "scrfd_500m"
    score_threshold = 0.5
    nms_iou = 0.4
    #: fp16 agreement with fp32 not measured on a GPU yet (bench/gpu.py): fp32 until it is
    autocast_safe = False
    #: bench/passes.py, 2-core CPU, 2026-12-07: 0.60x and 0.77x the NCHW pass
    channels_last_on_cpu = True

    def __init__(self, net: SCRFDNet, name: str = "scrfd_500m", bgr: bool = False) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.bgr = bgr
        self._centres: dict[tuple[int, int, torch.device], list[Tensor]] = {}

    def preprocess(self, x: Tensor) -> Tensor:
        """RGB 0..255 → padded bottom/right with black to a multiple of 32, then normalised."""
        pad_h = (-x.shape[-2]) % DIVISOR
        pad_w = (-x.shape[-1]) % DIVISOR
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        if self.bgr:
            x = rgb_to_bgr(x)
        return (x - INPUT_MEAN) / INPUT_STD

    def _run(self, x: Tensor) -> tuple[Tensor, SCRFDHeads]:
        inputs = self.preprocess(x)
        return inputs, self.net(inputs)

    def _decode(self, inputs: Tensor, heads: SCRFDHeads) -> DensePrediction:
        centres = self._anchor_centres(*inputs.shape[-2:], inputs.device)
        boxes = [
            distance_to_box(centre.to(distances.dtype), distances * stride)
            for centre, distances, stride in zip(centres, heads.distances, STRIDES, strict=True)
        ]
        logits = torch.cat(heads.logits, dim=1)
        return DensePrediction(logits.sigmoid(), torch.cat(boxes, dim=1), logits)

    def dense(self, x: Tensor) -> DensePrediction:
        return self._decode(*self._run(x))

    def face_maps_and_features(self, x: Tensor) -> tuple[list[LogitMap], dict[str, Tensor]]:
        """One pass through the graph for both (its nodes are not named modules to hook)."""
        inputs, heads = self._run(x)
        prediction = self._decode(inputs, heads)
        return [LogitMap(prediction.logits, prediction.boxes.detach())], heads.features

    def dropout_points(self) -> list[nn.Module]:
        """The graph's modules that compute the backbone outputs (no submodule is named for
        them, so the converted nodes are)."""
        modules = [self.net.graph.module_computing(t) for t in self.net.feature_tensors.values()]
        return [module for module in modules if module is not None]

    def _anchor_centres(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        """Per stride, the (x, y) pixel centre of every anchor, ordered row, column, anchor."""
        key = (height, width, device)
        if key not in self._centres:
            centres = []
            for stride in STRIDES:
                cells = cell_grid(height, width, stride, device) * stride
                centres.append(cells.repeat_interleave(ANCHORS_PER_CELL, dim=0))
            self._centres[key] = centres
        return self._centres[key]


def distance_to_box(centres: Tensor, distances: Tensor) -> Tensor:
    """A×2 centres and N×A×4 (left, top, right, bottom) pixel distances → N×A×4 xyxy."""
    return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)


def load(
    weights: Mapping[str, Path] | None,
    file: str = WEIGHT_FILE,
    name: str = "scrfd_500m",
    channels: str = "rgb",
) -> SCRFDDetector:
    """An SCRFD detector from its ONNX graph ``file``, registered as ``name``, fed ``channels``
    ("rgb" as insightface does, "bgr" as FaceFusion does)."""
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"{name}: channels must be 'rgb' or 'bgr', got {channels!r}")
    path = graph_file(name, weights, file, {})
    detector = SCRFDDetector(SCRFDNet.from_file(path), name, channels == "bgr")
    detector.eval()
    detector.requires_grad_(False)
    return detector
