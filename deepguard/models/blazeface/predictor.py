"""MediaPipe BlazeFace as a :class:`FaceDetector`, for inputs of any size.

The network only sees a fixed square (128×128 front / 256×256 back), so an image is resized
with its aspect kept (differentiably, antialiased when shrinking), letterboxed to the square
and scaled to [-1, 1]; boxes come back in input pixels. Decoding and defaults follow
hollance/BlazeFace-PyTorch (itself a port of MediaPipe's face_detection_*_mobile_gpu
graphs): regressions are divided by the input size and added to unit-size anchors, scores
are ``sigmoid(clip(logit, ±100))``, the score threshold is 0.75 (front) / 0.65 (back), and
overlapping boxes are merged by *weighted* non-maximum suppression at IoU 0.3.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from deepguard.models.base import (
    DensePrediction,
    Detections,
    FaceDetector,
    LogitMap,
    read_state_dict,
)
from deepguard.models.blazeface.net import BlazeFaceNet

NUM_ANCHORS = 896
SCORE_CLIP = 100.0
#: (grid size, anchors per cell) of the two heads, in output order
ANCHOR_GRIDS = ((16, 2), (8, 6))


def make_anchors() -> Tensor:
    """MediaPipe's SSD anchors for BlazeFace: 896×4 (x, y, w, h), normalised, w = h = 1.

    Both variants use the same two grids (16×16 with 2 anchors per cell, 8×8 with 6), and
    ``fixed_anchor_size`` makes every anchor 1×1, so the regression alone sets the size.
    """
    rows = []
    for grid, per_cell in ANCHOR_GRIDS:
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], dim=1).repeat_interleave(per_cell, dim=0)
        rows.append(torch.cat([xy, torch.ones_like(xy)], dim=1))
    return torch.cat(rows)


def read_anchors(path: Path) -> Tensor:
    anchors = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if anchors.shape != (NUM_ANCHORS, 4):
        raise ValueError(f"{path}: expected {NUM_ANCHORS}×4 anchors, got {tuple(anchors.shape)}")
    return anchors


def weighted_nms(boxes: Tensor, scores: Tensor, iou: float) -> tuple[Tensor, Tensor]:
    """BlazeFace's blending suppression: each cluster becomes its score-weighted mean box.

    A cluster is the best remaining box plus every remaining box overlapping it by more
    than ``iou``. The merged box keeps the cluster's top score (MediaPipe's choice;
    hollance's port averages the scores instead).
    """
    order = scores.argsort(descending=True)
    boxes, scores = boxes[order], scores[order]
    kept_boxes, kept_scores = [], []
    remaining = torch.arange(len(scores), device=scores.device)
    while len(remaining) > 0:
        overlap = box_iou(boxes[remaining[:1]], boxes[remaining])[0] > iou
        overlap[0] = True
        cluster = remaining[overlap]
        weights = scores[cluster, None]
        kept_boxes.append((boxes[cluster] * weights).sum(0) / weights.sum())
        kept_scores.append(scores[cluster[0]])
        remaining = remaining[~overlap]
    if not kept_scores:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,))
    return torch.stack(kept_boxes), torch.stack(kept_scores)


class BlazeFace(FaceDetector):
    """BlazeFace on a letterboxed ``input_size`` square; subclasses pick the variant."""

    input_size: int = 128
    back_model: bool = False
    nms_iou = 0.3  # MediaPipe's min_suppression_threshold

    def __init__(self, anchors: Tensor | None = None) -> None:
        super().__init__()
        self.net = BlazeFaceNet(back_model=self.back_model)
        anchors = make_anchors() if anchors is None else anchors
        self.register_buffer("anchors", anchors, persistent=False)

    def letterbox(self, x: Tensor) -> tuple[Tensor, tuple[float, float, float, float]]:
        """Resize (aspect kept) and centre-pad to the network square, scaled to [-1, 1].

        Returns the network input and (scale_x, scale_y, pad_x, pad_y) that map a network
        pixel back to the input: ``x_in = (x_net - pad_x) / scale_x``.
        """
        height, width = x.shape[-2:]
        size = self.input_size
        ratio = size / max(height, width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        if (new_h, new_w) != (height, width):
            x = F.interpolate(
                x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=ratio < 1
            )
        pad_y, pad_x = (size - new_h) // 2, (size - new_w) // 2
        x = F.pad(x, (pad_x, size - new_w - pad_x, pad_y, size - new_h - pad_y))  # black border
        return x / 127.5 - 1.0, (new_w / width, new_h / height, float(pad_x), float(pad_y))

    def dense(self, x: Tensor) -> DensePrediction:
        net_input, geometry = self.letterbox(x)
        return self._decode(*self.net(net_input), geometry)

    def face_maps_and_features(self, x: Tensor) -> tuple[list[LogitMap], dict[str, Tensor]]:
        """One pass: the backbone maps feed both the heads and the feature loss."""
        net_input, geometry = self.letterbox(x)
        stages = self.net.stages(net_input)
        _, grid16, grid8 = stages.values()
        prediction = self._decode(*self.net.heads(grid16, grid8), geometry)
        return [LogitMap(prediction.logits, prediction.boxes.detach())], stages

    def _decode(
        self, raw: Tensor, logits: Tensor, geometry: tuple[float, float, float, float]
    ) -> DensePrediction:
        scale_x, scale_y, pad_x, pad_y = geometry
        logits = logits.clamp(-SCORE_CLIP, SCORE_CLIP)
        scores = logits.sigmoid()
        anchors = self.anchors.to(raw.dtype)
        size = self.input_size
        # normalised centre/size in the square (anchors are 1×1, so w/h scale by 1)
        centres = raw[..., :2] / size * anchors[:, 2:] + anchors[:, :2]
        wh = raw[..., 2:4] / size * anchors[:, 2:]
        corners = torch.cat([centres - wh / 2, centres + wh / 2], dim=-1) * size
        offset = corners.new_tensor([pad_x, pad_y, pad_x, pad_y])
        scale = corners.new_tensor([scale_x, scale_y, scale_x, scale_y])
        return DensePrediction(scores=scores, boxes=(corners - offset) / scale, logits=logits)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Stride-4 backbone map, then the 16×16 and 8×8 maps the heads read."""
        return self.net.stages(self.letterbox(x)[0])

    def postprocess(
        self, pred: DensePrediction, threshold: float | None = None
    ) -> list[Detections]:
        """Threshold, then weighted NMS (BlazeFace's published suppression)."""
        threshold = self.score_threshold if threshold is None else threshold
        results = []
        for scores, boxes in zip(
            pred.scores.detach().float(), pred.boxes.detach().float(), strict=True
        ):
            keep = scores >= threshold
            boxes, scores = weighted_nms(boxes[keep], scores[keep], self.nms_iou)
            boxes, scores = boxes[: self.max_detections], scores[: self.max_detections]
            results.append(Detections(boxes.cpu().numpy(), scores.cpu().numpy()))
        return results


class BlazeFaceFront(BlazeFace):
    """Front-camera (selfie) model: 128×128, made for one or two large, close faces."""

    name = "blazeface_front"
    input_size = 128
    back_model = False
    score_threshold = 0.75


class BlazeFaceBack(BlazeFace):
    """Back-camera model: 256×256, finds smaller faces farther away."""

    name = "blazeface_back"
    input_size = 256
    back_model = True
    score_threshold = 0.65


VARIANTS: dict[str, tuple[type[BlazeFace], str, str]] = {
    "front": (BlazeFaceFront, "blazeface_front128.pth", "blazeface_front128_anchors.npy"),
    "back": (BlazeFaceBack, "blazeface_back256.pth", "blazeface_back256_anchors.npy"),
}


def load(
    weights: Mapping[str, Path] | None, variant: str = "front", **options: object
) -> FaceDetector:
    """Build BlazeFace ``variant`` ("front" or "back"); ``weights=None`` gives random init.

    ``weights`` maps the variant's ``.pth`` and ``_anchors.npy`` file names to paths.
    """
    if options:
        raise TypeError(f"blazeface takes only `variant`, got {sorted(options)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown blazeface variant {variant!r}; use one of {sorted(VARIANTS)}")
    cls, weight_file, anchor_file = VARIANTS[variant]
    if weights is None:
        model = cls()
    else:
        model = cls(read_anchors(weights[anchor_file]))
        model.net.load_state_dict(read_state_dict(weights[weight_file]), strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
