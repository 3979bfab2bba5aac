"""Carry a perturbation from one frame to the next along the tracked faces.

A face that moved or grew between frames takes its perturbation with it: the patch around
its old box is shifted by whole pixels onto its new box, or resized onto it when the box's
size changed. Warm-starting the attack from the carried patch costs a few iterations
instead of a full attack, and keeps the pattern stable in time, which is what suppresses
flicker.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.attack.regions import Window, face_windows
from deepguard.stages.chunk import FrameTracks

#: a face whose window changed size by at most this share takes its perturbation along by
#: whole pixels. Resampled at a sub-pixel offset, the pattern is blurred by the interpolation:
#: on lp_d11, the key frame's perturbation carried bilinearly to the next frame let three
#: detectors find the face after H.264; left in place, one.
WHOLE_PIXEL_SCALE = 0.05


def track_window(
    box: tuple[float, float, float, float], margin: float, min_margin: float
) -> tuple[float, float, float, float]:
    """``box`` grown like an attack window (:func:`face_windows`), not clipped to the frame."""
    x1, y1, x2, y2 = box
    grow = max(margin * max(x2 - x1, y2 - y1), min_margin)
    return x1 - grow, y1 - grow, x2 + grow, y2 + grow


def carry_delta(
    delta: Tensor,
    source: FrameTracks,
    target: FrameTracks,
    margin: float,
    min_margin: float,
    keep_background: bool = False,
) -> tuple[Tensor, Tensor]:
    """Move ``delta`` (C×H×W) from the ``source`` frame's faces to the ``target`` frame's.

    Returns the carried perturbation and a 1×H×W mask of where it is defined: faces tracked in
    both frames, plus everything else when ``keep_background`` (whole-frame mode, where the
    background perturbation simply stays in place).
    """
    _, height, width = delta.shape
    carried = delta.clone() if keep_background else torch.zeros_like(delta)
    defined = torch.full((1, height, width), float(keep_background), device=delta.device)
    for track_id, new_box in target.items():
        old_box = source.get(track_id)
        if old_box is None:
            continue
        sx1, sy1, sx2, sy2 = track_window(old_box, margin, min_margin)
        tx1, ty1, tx2, ty2 = track_window(new_box, margin, min_margin)
        # the target pixels, clipped to the frame, and where they come from in the source
        px1, py1 = max(0, round(tx1)), max(0, round(ty1))
        px2, py2 = min(width, round(tx2)), min(height, round(ty2))
        if px2 - px1 < 2 or py2 - py1 < 2:
            continue
        scale_x, scale_y = (sx2 - sx1) / (tx2 - tx1), (sy2 - sy1) / (ty2 - ty1)
        if max(abs(scale_x - 1), abs(scale_y - 1)) <= WHOLE_PIXEL_SCALE:
            dx = round((sx1 + sx2 - tx1 - tx2) / 2)
            dy = round((sy1 + sy2 - ty1 - ty2) / 2)
            carried[:, py1:py2, px1:px2] = _shifted(delta, px1, py1, px2, py2, dx, dy)
            defined[:, py1:py2, px1:px2] = 1.0
            continue
        xs = sx1 + (torch.arange(px1, px2, device=delta.device) + 0.5 - tx1) * scale_x
        ys = sy1 + (torch.arange(py1, py2, device=delta.device) + 0.5 - ty1) * scale_y
        grid_y, grid_x = torch.meshgrid(ys / height * 2 - 1, xs / width * 2 - 1, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]
        patch = F.grid_sample(delta[None], grid, mode="bilinear", align_corners=False)[0]
        carried[:, py1:py2, px1:px2] = patch
        defined[:, py1:py2, px1:px2] = 1.0
    return carried, defined


def _shifted(delta: Tensor, x1: int, y1: int, x2: int, y2: int, dx: int, dy: int) -> Tensor:
    """The pixels of ``delta`` at ``(x + dx, y + dy)`` for the target pixels ``[y1:y2, x1:x2]``;
    zero where that falls outside the frame."""
    _, height, width = delta.shape
    patch = delta.new_zeros(delta.shape[0], y2 - y1, x2 - x1)
    sx1, sx2 = max(0, x1 + dx), min(width, x2 + dx)
    sy1, sy2 = max(0, y1 + dy), min(height, y2 + dy)
    if sx1 < sx2 and sy1 < sy2:
        patch[:, sy1 - dy - y1 : sy2 - dy - y1, sx1 - dx - x1 : sx2 - dx - x1] = delta[
            :, sy1:sy2, sx1:sx2
        ]
    return patch


def track_windows(
    tracks: FrameTracks, frame: int, height: int, width: int, margin: float, min_margin: float
) -> list[Window]:
    """The attack windows for a frame's tracked faces (same margins as the attack's own)."""
    boxes = np.array(list(tracks.values()), dtype=float).reshape(-1, 4)
    return face_windows(boxes, frame, height, width, margin, min_margin)
