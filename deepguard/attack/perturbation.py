"""The perturbation: where it may go, how large it may be, and how it is parameterised.

δ is held at the scales where it is read, not on one native sampling grid. A tool shrinks a
press photo to 640 pixels with a plain bilinear resize that reads 2×2 pixels out of every
4×4; a platform shrinks it to 1080 with area averaging first. A perturbation optimised on the
native grid through one exact resize lives on the pixels that resize samples, and any other
path reads other pixels (YuNet hid 74.6 % of held-out faces at native size, 4.6 % after a
640-pixel resize). Here δ is a sum of components held at the tools' working scale, at the
platforms' scale and at native size, each upsampled smoothly to native: whatever grid reads
it, the low-resolution components look the same.

The budget is an L∞ bound per pixel (``epsilon``, raised around the faces some detectors need
more for, optionally shaped by texture), faded out around the face windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.attack.regions import Window
from deepguard.attack.transforms import quantize_uint8

_TINY = 1e-12


class Perturbation:
    """δ = clip(Σₖ upₖ(cₖ), ±bound): components ``cₖ`` held at long sides ``sizes`` (0:
    native), each upsampled bilinearly to the frame. Sign-gradient steps with momentum move
    each component; the clip is straight-through, so a saturated pixel can still move back.

    ``shared``: one perturbation for all frames (their mean), as a clip's segment uses."""

    def __init__(
        self,
        bound: Tensor,
        sizes: Sequence[int],
        start: Tensor | None = None,
        momentum: float = 0.0,
        shared: bool = False,
    ) -> None:
        frames, _, height, width = bound.shape
        self.rebound(bound)
        self.momentum = momentum
        self.shared = shared
        batch = 1 if shared else frames
        longest = max(height, width)
        shapes: list[tuple[int, int]] = []
        for size in sorted({int(s) for s in sizes}, reverse=True):
            if size <= 0 or size >= longest:
                shape = (height, width)
            else:
                shape = (
                    max(1, round(height * size / longest)),
                    max(1, round(width * size / longest)),
                )
            if shape not in shapes:
                shapes.append(shape)
        if (height, width) not in shapes and start is not None:
            shapes.append((height, width))  # a warm start lives on the native grid
        self.components = [bound.new_zeros(batch, 3, h, w) for h, w in shapes]
        self.velocity = [torch.zeros_like(c) for c in self.components]
        if start is not None:
            native = shapes.index((height, width))
            start = start.to(bound.device)
            if shared:
                start = start.mean(0, keepdim=True)
            self.components[native] = torch.maximum(
                torch.minimum(start, self.limit_map()), -self.limit_map()
            )
        self._fixed: Tensor | None = None

    def rebound(self, bound: Tensor) -> None:
        """Take a new per-pixel bound (faces that climbed the ε ladder between rounds): the
        components keep their values, so a face whose bound rose starts from what it had."""
        self.bound = bound
        self.inside = (bound > 0).float()
        self.limit = float(bound.max()) if bound.numel() else 0.0
        self._fixed = None

    def limit_map(self) -> Tensor:
        bound = self.bound.amax(0, keepdim=True) if self.shared else self.bound
        return bound

    def leaves(self) -> list[Tensor]:
        """The components as fresh leaves that record gradients."""
        return [c.detach().requires_grad_(True) for c in self.components]

    def compose(self, components: Sequence[Tensor] | None = None) -> Tensor:
        """δ on the frames' grid (N×3×H×W), differentiable in ``components``."""
        if self._fixed is not None and components is None:
            return self._fixed
        parts = self.components if components is None else components
        height, width = self.bound.shape[-2:]
        total = None
        for part in parts:
            if tuple(part.shape[-2:]) != (height, width):
                part = F.interpolate(
                    part, size=(height, width), mode="bilinear", align_corners=False
                )
            total = part if total is None else total + part
        assert total is not None
        if self.shared:
            total = total.expand(self.bound.shape[0], -1, -1, -1)
        clipped = torch.maximum(torch.minimum(total, self.bound), -self.bound)
        return (total + (clipped - total).detach()) * self.inside

    def step(
        self,
        gradients: Sequence[Tensor] | None,
        size: float,
        direct: Sequence[Tensor] | None = None,
    ) -> None:
        """One sign step of ``size`` levels on every component, against its gradient.

        ``gradients`` accumulate in the momentum; ``direct`` ones (detectors whose scored
        candidates change every step, :attr:`FaceDetector.momentum_safe`) join the step
        without entering it. Both are normalised by the mean size of their sum."""
        for index in range(len(self.components)):
            part = gradients[index] if gradients is not None else None
            side = direct[index] if direct is not None else None
            total = sum(g for g in (part, side) if g is not None)
            if not isinstance(total, Tensor):
                continue
            norm = total.abs().mean() + _TINY
            if part is not None:
                self.velocity[index] = self.momentum * self.velocity[index] + part / norm
            heading = self.velocity[index] + (side / norm if side is not None else 0)
            moved = self.components[index] - size * heading.sign()
            self.components[index] = moved.clamp(-self.limit, self.limit)
        self._fixed = None

    def value(self) -> Tensor:
        """δ, detached."""
        with torch.no_grad():
            return self.compose().detach()

    def fix(self, delta: Tensor) -> None:
        """Replace δ by a fixed tensor (a shrunk one): :meth:`value` returns it from now on."""
        self._fixed = delta.detach()


def soft_mask(x: Tensor, windows: list[Window], fade: float) -> Tensor:
    """N×1×H×W: 1 inside ``windows``, falling linearly to 0 over a band of ``fade`` times each
    window's shorter side (at least 2 pixels) around it.

    The budget is multiplied by it, so the perturbation fades out at the border of its face
    region instead of ending in a hard-edged rectangle (visible in a difference heatmap, and
    to a trained eye in flat backgrounds). The band lies outside the window: a fade inside
    it took budget from the face's context, and YuNet found lp_s0's face again.
    Overlapping windows keep the larger value.
    """
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:], device=x.device)
    height, width = x.shape[-2:]
    for w in windows:
        band = max(2, round(fade * min(w.x2 - w.x1, w.y2 - w.y1))) if fade > 0 else 0
        y1, y2 = max(0, w.y1 - band), min(height, w.y2 + band)
        x1, x2 = max(0, w.x1 - band), min(width, w.x2 + band)
        fade_y = _ramp(y1, y2, w.y1, w.y2, band, x.device)
        fade_x = _ramp(x1, x2, w.x1, w.x2, band, x.device)
        region = mask[w.frame, 0, y1:y2, x1:x2]
        torch.maximum(region, torch.minimum(fade_y[:, None], fade_x[None, :]), out=region)
    return mask


def _ramp(start: int, stop: int, inner_start: int, inner_stop: int, band: int, device) -> Tensor:
    """Along one axis, over pixels ``[start, stop)``: 1 inside ``[inner_start, inner_stop)``,
    falling linearly to 0 ``band`` pixels outside it."""
    centres = torch.arange(start, stop, device=device, dtype=torch.float32)
    outside = torch.clamp(torch.maximum(inner_start - centres, centres - (inner_stop - 1)), min=0)
    if not band:
        return (outside == 0).float()
    return (1 - outside / (band + 1)).clamp(min=0)


def texture_weights(
    frames: np.ndarray, mask: Tensor, strength: float, shared: bool = False
) -> Tensor:
    """N×1×H×W budget weights in [0.4, 1]: 1 on textured pixels (hair, fabric, foliage), less
    on flat skin and sky, where a perturbation shows first. Never above 1, so ε stays the
    L∞ bound. ``strength`` 0 gives 1 everywhere; 1 follows the local contrast fully.
    ``shared``: one map for all frames (their mean), for a perturbation the frames share."""
    weights = torch.ones_like(mask)
    if strength <= 0:
        return weights
    for index, frame in enumerate(frames):
        luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mean = cv2.blur(luma, (7, 7))
        contrast = np.sqrt(np.maximum(cv2.blur(luma * luma, (7, 7)) - mean * mean, 0))
        inside = mask[index, 0].cpu().numpy() > 0
        if not inside.any():
            continue
        reference = float(np.median(contrast[inside])) + 1.0
        shaped = np.clip((contrast + 1.0) / reference, 0.4, 1.6) ** strength
        shaped /= np.sqrt(np.mean(shaped[inside] ** 2))  # the median texture near full ε
        weights[index, 0] = torch.from_numpy(np.clip(shaped, 0.4, 1.0)).to(mask.device)
    if shared:
        weights = weights.mean(0, keepdim=True).expand_as(weights)
    return weights


def finish_frames(x: Tensor, frames: np.ndarray, delta: Tensor, bound: Tensor) -> np.ndarray:
    """Round to 8 bits; rounding may not push any pixel past its bound, so clip exactly."""
    out = tensor_to_frames(quantize_uint8(x + delta)).astype(np.int16)
    limit = bound.floor().permute(0, 2, 3, 1).cpu().numpy().astype(np.int16)
    clean = frames.astype(np.int16)
    return np.clip(out, clean - limit, clean + limit).astype(np.uint8)


def frames_to_tensor(frames: np.ndarray, device: torch.device | str) -> Tensor:
    """N×H×W×3 uint8 RGB → N×3×H×W float 0..255."""
    writable = np.require(frames, requirements=["C", "W"])  # copies only read-only input
    return torch.from_numpy(writable).to(device).permute(0, 3, 1, 2).float()


def tensor_to_frames(x: Tensor) -> np.ndarray:
    return x.detach().round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
