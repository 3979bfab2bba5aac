"""Each face's budget: the ε ladder it climbs and the per-pixel L∞ bound the budgets make.

No single ε serves every face: on the six-picture ε table (docs/results.md) ε 8 already hides
most faces from roop and SimSwap, while LivePortrait's 0.1 threshold and DeepFaceLab's
half-size look need 12 to 16. So each face starts low, on the ladder's first rung, and climbs
one rung after every round in which a covered tool still finds it; faces already hidden keep
theirs. The rungs run from ``epsilon_start`` to the cap (``epsilon``) in steps of
``epsilon_rung``; past the cap one more rung lifts the texture floor, so that the cap holds on
every pixel of that face, flat skin included, before the face is reported as not protected.

The bound of a pixel is the largest any face's window gives it: the face's level, shaped by
texture (lower on flat skin and sky, never above the level) unless the floor is lifted, faded
out around the window (:func:`~deepguard.attack.perturbation.soft_mask`). Frames that share
one perturbation (a clip's segment) share one bound and one budget per face *group*: the
same face on each of those frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deepguard.attack.perturbation import soft_mask, texture_weights
from deepguard.attack.regions import Window, face_windows
from deepguard.attack.verification import MATCH_IOU, Faces, box_iou

#: a warm start within this many levels of a rung is on that rung (rounding, the fade band)
_ON_RUNG = 0.25


@dataclass(frozen=True, order=True)
class Rung:
    """One step of the ladder: an L∞ level in pixel levels, and whether the texture floor is
    lifted (the level on every pixel of the face, smooth skin included). Rungs order as the
    ladder climbs."""

    level: float
    flat: bool = False

    def describe(self) -> str:
        return f"{self.level:g}" + (" (flat)" if self.flat else "")


def ladder(cap: float, start: float = 6.0, step: float = 2.0) -> tuple[Rung, ...]:
    """The rungs up to ``cap``: ``min(start, cap)``, then every ``step`` up to the cap (the cap
    itself the last textured rung), then the cap with the texture floor lifted."""
    cap = float(cap)
    levels = [min(float(start), cap)]
    while levels[-1] + step < cap - 1e-9:
        levels.append(levels[-1] + step)
    if levels[-1] < cap:
        levels.append(cap)
    return (*(Rung(level) for level in levels), Rung(cap, flat=True))


#: a face on one frame: (frame, index among that frame's faces)
FaceKey = tuple[int, int]
#: hints for where faces start on the ladder, per frame: (box, rung) pairs, e.g. the rung a
#: tracked face reached on earlier frames of its scene
RungHints = Sequence[Sequence[tuple[Sequence[float], Rung]]]


class FaceBudgets:
    """The rung of every face group, and the per-pixel bound they make."""

    def __init__(
        self,
        rungs: Sequence[Rung],
        frames: np.ndarray,
        faces: Faces,
        windows: list[Window],
        *,
        margin: float,
        least_margin: float,
        fade: float,
        texture: float,
        shared: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        """``windows``: where the perturbation may go at all (around the faces, or the
        tracker's boxes), at the first rung; each face's own window takes the face's rung.
        ``shared``: the frames carry one perturbation, so one bound and one budget per group
        of boxes that overlap across frames."""
        self.rungs = tuple(rungs)
        self.shared = shared
        self.fade = fade
        count, height, width = frames.shape[:3]
        like = torch.zeros(count, 3, height, width, device=device)
        self._outer = soft_mask(like, windows, fade)
        self._texture = texture_weights(frames, self._outer, texture, shared)
        self.keys: list[FaceKey] = []
        self._boxes: list[np.ndarray] = []
        self._windows: list[Window] = []
        for frame, frame_faces in enumerate(faces):
            for index, face in enumerate(frame_faces or []):
                (window,) = face_windows(face.box[None], frame, height, width, margin, least_margin)
                self.keys.append((frame, index))
                self._boxes.append(face.box)
                self._windows.append(window)
        self.groups = _groups(self.keys, self._boxes) if shared else [[k] for k in self.keys]
        self._group_of = {key: g for g, members in enumerate(self.groups) for key in members}
        self.steps = [0] * len(self.groups)  # each group's rung, as an index into ``rungs``

    # -- where each face stands --------------------------------------------------------------

    def rung_of(self, key: FaceKey) -> Rung:
        return self.rungs[self.steps[self._group_of[key]]]

    def per_frame(self, frames: int) -> list[list[Rung]]:
        """Each frame's faces' rungs, in the order of the frame's faces."""
        table: list[list[Rung]] = [[] for _ in range(frames)]
        for frame, index in self.keys:
            assert len(table[frame]) == index
            table[frame].append(self.rung_of((frame, index)))
        return table

    def start_at(self, hints: RungHints | None = None, warm: Tensor | None = None) -> None:
        """Start faces above the first rung: at the rung of a hint box that overlaps them
        (IoU ≥ 0.3), and at least at the rung a warm start's perturbation already uses inside
        the face's window (a carried perturbation is never clipped below what it carries)."""
        for key, box, window in zip(self.keys, self._boxes, self._windows, strict=True):
            step = 0
            if warm is not None and window.area:
                inside = warm[key[0], :, window.y1 : window.y2, window.x1 : window.x2]
                step = self._step_at_least(float(inside.abs().amax()) - _ON_RUNG)
            for hint_box, rung in hints[key[0]] if hints is not None else ():
                if box_iou(np.asarray(hint_box)[None], box[None])[0, 0] >= MATCH_IOU:
                    step = max(step, self._step_of(rung))
            group = self._group_of[key]
            self.steps[group] = max(self.steps[group], step)

    def climb(self, keys: set[FaceKey]) -> list[int]:
        """Move the groups of ``keys`` (faces some covered tool still finds) one rung up;
        returns the groups that moved (none: every one is on the top rung)."""
        moved = []
        for group in sorted({self._group_of[key] for key in keys if key in self._group_of}):
            if self.steps[group] + 1 < len(self.rungs):
                self.steps[group] += 1
                moved.append(group)
        return moved

    # -- the bound -------------------------------------------------------------------------

    def bound(self) -> Tensor:
        """N×1×H×W: each pixel's L∞ bound in levels (0 where the perturbation may not go)."""
        first = self.rungs[0].level
        bound = self._outer * self._texture * first
        for key, window in zip(self.keys, self._windows, strict=True):
            rung = self.rung_of(key)
            if rung == self.rungs[0]:
                continue
            y1, y2, x1, x2 = self._region(window, *bound.shape[-2:])
            single = soft_mask(bound[:, :, y1:y2, x1:x2],
                               [Window(key[0], window.x1 - x1, window.y1 - y1,
                                       window.x2 - x1, window.y2 - y1)], self.fade)  # fmt: skip
            texture = 1.0 if rung.flat else self._texture[:, :, y1:y2, x1:x2]
            region = bound[:, :, y1:y2, x1:x2]
            torch.maximum(region, single * texture * rung.level, out=region)
        if self.shared:
            bound = bound.amax(0, keepdim=True).expand_as(bound).contiguous()
        return bound

    def group_masks(self, like: Tensor) -> Tensor:
        """G×N×1×H×W: how much each pixel belongs to each group's faces (their soft windows,
        the largest where several overlap), for a scale per group (the shrink)."""
        if not self.groups:
            return like.new_zeros(0)
        masks = []
        for members in self.groups:
            windows = [self._windows[self.keys.index(key)] for key in members]
            masks.append(soft_mask(like, windows, self.fade))
        return torch.stack(masks)

    def group_of(self, key: FaceKey) -> int:
        return self._group_of[key]

    # -- helpers ---------------------------------------------------------------------------

    def _step_of(self, rung: Rung) -> int:
        """The highest step of this ladder at or below ``rung`` (a rung of another ladder)."""
        return max((i for i, own in enumerate(self.rungs) if own <= rung), default=0)

    def _step_at_least(self, level: float) -> int:
        """The first textured rung at or above ``level`` (the top textured one beyond it)."""
        textured = [i for i, rung in enumerate(self.rungs) if not rung.flat]
        for index in textured:
            if self.rungs[index].level >= level:
                return index
        return textured[-1]

    def _region(self, window: Window, height: int, width: int) -> tuple[int, int, int, int]:
        """The window and its fade band, clipped to the frame: (y1, y2, x1, x2)."""
        side = min(window.x2 - window.x1, window.y2 - window.y1)
        band = max(2, round(self.fade * side)) if self.fade > 0 else 0
        return (max(0, window.y1 - band), min(height, window.y2 + band),
                max(0, window.x1 - band), min(width, window.x2 + band))  # fmt: skip


def _groups(keys: list[FaceKey], boxes: list[np.ndarray]) -> list[list[FaceKey]]:
    """Faces on frames that share one perturbation, grouped: a face joins the first group
    holding a face of another frame that overlaps it by :data:`MATCH_IOU` (greedy, in frame
    order); one group takes at most one face per frame."""
    groups: list[list[int]] = []
    for index, (frame, _) in enumerate(keys):
        for members in groups:
            if any(keys[m][0] == frame for m in members):
                continue
            if box_iou(boxes[index][None], np.stack([boxes[m] for m in members])).max() >= (
                MATCH_IOU
            ):
                members.append(index)
                break
        else:
            groups.append([index])
    return [[keys[m] for m in members] for members in groups]
