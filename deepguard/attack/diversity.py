"""Detector-aware input diversity: what unseen detectors do to a picture, one draw per step.

A perturbation learnt against a few detectors' exact views overfits them. Detectors that are
not in the ensemble see the picture differently: smaller (0.3 to 1 of the tool's size),
squashed to a square (OpenCV's SSD reads a 300×300 blob), slightly rotated, noisy, once more
JPEG-compressed. Drawing one such transform per iteration, differentiably, makes the gradient
an expectation over those views (DI-FGSM, Xie et al. 2019, with the transforms chosen from
what detectors do rather than random padding).

Each draw returns the transformed copy and the map of box coordinates from the copy it was
given to the transformed one (a resize is the caller's ratio; a rotation moves the boxes).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.attack.transforms import jpeg_roundtrip

#: a map of K×4 xyxy boxes from one picture's pixels to another's
BoxMap = Callable[[np.ndarray], np.ndarray]
TRANSFORMS = ("downscale", "squash", "rotate", "noise", "jpeg")


def _same(boxes: np.ndarray) -> np.ndarray:
    return boxes


class InputDiversity:
    """One random transform per call, with probability ``probability`` (else none)."""

    def __init__(self, probability: float, rng: random.Random) -> None:
        self.probability = probability
        self.rng = rng

    def __call__(self, x: Tensor) -> tuple[Tensor, BoxMap, str]:
        """``x`` (N×3×H×W, 0..255) transformed; the box map into its pixels (for the
        resizes, boxes follow the change of size, which the caller reads from the shape);
        and the transform's name ("" for none)."""
        rng = self.rng
        if self.probability <= 0 or rng.random() >= self.probability:
            return x, _same, ""
        kind = rng.choice(TRANSFORMS)
        height, width = x.shape[-2:]
        if kind == "downscale":
            factor = rng.uniform(0.3, 1.0)
            size = (max(8, round(height * factor)), max(8, round(width * factor)))
            return F.interpolate(x, size=size, mode="bilinear", antialias=True), _same, kind
        if kind == "squash":
            side = max(8, round(math.sqrt(height * width) * rng.uniform(0.5, 1.0)))
            return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True), _same, kind
        if kind == "rotate":
            return (*_rotate(x, math.radians(rng.uniform(-7, 7))), kind)
        if kind == "noise":
            sigma = rng.uniform(4, 6)
            noise = torch.randn(x.shape, generator=_generator(rng)).to(x.device) * sigma
            return (x + noise).clamp(0, 255), _same, kind
        return jpeg_roundtrip(x, rng.randint(60, 90), "4:2:0"), _same, kind


def _generator(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def _rotate(x: Tensor, angle: float) -> tuple[Tensor, BoxMap]:
    """``x`` turned by ``angle`` radians about its centre (bilinear, black outside), and the
    map of boxes: each box's corners turned, and the box around them."""
    height, width = x.shape[-2:]
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid works in [-1, 1] units; the aspect ratio makes a rotation a shear there
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=x.dtype,
        device=x.device,
    )
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    turned = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    centre = np.array([width / 2, height / 2], np.float32)

    def boxes_map(boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return boxes
        corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]],
                            boxes[:, [2, 3]]], axis=1) - centre  # fmt: skip
        # the grid samples input at R·p, so content at q moves to R⁻¹·q
        turned_x = corners[..., 0] * cos + corners[..., 1] * sin
        turned_y = -corners[..., 0] * sin + corners[..., 1] * cos
        moved = np.stack([turned_x, turned_y], axis=-1) + centre
        return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1).astype(np.float32)

    return turned, boxes_map
