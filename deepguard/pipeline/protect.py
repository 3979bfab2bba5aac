"""Protect one file end to end, plus the JSON processing report: this module chooses the path.

A photo runs decode → poison → remux in this process (:mod:`deepguard.pipeline.photo`) or,
for the dashboard, in a Ray actor (:mod:`deepguard.pipeline.image`); a video runs the same
stages (with tracking, scene cuts and smoothing) as Ray actors (:mod:`deepguard.pipeline.video`).
The dependencies run one way: this module → the drivers → the actors → the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepguard.attack.config import AttackConfig
from deepguard.faults import fault_point
from deepguard.fileio import remove_stale_partials
from deepguard.models.catalogue import present as present_tool_detectors
from deepguard.pipeline.photo import PhotoProtector, ProtectOptions
from deepguard.progress import Progress
from deepguard.settings import Settings, get_settings
from deepguard.stages.poison import PoisonStage
from deepguard.stages.video_io import VIDEO_SUFFIXES

__all__ = ["ProtectOptions", "Protector"]


class Protector:
    """Keeps one loaded ensemble for many files (a folder, the watch folder, a worker)."""

    def __init__(
        self, config: AttackConfig, settings: Settings | None = None, images_on_ray: bool = False
    ) -> None:
        """``images_on_ray``: images too go to the Ray cluster (the dashboard's choice; the
        CLI and the watch folder protect images in their own process)."""
        self.settings = settings or get_settings()
        gpu = self.settings.resolved_device().startswith("cuda")
        self.config = config.with_default_precision(self.settings.precision).with_tool_weights(
            present_tool_detectors(), gpu
        )
        self.images_on_ray = images_on_ray
        self.photos = PhotoProtector(self.config, self.settings)

    @property
    def poison(self) -> PoisonStage:
        """The in-process ensemble for photos, loaded on first use (videos use Ray actors)."""
        return self.photos.poison

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
        return self.photos.protect(source_path, output_path, options, progress)


def _marking_mid_attack(progress: Progress | None) -> Progress:
    """``progress``, which also passes the ``mid_attack`` fault point once the attack (an
    image's iterations, a video's poisoned frames) has begun."""

    def report(phase: str, done: int, total: int) -> None:
        if done and phase in ("attack", "poison"):
            fault_point("mid_attack")
        if progress:
            progress(phase, done, total)

    return report
