"""Protect one file end to end, plus the JSON processing report.

An image runs decode → poison → remux in this process; a video runs the same stages (with
tracking, scene cuts and smoothing) as Ray actors, see :mod:`deepguard.pipeline.video`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepguard import __version__
from deepguard.attack.config import AttackConfig
from deepguard.attack.core import AttackResult, Progress
from deepguard.attack.metrics import psnr, ssim
from deepguard.attack.tool_counts import with_uncovered
from deepguard.attack.verification import tool_summary
from deepguard.faults import fault_point
from deepguard.fileio import remove_stale_partials, write_atomically
from deepguard.models.registry import get_spec
from deepguard.settings import Settings, get_settings
from deepguard.stages.decode import open_source
from deepguard.stages.poison import PoisonStage
from deepguard.stages.remux import ImageSink
from deepguard.stages.video_io import VIDEO_SUFFIXES


@dataclass
class ProtectOptions:
    keep_metadata: bool = False
    report_path: Path | None = None


class Protector:
    """Keeps one loaded ensemble for many files (a folder, the watch folder, a worker)."""

    def __init__(
        self, config: AttackConfig, settings: Settings | None = None, images_on_ray: bool = False
    ) -> None:
        """``images_on_ray``: images too go to the Ray cluster (the dashboard's choice; the
        CLI and the watch folder protect images in their own process)."""
        self.settings = settings or get_settings()
        self.config = config.with_default_precision(self.settings.precision)
        self.images_on_ray = images_on_ray
        self._poison: PoisonStage | None = None

    @property
    def poison(self) -> PoisonStage:
        """The in-process ensemble for images, loaded on first use (videos use Ray actors)."""
        if self._poison is None:
            self._poison = PoisonStage(self.config, device=self.settings.resolved_device())
        return self._poison

    def protect(
        self,
        source_path: Path,
        output_path: Path,
        options: ProtectOptions | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Protect ``source_path`` into ``output_path``; returns the processing report."""
        options = options or ProtectOptions()
        fault_point("before_attack")
        # what an earlier, killed attempt at this output left behind
        remove_stale_partials(output_path.parent, output_path.name)
        progress = _marking_mid_attack(progress)
        if source_path.suffix.lower() in VIDEO_SUFFIXES:
            from deepguard.pipeline.video import VideoProtector  # imports Ray: only for video

            video = VideoProtector(self.config, self.settings)
            return video.protect(source_path, output_path, options.report_path, progress)
        if self.images_on_ray:
            from deepguard.pipeline.image import protect_image_on_ray  # imports Ray

            return protect_image_on_ray(self.config, self.settings, source_path, output_path,
                                        options.report_path, progress)  # fmt: skip
        started = time.perf_counter()
        source = open_source(source_path, self.settings.max_image_pixels)
        sink = ImageSink(
            output_path, source.still, self.config.output_jpeg_quality, options.keep_metadata
        )
        decoded = time.perf_counter()
        (chunk,) = source.chunks()
        result = self.poison.protect_frames(
            chunk.frames, roundtrip=sink.roundtrip, progress=progress
        )
        poisoned = time.perf_counter()
        data, protected = sink.encode(result.frames)
        encoded = time.perf_counter()
        # everything that could still fail runs before the file is written
        tools = self._tool_rows(chunk.frames, protected, result)
        checked = time.perf_counter()
        clean = chunk.frames[0]
        report = {
            "deepguard": __version__,
            "input": str(source_path),
            "output": str(output_path),
            "kind": source.kind,
            "size": {"width": int(clean.shape[1]), "height": int(clean.shape[0])},
            "parameters": self.config.model_dump(mode="json"),
            "weights": self._weight_digests(),
            "detectors": {
                name: {
                    "faces_before": sum(result.faces_before[name]),
                    "faces_after": sum(result.faces_after[name]),
                }
                for name in result.faces_before
            },
            "hidden": result.hidden,
            "tools": tools,
            "psnr_db": _finite(psnr(clean, protected)),
            "ssim": round(ssim(clean, protected), 4),
            "iterations": result.iterations,
            "repair_rounds": result.repair_rounds,
            "detector_passes": result.passes,
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
    ) -> list[dict]:
        """Per tool profile, faces before → after and whether the file protects against it.

        The ensemble's looks were counted by the attack on the very pixels of the file (its
        round-trip is the sink's encoder); the tools' detectors outside the ensemble are run
        here on the clean frame and on the file as saved and re-compressed."""
        attack = self.poison.attack
        versions = attack.delivered(protected[None], None)
        before = with_uncovered(attack, result.tools_before, [clean])
        after = with_uncovered(attack, result.tools_after, versions)
        return tool_summary(attack.profiles, attack.table, before, after)

    def _weight_digests(self) -> dict[str, str | None]:
        return {
            file.name: file.sha256
            for name in self.config.detectors
            for file in get_spec(name).files
        }


def _marking_mid_attack(progress: Progress | None) -> Progress:
    """``progress``, which also passes the ``mid_attack`` fault point once the attack (an
    image's iterations, a video's poisoned frames) has begun."""

    def report(phase: str, done: int, total: int) -> None:
        if done and phase in ("attack", "poison"):
            fault_point("mid_attack")
        if progress:
            progress(phase, done, total)

    return report


def _finite(value: float) -> float | None:
    """JSON has no infinity: an untouched image reports PSNR as null."""
    return round(value, 2) if value != float("inf") else None
