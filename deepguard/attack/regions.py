"""Where to attack: windows around the faces the ensemble can see.

Fully convolutional detectors respond to a face much the same whether they see the whole frame
or a generous window around it, so attacking windows (plus a margin for context) costs a
fraction of attacking the frame and leaves the rest of the picture untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A rectangle of one frame, in integer pixels (x2, y2 exclusive)."""

    frame: int
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def area(self) -> int:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def overlaps(self, other: Window) -> bool:
        return (
            self.frame == other.frame
            and self.x1 < other.x2
            and other.x1 < self.x2
            and self.y1 < other.y2
            and other.y1 < self.y2
        )

    def union(self, other: Window) -> Window:
        return Window(
            self.frame,
            min(self.x1, other.x1),
            min(self.y1, other.y1),
            max(self.x2, other.x2),
            max(self.y2, other.y2),
        )


def face_windows(
    boxes: np.ndarray, frame: int, height: int, width: int, margin: float, min_margin: float = 0
) -> list[Window]:
    """Windows around ``boxes`` (K×4 xyxy), grown by ``margin`` face sizes (at least
    ``min_margin`` pixels: small faces are recognised mostly by their context) and merged."""
    windows: list[Window] = []
    for x1, y1, x2, y2 in boxes:
        grow = max(margin * max(x2 - x1, y2 - y1), min_margin)
        windows.append(
            Window(
                frame,
                int(max(0, np.floor(x1 - grow))),
                int(max(0, np.floor(y1 - grow))),
                int(min(width, np.ceil(x2 + grow))),
                int(min(height, np.ceil(y2 + grow))),
            )
        )
    return merge_windows(windows)


def merge_windows(windows: list[Window]) -> list[Window]:
    """Merge overlapping windows until none overlap (attacking a pixel twice wastes passes)."""
    merged = list(windows)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if merged[i].overlaps(merged[j]):
                    merged[i] = merged[i].union(merged.pop(j))
                    changed = True
                    break
            if changed:
                break
    return [w for w in merged if w.area > 0]


def detector_views(
    windows: list[Window], height: int, width: int, min_size: int, whole_fraction: float
) -> list[Window]:
    """What the detectors look at while attacking ``windows``.

    Small crops mislead: near a crop border a detector's anchors see padding instead of the
    picture, so a face hidden in a 64-pixel crop can reappear in the full frame. Views are
    therefore at least ``min_size`` on a side, and a frame whose views would cover more than
    ``whole_fraction`` of it is attacked whole.
    """
    grown = []
    for window in windows:
        x1, x2 = _span(window.x1, window.x2, min_size, width)
        y1, y2 = _span(window.y1, window.y2, min_size, height)
        grown.append(Window(window.frame, x1, y1, x2, y2))
    views = []
    for frame in sorted({w.frame for w in grown}):
        merged = merge_windows([w for w in grown if w.frame == frame])
        if sum(w.area for w in merged) >= whole_fraction * height * width:
            merged = [Window(frame, 0, 0, width, height)]
        views += merged
    return views


def _span(start: int, stop: int, min_size: int, limit: int) -> tuple[int, int]:
    """``[start, stop)`` widened to ``min_size`` around its centre, shifted to fit ``limit``."""
    size = min(max(stop - start, min_size), limit)
    begin = (start + stop - size) // 2
    begin = min(max(begin, 0), limit - size)
    return begin, begin + size
