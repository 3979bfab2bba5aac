"""Honest evaluation: how many of the faces on clean pictures tools still find on protected ones.

Judged per face, as the attack judges itself (:mod:`deepguard.attack.verification`): the
faces are those found on the clean picture (any look, at its threshold, or at 0.5 for lower
ones), and a face is still found when a detection above the threshold overlaps it (IoU ≥
0.3). Every delivery chain is judged on its own copy (:mod:`deepguard.attack.delivery`: the
file as it is, a re-compression, a social network's 1080-pixel JPEG, ...): the clean picture
and the protected file both go through it.

Each detector is scored at native size and its own threshold (those outside the attack
ensemble are transfer, the known hard part of this method); each tool profile
(``configs/tools.yaml``) through its own looks: its detectors after its resize and at its
threshold. A tool whose detectors are not all in the ensemble is "not covered", whatever its
figures say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepguard.attack.delivery import Chain
from deepguard.attack.face_report import face_crop
from deepguard.attack.metrics import psnr, ssim
from deepguard.attack.profiles import ToolProfile
from deepguard.attack.verification import (
    Faces,
    Finding,
    Look,
    Verdict,
    detect_looks,
    plan_looks,
    protected_faces,
)
from deepguard.errors import InputError
from deepguard.models.base import FaceDetector
from deepguard.settings import get_settings
from deepguard.stages.image_io import IMAGE_SUFFIXES, read_image


@dataclass
class FaceScore:
    """Faces found on the clean copies, how many of them are still found on the protected
    ones, and the other detections there (which fail nothing)."""

    clean_faces: int = 0
    still_found: int = 0
    other_detections: int = 0

    @property
    def hide_rate(self) -> float | None:
        if self.clean_faces == 0:
            return None
        return 1 - self.still_found / self.clean_faces

    def add(self, before: Finding, after: Finding) -> None:
        self.clean_faces += len(before.faces)
        self.still_found += len(before.faces & after.faces)
        self.other_detections += after.others


@dataclass
class ToolScore:
    """A tool's faces on one chain; ``missing``: its detectors whose weights are not here
    (left out of its looks)."""

    profile: ToolProfile
    missing: tuple[str, ...] = ()
    faces: FaceScore = field(default_factory=FaceScore)
    #: protected faces it finds on a protected copy that it did not find on the clean one
    new_faces: int = 0

    def status(self, ensemble: set[str]) -> str:
        if not set(self.profile.detectors) <= ensemble:
            return "not covered"
        if self.missing:
            return "not counted"  # a tool is beaten only when every detector it may run is
        if self.faces.clean_faces == 0:
            return "no faces found"
        found = self.faces.still_found + self.new_faces
        return "protected" if found == 0 else "not protected"


@dataclass
class Evaluation:
    """Per chain: each detector's and each tool's score; and the pairs' quality."""

    chains: tuple[str, ...] = ()
    pairs: int = 0
    faces: int = 0
    scores: dict[str, dict[str, FaceScore]] = field(default_factory=dict)
    tools: dict[str, dict[str, ToolScore]] = field(default_factory=dict)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    #: SSIM of every face's crop (its box grown by 20 %): what a viewer looks at first
    face_ssim: list[float] = field(default_factory=list)


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
    chains: Sequence[Chain],
    profiles: Sequence[ToolProfile] = (),
    tool_detectors: Mapping[str, FaceDetector] | None = None,
) -> Evaluation:
    """Score ``detectors`` (natively) and, through ``tool_detectors`` (default:
    ``detectors``), the tools of ``profiles`` on every clean/protected pair and chain."""
    table = {d.name: d for d in detectors}
    table.update(tool_detectors or {})
    result = Evaluation(chains=tuple(chain.name for chain in chains))
    for chain in chains:
        result.scores[chain.name] = {d.name: FaceScore() for d in detectors}
        result.tools[chain.name] = {
            p.name: ToolScore(p, tuple(n for n in p.detectors if n not in table)) for p in profiles
        }
    limit = get_settings().max_image_pixels
    native = [d.name for d in detectors]
    for clean_path, protected_path in pairs:
        clean = read_image(clean_path, limit).rgb
        protected = read_image(protected_path, limit).rgb
        if clean.shape != protected.shape:
            raise InputError(f"{protected_path.name}: size differs from {clean_path.name}")
        result.pairs += 1
        result.psnr.append(psnr(clean, protected))
        result.ssim.append(ssim(clean, protected))

        def looks_for(height: int, width: int) -> list[Look]:
            return plan_looks(table, profiles, height, width, (1.0,), native)

        faces = protected_faces(detect_looks(table, looks_for(*clean.shape[:2]), clean[None]), 1)
        result.faces += len(faces[0] or [])
        for face in faces[0] or []:
            rows, cols = face_crop(face, *clean.shape[:2])
            result.face_ssim.append(ssim(clean[rows, cols], protected[rows, cols]))
        for chain in chains:
            before = _judged(table, looks_for, chain, clean, faces)
            after = _judged(table, looks_for, chain, protected, faces)
            _score(result, chain.name, before, after, native)
    return result


def _judged(table, looks_for, chain: Chain, picture: np.ndarray, faces: Faces) -> Verdict:
    copy = picture if chain.identity else chain.deliver(picture[None])[0]
    scale = copy.shape[1] / picture.shape[1]
    found = detect_looks(table, looks_for(*copy.shape[:2]), copy[None], 1.0, scale)
    return Verdict(faces, {chain.name: found})


def _score(
    result: Evaluation, chain: str, before: Verdict, after: Verdict, native: list[str]
) -> None:
    for look in before.found[chain]:
        if look.native and look.detector in native and look.scale == 1.0:
            # a detector at its own threshold, whichever tools share its native look
            own = Look(look.detector, 1.0, look.threshold, True)
            clean = _at(before, chain, look, own)
            protected = _at(after, chain, look, own)
            result.scores[chain][look.detector].add(clean, protected)
    for name, score in result.tools[chain].items():
        (clean,) = before.tool(name, chain)
        (protected,) = after.tool(name, chain)
        score.faces.add(clean, protected)
        score.new_faces += len(protected.faces - clean.faces)


def _at(verdict: Verdict, chain: str, look: Look, own: Look) -> Finding:
    """What ``look``'s detections find at the detector's own threshold (``own``)."""
    per_frame = verdict.found[chain][look]
    return Verdict(verdict.faces, {chain: {own: per_frame}}).look(own, chain)[0]


def format_table(evaluation: Evaluation, ensemble: set[str]) -> str:
    """Per chain: the detector table (ensemble first, then transfer), then the tool table."""
    lines = []
    header = f"{'detector':<16} {'clean faces':>11} {'still found':>11} {'hide rate':>9}"
    for chain in evaluation.chains:
        lines.append(f"== delivery: {chain}")
        scores = evaluation.scores[chain]
        for title, members in (
            ("attacked (in the ensemble)", [n for n in scores if n in ensemble]),
            ("transfer (not in the ensemble)", [n for n in scores if n not in ensemble]),
        ):
            if not members:
                continue
            lines += [title, header]
            for name in members:
                score = scores[name]
                lines.append(
                    f"{name:<16} {score.clean_faces:>11} {score.still_found:>11} "
                    f"{_rate(score.hide_rate):>9}"
                )
            lines.append("")
        lines += _tool_lines(evaluation.tools[chain], ensemble)
    finite = [value for value in evaluation.psnr if np.isfinite(value)]
    mean_psnr = f"{np.mean(finite):.2f} dB" if finite else "n/a (identical)"
    crops = (
        f"; face crops: SSIM median {np.median(evaluation.face_ssim):.4f} (lowest "
        f"{min(evaluation.face_ssim):.4f})"
        if evaluation.face_ssim
        else ""
    )
    lines.append(
        f"{evaluation.pairs} image pairs, {evaluation.faces} faces; mean PSNR {mean_psnr}; "
        f"mean SSIM {np.mean(evaluation.ssim):.4f}{crops}"
    )
    return "\n".join(lines)


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f} %"


def _tool_lines(tools: dict[str, ToolScore], ensemble: set[str]) -> list[str]:
    """The per-tool table, then a note for each tool some of whose detectors were left out."""
    if not tools:
        return []
    width = max(len("tool"), *(len(t.profile.title) for t in tools.values()))
    lines = [
        "tools (their detectors after their own resize, at their own threshold)",
        f"{'tool':<{width}} {'clean faces':>11} {'still found':>11} {'hide rate':>9} "
        f"{'other det.':>10}  status",
    ]
    notes = []
    for tool in tools.values():
        faces = tool.faces
        lines.append(
            f"{tool.profile.title:<{width}} {faces.clean_faces:>11} {faces.still_found:>11} "
            f"{_rate(faces.hide_rate):>9} {faces.other_detections:>10}  {tool.status(ensemble)}"
        )
        if tool.missing:
            notes.append(f"{tool.profile.title}: without {', '.join(tool.missing)} (no weights)")
    return [*lines, *notes, ""]
