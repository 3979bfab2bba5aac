"""Verification: does a detector still find a face, the way a real tool looks for it?

A *look* is one detector at one scale and one score threshold. Every ensemble detector is
looked at natively (at each of the config's ``scales``, at its own threshold), and every
enabled tool profile adds the looks its tool takes: its detectors after its own resize, at its
own threshold. Looks of a detector at the same scale are merged at the lowest threshold, so
one pass answers for every tool that shares it. A delivered picture is hidden when no look
finds a face on any delivered version (the saved file and its re-compressions).

Resizing here is what the tools do: OpenCV's bilinear ``cv2.resize`` on the 8-bit picture.
Detection is always fp32, whatever precision the attack ran in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from deepguard.attack.profiles import ToolProfile
from deepguard.models.base import Detections, FaceDetector

#: scales closer than this are one look (a 1279-pixel and a 1280-pixel photo are the same)
_SAME_SCALE = 1e-3


@dataclass(frozen=True)
class Look:
    """One detector at one scale and threshold, standing for the ``tools`` that look this way.

    ``native`` looks are the ensemble's own view of the picture (the attack works on crops
    around the faces); the others come from tool profiles and see the whole resized frame.
    ``threshold`` is the lowest of the tools' (what the attack must beat); each tool counts
    faces at its own, ``tool_thresholds`` (in the order of ``tools``).
    """

    detector: str
    scale: float
    threshold: float
    native: bool
    tools: tuple[str, ...] = ()
    tool_thresholds: tuple[float, ...] = ()


def plan_looks(
    detectors: Mapping[str, FaceDetector],
    profiles: Sequence[ToolProfile],
    height: int,
    width: int,
    native_scales: Sequence[float] = (1.0,),
    native_detectors: Iterable[str] | None = None,
) -> list[Look]:
    """Every look at a ``height``×``width`` picture: the native ones of ``native_detectors``
    (default: all of ``detectors``), then each profile's, for the detectors that are loaded."""
    planned: list[Look] = []

    def add(look: Look) -> None:
        for index, other in enumerate(planned):
            if other.detector == look.detector and abs(other.scale - look.scale) < _SAME_SCALE:
                thresholds = dict(zip(look.tools, look.tool_thresholds, strict=True))
                thresholds.update(zip(other.tools, other.tool_thresholds, strict=True))
                planned[index] = Look(
                    other.detector,
                    other.scale,
                    min(other.threshold, look.threshold),
                    other.native or look.native,
                    tuple(thresholds),
                    tuple(thresholds.values()),
                )
                return
        planned.append(look)

    natives = list(detectors) if native_detectors is None else list(native_detectors)
    for name in natives:
        for scale in native_scales:
            add(Look(name, float(scale), detectors[name].score_threshold, True))
    for profile in profiles:
        for name in profile.detectors:
            if name not in detectors:
                continue
            threshold = profile.threshold or detectors[name].score_threshold
            for scale in profile.scales(height, width):
                add(Look(name, scale, threshold, False, (profile.name,), (threshold,)))
    return planned


def tool_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The (height, width) a tool resizes a picture to: each side times ``scale``, rounded
    down as insightface and FaceFusion do (``int(side * scale)``), so the longer side lands
    exactly on the tool's size. Without antialiasing, which pixels reach the detector depends
    on this exact size."""
    return (max(1, int(height * scale + 1e-6)), max(1, int(width * scale + 1e-6)))


def resize_like_tools(frame: np.ndarray, scale: float) -> np.ndarray:
    """An H×W×3 uint8 picture resized by ``scale`` as the tools do (``cv2.resize``, bilinear)."""
    if scale == 1.0:
        return frame
    height, width = tool_size(*frame.shape[:2], scale)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass
class Verdict:
    """Faces found per frame on the worst delivered version: per look (at its threshold,
    the lowest of its tools') and per tool (at the tool's own threshold)."""

    looks: dict[Look, list[int]] = field(default_factory=dict)
    tools: dict[str, list[int]] = field(default_factory=dict)

    def by_detector(self) -> dict[str, list[int]]:
        counts: dict[str, list[int]] = {}
        for look, per_frame in self.looks.items():
            keep_most(counts, look.detector, per_frame)
        return counts

    def by_tool(self) -> dict[str, list[int]]:
        return dict(self.tools)

    def merge(self, other: Verdict) -> Verdict:
        """The faces found on this version or on ``other``, look by look and tool by tool."""
        merged = Verdict(dict(self.looks), dict(self.tools))
        for look, per_frame in other.looks.items():
            keep_most(merged.looks, look, per_frame)
        for tool, per_frame in other.tools.items():
            keep_most(merged.tools, tool, per_frame)
        return merged

    @classmethod
    def of(cls, found: Mapping[Look, list[Detections]]) -> Verdict:
        """Count ``found``: each look's faces, and each tool's at the tool's threshold."""
        verdict = cls()
        for look, per_frame in found.items():
            verdict.looks[look] = [len(d) for d in per_frame]
            for tool, threshold in zip(look.tools, look.tool_thresholds, strict=True):
                counts = [int((d.scores > threshold).sum()) for d in per_frame]
                keep_most(verdict.tools, tool, counts)
        return verdict


def detect_looks(
    detectors: Mapping[str, FaceDetector], looks: Sequence[Look], frames: np.ndarray
) -> dict[Look, list[Detections]]:
    """Each look's detections on N×H×W×3 uint8 frames, boxes in frame pixels (fp32)."""
    found: dict[Look, list[Detections]] = {}
    for look in looks:
        detector = detectors[look.detector]
        per_frame = []
        for frame in frames:
            resized = resize_like_tools(frame, look.scale)
            x = torch.from_numpy(np.require(resized, requirements=["C", "W"])).to(detector.device)
            with torch.autocast(detector.device.type, enabled=False):
                (result,) = detector.detect_batch(
                    x.permute(2, 0, 1).unsqueeze(0).float(), look.threshold
                )
            per_frame.append(Detections(result.boxes / look.scale, result.scores))
        found[look] = per_frame
    return found


def judge(
    detectors: Mapping[str, FaceDetector], looks: Sequence[Look], versions: Iterable[np.ndarray]
) -> Verdict:
    """Faces each look finds, per frame, on the worst of the delivered ``versions``."""
    verdict = Verdict()
    for frames in versions:
        verdict = verdict.merge(Verdict.of(detect_looks(detectors, looks, frames)))
    return verdict


def keep_most(counts: dict, name: object, per_frame: list[int]) -> None:
    """Per frame, the most faces ``name`` found in any of the looks counted so far."""
    previous = counts.get(name, [0] * len(per_frame))
    counts[name] = [max(a, b) for a, b in zip(previous, per_frame, strict=True)]


def tool_summary(
    profiles: Sequence[ToolProfile],
    attacked: Iterable[str],
    before: Mapping[str, list[int]],
    after: Mapping[str, list[int]],
) -> list[dict]:
    """One report row per tool: faces before → after, and whether the result protects
    against it. A tool whose detectors are not all attacked is "not covered", whatever its
    counts say; one that found no face on the clean input has nothing to protect. A tool
    with no counts was not looked at (none of its detectors could be loaded): its faces are
    null rather than a 0 that would read as "none found"."""
    attacked = set(attacked)
    rows = []
    for profile in profiles:
        found_before = sum(before[profile.name]) if profile.name in before else None
        found_after = sum(after[profile.name]) if profile.name in after else None
        covered = set(profile.detectors) <= attacked
        if not covered:
            status = "not covered"
        elif not found_before:
            status = "no faces found"
        else:
            status = "protected" if found_after == 0 else "not protected"
        rows.append(
            {
                "tool": profile.name,
                "title": profile.title,
                "detectors": list(profile.detectors),
                "resize": profile.describe_resize(),
                "threshold": profile.threshold,
                "runs": profile.runs,
                "stand_in": profile.stand_in,
                "covered": covered,
                "faces_before": found_before,
                "faces_after": found_after,
                "status": status,
            }
        )
    return rows
