"""SSD-style prior boxes and box decoding shared by the biubug6 detectors.

RetinaFace (``biubug6/Pytorch_Retinaface``) and Face-Detector-1MB
(``biubug6/Face-Detector-1MB-with-landmark``) lay out their priors the same way: one square
prior per ``min_size`` at the centre of every cell of a ``ceil(H / step) × ceil(W / step)``
grid, level by level, row by row, cell by cell. The reference code works in coordinates
normalised by the image size and multiplies by it afterwards; the decoding is linear in the
prior, so here priors are kept in input pixels and boxes come out in pixels directly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PriorConfig:
    """Prior layout of one detector: ``min_sizes[k]`` are the prior sizes at ``steps[k]``."""

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    #: SSD encoding variances for (centre offset, log size)
    variances: tuple[float, float] = (0.1, 0.2)

    def __post_init__(self) -> None:
        if len(self.min_sizes) != len(self.steps):
            raise ValueError("min_sizes and steps must have one entry per feature level")

    @property
    def anchors_per_cell(self) -> tuple[int, ...]:
        return tuple(len(sizes) for sizes in self.min_sizes)

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Grid size of every level, as the reference ``PriorBox`` computes it."""
        return [(math.ceil(height / step), math.ceil(width / step)) for step in self.steps]

    def num_priors(self, height: int, width: int) -> int:
        sizes = self.feature_sizes(height, width)
        return sum(h * w * n for (h, w), n in zip(sizes, self.anchors_per_cell, strict=True))


def make_priors(
    config: PriorConfig, height: int, width: int, device: torch.device | str = "cpu"
) -> Tensor:
    """A×4 priors ``(cx, cy, w, h)`` in input pixels, in the heads' output order."""
    levels = []
    for (rows, cols), step, sizes in zip(
        config.feature_sizes(height, width), config.steps, config.min_sizes, strict=True
    ):
        cy = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * step
        cx = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * step
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        size = torch.tensor(sizes, dtype=torch.float32, device=device)
        # rows × cols × anchors: the anchor index varies fastest, like the heads' channels
        shape = (rows, cols, len(sizes))
        level = torch.stack(
            [
                grid_x[..., None].expand(shape),
                grid_y[..., None].expand(shape),
                size.expand(shape),
                size.expand(shape),
            ],
            dim=-1,
        )
        levels.append(level.reshape(-1, 4))
    return torch.cat(levels)


def decode_boxes(loc: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Regression offsets N×A×4 → boxes N×A×4 ``(x1, y1, x2, y2)`` in the priors' units."""
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Landmark offsets N×A×10 → N×A×5×2 points ``(x, y)`` in the priors' units."""
    offsets = pre.unflatten(-1, (5, 2))
    return priors[:, None, :2] + offsets * variances[0] * priors[:, None, 2:]


class PriorCache:
    """Priors built once per ``(height, width, device)`` and reused on every call.

    The attack calls a detector hundreds of times on the same frame size, so priors are
    looked up instead of rebuilt. A handful of sizes is kept; the oldest is dropped first.
    """

    def __init__(self, config: PriorConfig, max_entries: int = 16) -> None:
        self.config = config
        self.max_entries = max_entries
        self._cache: dict[tuple[int, int, str], Tensor] = {}
        # registry detectors are shared between attack threads
        self._lock = threading.Lock()

    def __call__(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        with self._lock:
            priors = self._cache.get(key)
            if priors is None:
                if len(self._cache) >= self.max_entries:
                    self._cache.pop(next(iter(self._cache)))
                # a normal tensor even under inference_mode, so a later autograd call can use it
                with torch.inference_mode(False):
                    priors = make_priors(self.config, height, width, device)
                self._cache[key] = priors
        return priors

    def __getstate__(self) -> dict[str, object]:
        # a lock cannot be pickled or deep-copied; the cache is cheap to rebuild
        return {"config": self.config, "max_entries": self.max_entries}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["config"], state["max_entries"])  # type: ignore[misc]

    def decode(self, loc: Tensor, height: int, width: int) -> Tensor:
        """Decoded N×A×4 pixel boxes for regressions computed on an ``height × width`` input."""
        priors = self(height, width, loc.device)
        if priors.shape[0] != loc.shape[1]:
            raise ValueError(
                f"{loc.shape[1]} regressions but {priors.shape[0]} priors for {height}×{width}"
            )
        return decode_boxes(loc, priors.to(loc.dtype), self.config.variances)
