"""Protect one image on the Ray cluster: how the dashboard sends photos to the GPU workers.

The CLI and the watch folder protect images in their own process. The dashboard is a small
service in front of the cluster, so it hands each photo to an :class:`ImageActor` placed by
Ray (on a share of a GPU when the cluster has any) and relays the actor's progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from deepguard.attack.config import AttackConfig
from deepguard.errors import DeepguardError
from deepguard.pipeline.actors import ImageActor
from deepguard.pipeline.cluster import cluster_device, cluster_devices, connect, get_result
from deepguard.progress import Progress
from deepguard.settings import Settings


def protect_image_on_ray(
    config: AttackConfig,
    settings: Settings,
    source: Path,
    output: Path,
    report_path: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Protect ``source`` into ``output`` in an actor; returns the processing report."""
    connect(settings)
    cpus, gpus = cluster_devices()
    # a photo's attack shares a GPU like a video's poison actors do (DEEPGUARD_GPU_SHARE)
    if cluster_device(settings, gpus) == "cuda":
        resources = {"num_gpus": settings.gpu_share, "num_cpus": 0}
    else:
        resources = {"num_cpus": 1}
    actor = ImageActor.options(**resources).remote(config, settings, max(1, cpus - 1))
    try:
        stream = actor.protect.options(num_returns="streaming").remote(
            str(source), str(output), str(report_path) if report_path else None
        )
        for ref in stream:
            kind, value = get_result(ref)
            if kind == "report":
                return value
            if progress:
                progress(*value)
    finally:
        ray.kill(actor)
    raise DeepguardError("the image worker ended without a result")
