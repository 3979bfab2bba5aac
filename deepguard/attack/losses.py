"""The two FacePoison objectives: score suppression and importance-weighted features."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from deepguard.models.base import FaceDetector, LogitMap

_EPS = 1e-6
#: FacePoison weights its three hooked layers, shallow to deep
FEATURE_LAYER_WEIGHTS = (0.2, 0.3, 0.5)


def score_suppression_loss(logit_maps: list[Tensor], floors: list[float]) -> Tensor:
    """Sum over every anchor of how far its face log-odds sit above its floor.

    Working in log-odds keeps the gradient alive for confident anchors (a probability of
    0.99999 barely moves under a small step); anchors already below the floor contribute
    nothing, so the attack spends its budget where faces are still visible. One floor
    (a probability) applies to every map.
    """
    if len(floors) == 1:
        floors = floors * len(logit_maps)
    total = logit_maps[0].new_zeros((), dtype=torch.float32)
    for logits, floor in zip(logit_maps, floors, strict=True):
        if logits.numel():
            margin = math.log(floor) - math.log1p(-floor)
            total = total + (logits.float() - margin).clamp(min=0).sum()
    return total


def face_mask(boxes: Tensor, faces: list[Tensor], iou: float) -> Tensor:
    """N×A: which entries' boxes (N×A×4) overlap one of their image's faces (K×4 each, in
    the same pixels) by at least ``iou``."""
    mask = boxes.new_zeros(boxes.shape[:2])
    for index, face_boxes in enumerate(faces):
        if len(face_boxes) and boxes.shape[1]:
            overlap = box_iou(boxes[index].float(), face_boxes.to(boxes.device).float())
            mask[index] = (overlap.max(dim=1).values >= iou).to(mask.dtype)
    return mask


def face_score_loss(
    maps: list[LogitMap],
    floors: list[float],
    faces: list[Tensor] | None,
    iou: float,
    power: float = 1.0,
) -> tuple[Tensor, float]:
    """:func:`score_suppression_loss` over the entries on the protected ``faces`` alone (per
    image, K×4 boxes in the view's pixels; ``None``: every entry), and the highest face
    probability among those entries of the final map (what the cheap check reads). With
    ``power`` above 1 the entries far above the floor get most of the push: with LivePortrait's
    0.1 threshold (floor 0.03) hundreds of weak entries around a face otherwise outweigh the
    few that make the detection (SCRFD at 512 stayed at 0.72 for 40 iterations; 0.42 with 3).

    A stray detection on a shirt or a poster is nobody's face: pushing it down spends budget
    that the faces need. An entry without boxes (a map whose boxes are not known) counts
    wherever it is."""
    if len(floors) == 1:
        floors = floors * len(maps)
    total = maps[0].logits.new_zeros((), dtype=torch.float32)
    peak = 0.0
    for position, (entry, floor) in enumerate(zip(maps, floors, strict=True)):
        logits = entry.logits.float()
        if not logits.numel():
            continue
        margin = math.log(floor) - math.log1p(-floor)
        excess = (logits - margin).clamp(min=0)
        if power != 1:
            excess = excess**power
        if faces is not None and entry.boxes is not None:
            mask = face_mask(entry.boxes, faces, iou)
            excess = excess * mask
            if position == len(maps) - 1:
                masked = logits.detach().masked_fill(mask == 0, -1e4)
                peak = float(torch.sigmoid(masked.max())) if masked.numel() else 0.0
        elif position == len(maps) - 1:
            peak = float(torch.sigmoid(logits.detach().max()))
        total = total + excess.sum()
    return total, peak


class FeatureImportance:
    """FIA-style aggregate gradients: which feature channels/positions make the face visible.

    Computed once on the clean input: the gradient of the detector's face evidence with respect
    to each hooked feature map, averaged over random pixel-dropout masks (which makes it about
    the object, not the exact pixels), then L2-normalised. The attack then minimises the
    importance-weighted features, which transfers better than attacking scores alone.
    """

    def __init__(self, weights: dict[str, Tensor]) -> None:
        self.weights = weights
        #: the picture the estimate was made on, where a caller keeps track of it (a native
        #: view with all its context: a crop with less is a region of it)
        self.window: object | None = None

    @classmethod
    def estimate(
        cls,
        detector: FaceDetector,
        x: Tensor,
        masks: int,
        keep_prob: float,
        generator: torch.Generator,
    ) -> FeatureImportance | None:
        """``None`` for a detector that exposes no hooked features."""
        sums: dict[str, Tensor] = {}
        for _ in range(masks):
            keep = torch.rand(x.shape, generator=generator).to(x.device) < keep_prob
            maps, features = detector.logit_maps_and_features(
                (x * keep).detach().requires_grad_(True)
            )
            if not features:
                continue
            evidence = sum(m.float().sigmoid().sum() for m in maps)
            grads = torch.autograd.grad(evidence, list(features.values()), allow_unused=True)
            for (name, feature), grad in zip(features.items(), grads, strict=False):
                grad = torch.zeros_like(feature) if grad is None else grad
                sums[name] = sums.get(name, 0) + grad.detach()
        if not sums:
            return None
        weights = {name: g / (g.norm() + _EPS) for name, g in sums.items()}
        return cls(weights)

    def loss(
        self, features: dict[str, Tensor], region: tuple[float, float, float, float] | None = None
    ) -> Tensor:
        """The importance-weighted features. ``region``: the part of the estimate's picture
        the features were computed on (fractions x1, y1, x2, y2), so that a crop with less
        context meets the importance of its own pixels, not a stretched copy; the rest of a
        mismatch (a resized view) is interpolated."""
        total = next(iter(features.values())).new_zeros((), dtype=torch.float32)
        for layer_weight, (name, feature) in zip(
            FEATURE_LAYER_WEIGHTS, features.items(), strict=False
        ):
            importance = self.weights[name]
            if region is not None:
                height, width = importance.shape[-2:]
                x1, y1 = int(region[0] * width), int(region[1] * height)
                x2 = max(x1 + 1, math.ceil(region[2] * width))
                y2 = max(y1 + 1, math.ceil(region[3] * height))
                importance = importance[..., y1:y2, x1:x2]
            if importance.shape[-2:] != feature.shape[-2:]:  # a resized view
                importance = torch.nn.functional.interpolate(importance, size=feature.shape[-2:])
            total = total + layer_weight * (importance * feature).float().sum()
        return total
