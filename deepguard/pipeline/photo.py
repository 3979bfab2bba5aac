"""Protect one photo in this process: decode → poison → encode, its report, then the file.

The CLI and the watch folder protect photos here; the dashboard runs the same class inside
a Ray actor (:class:`~deepguard.pipeline.actors.ImageActor`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepguard import __version__
from deepguard.attack.config import AttackConfig
from deepguard.attack.core import AttackResult, Progress
from deepguard.attack.face_report import epsilon_summary, face_rows
from deepguard.attack.metrics import psnr, ssim
from deepguard.attack.optimiser import BACKWARD_KINDS
from deepguard.attack.tool_report import tallies_of, tool_summary
from deepguard.fileio import write_atomically
from deepguard.models.registry import get_spec
from deepguard.settings import Settings
from deepguard.stages.decode import open_source
from deepguard.stages.poison import PoisonStage
from deepguard.stages.remux import ImageSink


@dataclass
class ProtectOptions:
    keep_metadata: bool = False
    report_path: Path | None = None


class PhotoProtector:
    """Keeps one loaded ensemble for many photos."""

    def __init__(self, config: AttackConfig, settings: Settings) -> None:
        self.settings = settings
        self.config = config
        self._poison: PoisonStage | None = None

    @property
    def poison(self) -> PoisonStage:
        """The ensemble, loaded on first use."""
        if self._poison is None:
            self._poison = PoisonStage(self.config, device=self.settings.resolved_device())
        return self._poison

    def protect(
        self,
        source_path: Path,
        output_path: Path,
        options: ProtectOptions,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Protect the photo ``source_path`` into ``output_path``; returns the report."""
        started = time.perf_counter()
        source = open_source(source_path, self.settings.max_image_pixels)
        sink = ImageSink(
            output_path, source.still, self.config.output_jpeg_quality, options.keep_metadata
        )
        decoded = time.perf_counter()
        (chunk,) = source.chunks()
        result = self.poison.protect_frames(
            chunk.frames, roundtrip=sink.roundtrip, progress=progress, codec=sink.codec
        )
        poisoned = time.perf_counter()
        data, protected = sink.encode(result.frames)
        encoded = time.perf_counter()
        # everything that could still fail runs before the file is written
        tools, report_passes = self._tool_rows(chunk.frames, protected, result)
        passes = Counter(result.passes_by_kind) + Counter({"report": report_passes})
        checked = time.perf_counter()
        clean = chunk.frames[0]
        faces = result.faces[0] or []
        rungs = result.rungs[0] if result.rungs else []
        report = {
            "deepguard": __version__,
            "input": str(source_path),
            "output": str(output_path),
            "kind": source.kind,
            "size": {"width": int(clean.shape[1]), "height": int(clean.shape[0])},
            "parameters": self.config.model_dump(mode="json"),
            "weights": self._weight_digests(),
            # the faces protected (found on the clean input): boxes in its pixels, the ε each
            # got, its crop's quality, and per delivery whom it is protected against
            "faces": face_rows(faces, rungs, clean, result.frames[0], protected, tools),
            "epsilon": epsilon_summary(rungs, self.config.epsilon),
            "delivery": list(self.config.deliver),
            "detectors": {
                name: {
                    "faces_before": sum(result.faces_before[name]),
                    "faces_after": sum(result.faces_after.get(name, [0])),
                }
                for name in result.faces_before
            },
            "hidden": result.hidden,
            "protected": _protected(tools),
            "tools": tools,
            "psnr_db": _finite(psnr(clean, protected)),
            "ssim": round(ssim(clean, protected), 4),
            "iterations": result.iterations,
            "repair_rounds": result.repair_rounds,
            # every detector pass, by kind; those with a backward (attack, retry, importance)
            # cost about twice a forward-only one (faces, check, shrink, report)
            "detector_passes": sum(passes.values()),
            "detector_passes_by_kind": dict(passes),
            "detector_passes_backward": sum(passes[kind] for kind in BACKWARD_KINDS),
            "device": str(self.poison.attack.device),
            "precision": result.precision,
            # out-of-memory fallbacks taken to finish (each also logged as a warning)
            "memory_fallbacks": result.fallbacks,
            "timings_s": {
                "decode": round(decoded - started, 3),
                **{key: round(value, 3) for key, value in result.timings.items()},
                "poison": round(poisoned - decoded, 3),
                "encode": round(encoded - poisoned, 3),
                "tools": round(checked - encoded, 3),
                "total": round(checked - started, 3),
            },
        }
        if options.report_path:
            write_atomically(options.report_path, json.dumps(report, indent=2).encode())
        try:
            sink.save(data)
        except BaseException:
            if options.report_path:  # no report of an output that was not written
                options.report_path.unlink(missing_ok=True)
            raise
        return report

    def _tool_rows(
        self, clean: np.ndarray, protected: np.ndarray, result: AttackResult
    ) -> tuple[list[dict], int]:
        """Per tool profile and delivery chain, the protected faces it finds before → after,
        and whether the file protects against it; and the detector passes this took.

        The ensemble's looks were judged by the attack on the very pixels of the file (its
        round-trip is the sink's encoder); the tools' detectors outside the ensemble are run
        here on the clean input and on the saved file, through the same chains."""
        attack = self.poison.attack
        faces = result.faces
        before, after = result.before, result.after
        passes = 0
        if before is None or after is None:  # no face: nothing was judged
            before = after = attack.judge(clean, faces)
            passes += before.passes
        uncovered = (
            attack.judge_uncovered(clean, faces),
            attack.judge_uncovered(protected[None], faces),
        )
        passes += sum(verdict.passes for verdict in uncovered)
        before, after = before.merge(uncovered[0]), after.merge(uncovered[1])
        tallies = tallies_of(before, after, [p.name for p in attack.profiles])
        return tool_summary(attack.profiles, attack.table, tallies), passes

    def _weight_digests(self) -> dict[str, str | None]:
        return {
            file.name: file.sha256
            for name in self.config.detectors
            for file in get_spec(name).files
        }


def _protected(tools: list[dict]) -> bool:
    """Every covered tool misses every protected face on every delivery (one that found no
    face on the clean input has nothing to miss)."""
    return all(row["status"] in ("protected", "no faces found", "not covered") for row in tools)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an untouched image reports PSNR as null."""
    return round(value, 2) if value != float("inf") else None
