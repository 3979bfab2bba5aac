"""Surrogate augmentation: a slightly different detector at every step, for no extra pass.

The attack pushes down the final scores of the detectors it holds, so it learns their heads
rather than what makes a face a face to any network. Dropping a random share of the backbone
features at every attack pass (a "ghost network", Li et al., AAAI 2020) turns each detector
into a family of nearby ones, redrawn every step; a perturbation that fools the family
transfers better to detectors outside the ensemble. Verification never drops anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from deepguard.models.base import FaceDetector


@contextmanager
def ghost(detector: FaceDetector, rate: float, generator: torch.Generator) -> Iterator[None]:
    """Within the block, the outputs of ``detector``'s backbone stages
    (:meth:`FaceDetector.dropout_points`) lose a ``rate`` share of their values (the rest
    scaled up by ``1 / (1 - rate)``), drawn from ``generator``."""
    points = detector.dropout_points() if rate > 0 else []
    if not points:
        yield
        return

    def drop(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        keep = torch.rand(output.shape, generator=generator) >= rate
        return output * keep.to(output.device, output.dtype) / (1 - rate)

    handles = [point.register_forward_hook(drop) for point in points]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
