"""Honest evaluation: how many faces each detector still finds on protected files.

Ground truth is each detector's own detections on the clean image at its published threshold
(as in the FacePoison paper); a clean face counts as still found when a detection on the
protected image overlaps it with IoU ≥ 0.5. Detectors outside the attack ensemble are reported
separately: that is transfer, the known hard part of this method.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepguard.attack.core import jpeg_roundtrip_uint8
from deepguard.attack.metrics import faces_still_found, psnr, ssim
from deepguard.errors import InputError
from deepguard.models.base import FaceDetector
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
class Evaluation:
    pairs: int = 0
    scores: dict[str, DetectorScore] = field(default_factory=dict)
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
) -> Evaluation:
    result = Evaluation(scores={d.name: DetectorScore() for d in detectors})
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
    return result


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
    finite = [value for value in evaluation.psnr if np.isfinite(value)]
    mean_psnr = f"{np.mean(finite):.2f} dB" if finite else "n/a (identical)"
    lines.append(
        f"{evaluation.pairs} image pairs; mean PSNR {mean_psnr}; "
        f"mean SSIM {np.mean(evaluation.ssim):.4f}"
    )
    return "\n".join(lines)
