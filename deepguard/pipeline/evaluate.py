"""Honest evaluation: how many faces each detector still finds on protected files.

Ground truth is each detector's own detections on the clean image at its published threshold
(as in the FacePoison paper); a clean face counts as still found when a detection on the
protected image overlaps it with IoU ≥ 0.5. Detectors outside the attack ensemble are reported
separately: that is transfer, the known hard part of this method.

Each tool profile (``configs/tools.yaml``) is scored the same way through the tool's own looks:
its detectors after its resize and at its threshold. A face is one the tool finds with any of
its looks, and it is still found when any of them finds it on the protected image. A tool whose
detectors are not all in the ensemble is "not covered", whatever its figures say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

from deepguard.attack.core import jpeg_roundtrip_uint8
from deepguard.attack.metrics import faces_still_found, psnr, ssim
from deepguard.attack.profiles import ToolProfile
from deepguard.attack.verification import Look, detect_looks, plan_looks
from deepguard.errors import InputError
from deepguard.models.base import Detections, FaceDetector
from deepguard.settings import get_settings
from deepguard.stages.image_io import IMAGE_SUFFIXES, read_image


@dataclass
class DetectorScore:
    clean_faces: int = 0
    still_found: int = 0

    @property
    def hide_rate(self) -> float | None:
        if self.clean_faces == 0:
            return None
        return 1 - self.still_found / self.clean_faces


@dataclass
class ToolScore:
    """A tool's faces on the clean images and how many are still found on the protected ones;
    ``missing``: its detectors whose weights are not here (left out of its looks)."""

    profile: ToolProfile
    missing: tuple[str, ...] = ()
    faces: DetectorScore = field(default_factory=DetectorScore)

    def status(self, ensemble: set[str]) -> str:
        if not set(self.profile.detectors) <= ensemble:
            return "not covered"
        if self.missing:
            return "not counted"  # a tool is beaten only when every detector it may run is
        if self.faces.clean_faces == 0:
            return "no faces found"
        return "protected" if self.faces.still_found == 0 else "not protected"


@dataclass
class Evaluation:
    pairs: int = 0
    scores: dict[str, DetectorScore] = field(default_factory=dict)
    tools: dict[str, ToolScore] = field(default_factory=dict)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)


def parse_recompress(spec: str | None) -> int | None:
    """``jpeg:75`` → 75."""
    if spec is None:
        return None
    kind, _, quality = spec.partition(":")
    if kind.lower() != "jpeg" or not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise InputError(f"--recompress expects jpeg:QUALITY (1-100), got {spec!r}")
    return int(quality)


def pair_files(clean: Path, protected: Path) -> list[tuple[Path, Path]]:
    """Clean/protected pairs: two files, or two folders matched by file name."""
    if clean.is_file() and protected.is_file():
        return [(clean, protected)]
    if clean.is_dir() and protected.is_dir():
        pairs = [
            (path, protected / path.name)
            for path in sorted(clean.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES and (protected / path.name).is_file()
        ]
        if not pairs:
            raise InputError(f"no files with the same name in {clean} and {protected}")
        return pairs
    raise InputError("CLEAN and OUT must both be files or both be folders")


def evaluate(
    pairs: Iterable[tuple[Path, Path]],
    detectors: list[FaceDetector],
    recompress_quality: int | None = None,
    profiles: Sequence[ToolProfile] = (),
    tool_detectors: Mapping[str, FaceDetector] | None = None,
) -> Evaluation:
    """Score ``detectors`` and, through ``tool_detectors`` (default: ``detectors``), the tools
    of ``profiles`` on every clean/protected pair."""
    table = dict(tool_detectors) if tool_detectors is not None else {d.name: d for d in detectors}
    result = Evaluation(
        scores={d.name: DetectorScore() for d in detectors},
        tools={
            p.name: ToolScore(p, tuple(n for n in p.detectors if n not in table)) for p in profiles
        },
    )
    limit = get_settings().max_image_pixels
    for clean_path, protected_path in pairs:
        clean = read_image(clean_path, limit).rgb
        protected = read_image(protected_path, limit).rgb
        if clean.shape != protected.shape:
            raise InputError(f"{protected_path.name}: size differs from {clean_path.name}")
        if recompress_quality:
            protected = jpeg_roundtrip_uint8(protected[None], recompress_quality)[0]
        result.pairs += 1
        result.psnr.append(psnr(clean, protected))
        result.ssim.append(ssim(clean, protected))
        for detector in detectors:
            before, after = detector.detect(clean), detector.detect(protected)
            score = result.scores[detector.name]
            score.clean_faces += len(before)
            score.still_found += faces_still_found(before, after)
        _score_tools(result.tools, table, clean, protected)
    return result


def _score_tools(
    tools: dict[str, ToolScore],
    table: Mapping[str, FaceDetector],
    clean: np.ndarray,
    protected: np.ndarray,
) -> None:
    """Add one pair to each tool's score. A look several tools share (the same detector,
    scale and threshold) runs once."""
    height, width = clean.shape[:2]
    found: dict[tuple, list[Detections]] = {}

    def detections(look: Look, which: str, image: np.ndarray) -> Detections:
        key = (look.detector, round(look.scale, 6), look.threshold, which)
        if key not in found:
            found[key] = detect_looks(table, [look], image[None])[look]
        return found[key][0]

    for tool in tools.values():
        looks = plan_looks(table, [tool.profile], height, width, native_detectors=())
        before = _distinct([detections(look, "clean", clean) for look in looks])
        after = _joined([detections(look, "protected", protected) for look in looks])
        tool.faces.clean_faces += len(before)
        tool.faces.still_found += faces_still_found(before, after)


def _joined(parts: list[Detections]) -> Detections:
    if not parts:
        return Detections.empty()
    boxes = np.concatenate([part.boxes for part in parts]).astype(np.float32)
    scores = np.concatenate([part.scores for part in parts]).astype(np.float32)
    return Detections(boxes, scores)


def _distinct(parts: list[Detections], iou: float = 0.5) -> Detections:
    """The faces any of ``parts`` found, one box per face: boxes of different looks that
    overlap by the evaluation's IoU are the same face."""
    joined = _joined(parts)
    if len(joined) == 0:
        return joined
    keep = nms(torch.from_numpy(joined.boxes), torch.from_numpy(joined.scores), iou).numpy()
    return Detections(joined.boxes[keep], joined.scores[keep])


def format_table(evaluation: Evaluation, ensemble: set[str]) -> str:
    """The per-detector table, ensemble first, then transfer."""
    lines = []
    header = f"{'detector':<16} {'clean faces':>11} {'still found':>11} {'hide rate':>9}"
    for title, members in (
        ("attacked (in the ensemble)", [n for n in evaluation.scores if n in ensemble]),
        ("transfer (not in the ensemble)", [n for n in evaluation.scores if n not in ensemble]),
    ):
        if not members:
            continue
        lines += [title, header]
        for name in members:
            score = evaluation.scores[name]
            rate = "n/a" if score.hide_rate is None else f"{100 * score.hide_rate:.1f} %"
            lines.append(f"{name:<16} {score.clean_faces:>11} {score.still_found:>11} {rate:>9}")
        lines.append("")
    lines += _tool_lines(evaluation, ensemble)
    finite = [value for value in evaluation.psnr if np.isfinite(value)]
    mean_psnr = f"{np.mean(finite):.2f} dB" if finite else "n/a (identical)"
    lines.append(
        f"{evaluation.pairs} image pairs; mean PSNR {mean_psnr}; "
        f"mean SSIM {np.mean(evaluation.ssim):.4f}"
    )
    return "\n".join(lines)


def _tool_lines(evaluation: Evaluation, ensemble: set[str]) -> list[str]:
    """The per-tool table, then a note for each tool some of whose detectors were left out."""
    if not evaluation.tools:
        return []
    width = max(len("tool"), *(len(t.profile.title) for t in evaluation.tools.values()))
    lines = [
        "tools (their detectors after their own resize, at their own threshold)",
        f"{'tool':<{width}} {'clean faces':>11} {'still found':>11} {'hide rate':>9}  status",
    ]
    notes = []
    for tool in evaluation.tools.values():
        faces = tool.faces
        rate = "n/a" if faces.hide_rate is None else f"{100 * faces.hide_rate:.1f} %"
        lines.append(
            f"{tool.profile.title:<{width}} {faces.clean_faces:>11} {faces.still_found:>11} "
            f"{rate:>9}  {tool.status(ensemble)}"
        )
        if tool.missing:
            notes.append(f"{tool.profile.title}: without {', '.join(tool.missing)} (no weights)")
    return [*lines, *notes, ""]
