"""Verification: does a tool still find a protected face, the way it looks for faces?

A *look* is one detector at one scale and one score threshold. Every enabled tool profile
adds the looks its tool takes (its detectors after its own resize, at its own threshold), and
the preset may add native looks of every ensemble detector (``scales``). Looks of a detector
at the same scale are merged at the lowest threshold, so one pass answers for every tool that
shares it.

Judgement is per face. The faces to protect are those found on the clean picture (any look,
at its own threshold when that is at least 0.5 and at 0.5 for lower ones, so LivePortrait's
0.1 adds no stray "faces"; in a clip also the tracker's). A look finds a protected face when
one of its detections above the threshold overlaps it (IoU ≥ 0.3 with any box a look drew
around that face on the clean picture). Other detections, a poster or a shirt at 0.1, are
counted and fail nothing.

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
#: a detection is a protected face when it overlaps one of the face's clean boxes this much
MATCH_IOU = 0.3
#: the lowest score at which a clean detection counts as a face to protect
FACE_SCORE = 0.5


@dataclass(frozen=True)
class Look:
    """One detector at one scale and threshold, standing for the ``tools`` that look this way.

    ``native`` looks are the ensemble's own view of the picture, judged at the detector's
    threshold; the others come from tool profiles. ``crops``: the attack shows the look crops
    around the faces (a native look alone); a tool's look, and a native look merged with one
    (Wav2Lip runs RetinaFace's stand-in on the whole frame at native size), sees the whole
    resized frame, as the tool does. ``threshold`` is the lowest of the tools' (what the
    attack must beat); each tool counts faces at its own, ``tool_thresholds`` (in the order
    of ``tools``).
    """

    detector: str
    scale: float
    threshold: float
    native: bool
    tools: tuple[str, ...] = ()
    tool_thresholds: tuple[float, ...] = ()
    crops: bool = False


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
                    other.crops and look.crops,
                )
                return
        planned.append(look)

    natives = list(detectors) if native_detectors is None else list(native_detectors)
    for name in natives:
        for scale in native_scales:
            add(Look(name, float(scale), detectors[name].score_threshold, True, crops=True))
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


def detect_looks(
    detectors: Mapping[str, FaceDetector],
    looks: Sequence[Look],
    frames: np.ndarray,
    margin: float = 1.0,
    scale: float = 1.0,
) -> dict[Look, list[Detections]]:
    """Each look's detections on N×H×W×3 uint8 frames, at ``margin`` × its threshold (fp32).
    Boxes are in the pixels of a picture ``scale`` times smaller than these frames (a
    platform's copy judged against the faces of the original)."""
    found: dict[Look, list[Detections]] = {}
    for look in looks:
        detector = detectors[look.detector]
        per_frame = []
        for frame in frames:
            resized = resize_like_tools(frame, look.scale)
            x = torch.from_numpy(np.require(resized, requirements=["C", "W"])).to(detector.device)
            with torch.autocast(detector.device.type, enabled=False):
                (result,) = detector.detect_batch(
                    x.permute(2, 0, 1).unsqueeze(0).float(), margin * look.threshold
                )
            per_frame.append(Detections(result.boxes / (look.scale * scale), result.scores))
        found[look] = per_frame
    return found


# -- the faces to protect ------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """One face to protect: every box a look drew around it on the clean picture (M×4 xyxy)."""

    boxes: np.ndarray

    @property
    def box(self) -> np.ndarray:
        """The smallest box holding all of them."""
        return np.concatenate([self.boxes[:, :2].min(0), self.boxes[:, 2:].max(0)])

    def matched_by(self, boxes: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
        """Which of ``boxes`` (K×4) overlap this face by ``iou`` (a K bool mask)."""
        if len(boxes) == 0:
            return np.zeros(0, bool)
        return (box_iou(boxes, self.boxes) >= iou).any(axis=1)

    def to_json(self) -> list[float]:
        """Its box, for a clip's per-frame rows."""
        return [round(float(v), 1) for v in self.box]

    def to_report(self) -> dict:
        """Its box and every box the looks drew around it, for a photo's report."""
        boxes = [[round(float(v), 1) for v in box] for box in self.boxes]
        return {"box": self.to_json(), "boxes": boxes}


#: per frame, its faces to protect (``None``: a frame whose faces are not known, where every
#: detection counts as a face)
Faces = list[list[Face] | None]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """K×M IoU of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def protected_faces(
    found: Mapping[Look, list[Detections]],
    frames: int,
    extra: Sequence[np.ndarray] | None = None,
) -> Faces:
    """The faces to protect on each of ``frames`` frames: every clean detection of a look at
    its threshold, or at :data:`FACE_SCORE` when the threshold is lower, plus ``extra`` boxes
    (a tracker's, K×4 per frame). Boxes overlapping by :data:`MATCH_IOU` are one face."""
    faces: Faces = []
    for index in range(frames):
        boxes, scores = [], []
        for look, per_frame in found.items():
            detections = per_frame[index]
            keep = detections.scores >= max(look.threshold, FACE_SCORE)
            boxes.append(detections.boxes[keep])
            scores.append(detections.scores[keep])
        if extra is not None and len(extra[index]):
            boxes.append(np.asarray(extra[index], np.float32).reshape(-1, 4))
            scores.append(np.zeros(len(boxes[-1]), np.float32))  # after every detection
        faces.append(_cluster(boxes, scores))
    return faces


def _cluster(boxes: list[np.ndarray], scores: list[np.ndarray]) -> list[Face]:
    """Greedy, highest score first: a box joins the first face it overlaps by MATCH_IOU."""
    if not boxes or not sum(len(b) for b in boxes):
        return []
    all_boxes = np.concatenate(boxes).astype(np.float32)
    order = np.argsort(-np.concatenate(scores), kind="stable")
    members: list[list[np.ndarray]] = []
    for box in all_boxes[order]:
        for group in members:
            if (box_iou(box[None], np.stack(group)) >= MATCH_IOU).any():
                group.append(box)
                break
        else:
            members.append([box])
    return [Face(np.stack(group)) for group in members]


# -- verdicts --------------------------------------------------------------------------------


@dataclass
class Finding:
    """What one tool (or look) found on one frame: the protected faces (their indices) and
    how many other detections it made."""

    faces: set[int] = field(default_factory=set)
    others: int = 0

    def merge(self, other: Finding) -> Finding:
        return Finding(self.faces | other.faces, max(self.others, other.others))


def match(detections: Detections, faces: list[Face] | None, threshold: float) -> Finding:
    """The protected ``faces`` that ``detections`` above ``threshold`` overlap, and how many
    of those detections overlap none (``faces`` unknown: every detection is a face)."""
    keep = detections.scores > threshold
    boxes = detections.boxes[keep]
    if faces is None:
        return Finding(set(range(len(boxes))), 0)
    hits = np.zeros(len(boxes), bool)
    found = set()
    for index, face in enumerate(faces):
        matched = face.matched_by(boxes)
        if matched.any():
            found.add(index)
            hits |= matched
    return Finding(found, int((~hits).sum()))


@dataclass
class Verdict:
    """Every look's detections on every delivered copy, judged against the faces to protect.

    ``found``: chain name → look → per frame, its detections at ``margin`` × the look's
    threshold, boxes in the original picture's pixels."""

    faces: Faces
    found: dict[str, dict[Look, list[Detections]]] = field(default_factory=dict)
    margin: float = 1.0

    @property
    def frames(self) -> int:
        return len(self.faces)

    @property
    def chains(self) -> list[str]:
        return list(self.found)

    @property
    def passes(self) -> int:
        """The detector passes (forward only) this verdict took: one per look, chain and
        frame."""
        return sum(len(looks) for looks in self.found.values()) * self.frames

    def merge(self, other: Verdict) -> Verdict:
        """Both verdicts' looks (on the same faces): the tools' detectors outside the ensemble
        join the ensemble's."""
        found = {chain: dict(looks) for chain, looks in self.found.items()}
        for chain, looks in other.found.items():
            found.setdefault(chain, {}).update(looks)
        return Verdict(self.faces, found, min(self.margin, other.margin))

    def tool(self, name: str, chain: str | None = None, margin: float = 1.0) -> list[Finding]:
        """Per frame, what tool ``name`` finds (every look it takes, at its own threshold ×
        ``margin``), on ``chain`` or on the worst of them."""
        findings = [Finding() for _ in range(self.frames)]
        for chain_name, looks in self.found.items():
            if chain not in (None, chain_name):
                continue
            for look, per_frame in looks.items():
                if name not in look.tools:
                    continue
                threshold = look.tool_thresholds[look.tools.index(name)] * margin
                for index, detections in enumerate(per_frame):
                    found = match(detections, self.faces[index], threshold)
                    findings[index] = findings[index].merge(found)
        return findings

    def look(self, look: Look, chain: str, margin: float = 1.0) -> list[Finding]:
        """Per frame, what ``look`` finds on ``chain`` at ``margin`` × its threshold."""
        per_frame = self.found.get(chain, {}).get(look)
        if per_frame is None:
            return [Finding() for _ in range(self.frames)]
        return [match(d, self.faces[i], look.threshold * margin) for i, d in enumerate(per_frame)]

    def tools(self) -> list[str]:
        names: dict[str, None] = {}
        for looks in self.found.values():
            for look in looks:
                names.update(dict.fromkeys(look.tools))
        return list(names)

    def by_tool(self, chain: str | None = None) -> dict[str, list[int]]:
        """Per tool, the protected faces it finds on each frame (worst chain by default)."""
        return {
            name: [len(finding.faces) for finding in self.tool(name, chain)]
            for name in self.tools()
        }

    def by_detector(self, chain: str | None = None) -> dict[str, list[int]]:
        """Per detector, the protected faces any of its looks finds on each frame, each look
        at its own (lowest tool) threshold."""
        counts: dict[str, list[set[int]]] = {}
        for chain_name, looks in self.found.items():
            if chain not in (None, chain_name):
                continue
            for look in looks:
                found = counts.setdefault(look.detector, [set() for _ in range(self.frames)])
                for index, finding in enumerate(self.look(look, chain_name)):
                    found[index] |= finding.faces
        return {name: [len(faces) for faces in per_frame] for name, per_frame in counts.items()}

    def hides_from(self, tools: Iterable[str], margin: float = 1.0) -> bool:
        """No protected face found by any of ``tools`` on any chain (at ``margin`` × each
        tool's threshold)."""
        return not any(finding.faces for name in tools for finding in self.tool(name, None, margin))

    def found_pairs(self, tools: Iterable[str], margin: float = 1.0) -> set[tuple]:
        """(tool, chain, frame, face) for every protected face a tool finds: what a smaller
        perturbation must not add to."""
        pairs = set()
        for name in tools:
            for chain in self.found:
                for index, finding in enumerate(self.tool(name, chain, margin)):
                    pairs |= {(name, chain, index, face) for face in finding.faces}
        return pairs


def keep_most(counts: dict, name: object, per_frame: list[int]) -> None:
    """Per frame, the most faces ``name`` found in any of the looks counted so far."""
    previous = counts.get(name, [0] * len(per_frame))
    counts[name] = [max(a, b) for a, b in zip(previous, per_frame, strict=True)]
