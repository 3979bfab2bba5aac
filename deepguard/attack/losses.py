"""The two FacePoison objectives: score suppression and importance-weighted features."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deepguard.models.base import FaceDetector

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


class FeatureImportance:
    """FIA-style aggregate gradients: which feature channels/positions make the face visible.

    Computed once on the clean input: the gradient of the detector's face evidence with respect
    to each hooked feature map, averaged over random pixel-dropout masks (which makes it about
    the object, not the exact pixels), then L2-normalised. The attack then minimises the
    importance-weighted features, which transfers better than attacking scores alone.
    """

    def __init__(self, weights: dict[str, Tensor]) -> None:
        self.weights = weights

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

    def loss(self, features: dict[str, Tensor]) -> Tensor:
        total = next(iter(features.values())).new_zeros((), dtype=torch.float32)
        for layer_weight, (name, feature) in zip(
            FEATURE_LAYER_WEIGHTS, features.items(), strict=False
        ):
            importance = self.weights[name]
            if importance.shape != feature.shape:  # EOT resized the view
                importance = torch.nn.functional.interpolate(importance, size=feature.shape[-2:])
            total = total + layer_weight * (importance * feature).float().sum()
        return total
