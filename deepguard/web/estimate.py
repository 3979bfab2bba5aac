"""How long a job will take, before it starts: input size × recent throughput.

Work is counted in units of megapixels × frames × detectors × iterations, which is what the
attack's cost scales with. The rate is the median seconds per unit of this server's recent
jobs of the same kind; until there are any, a first guess measured on a 2-core CPU (see the
README's results) is used, divided by 20 on a GPU.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from deepguard.attack.config import AttackConfig
from deepguard.pipeline.jobs import JobState, JobStore

#: seconds per unit on the 2-core CI CPU: 1080p balanced image 86 s; 512×512 clip 70× real time
_FIRST_GUESS = {"image": 0.87, "video": 0.22}
_GPU_SPEEDUP = 20
_RECENT = 30


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str  # "recent" (this server's recent jobs) or "default" (a first guess)
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "basis": self.basis, "samples": self.samples}


def work_units(width: int, height: int, frames: int, detectors: int, iterations: int) -> float:
    return width * height / 1e6 * max(1, frames) * max(1, detectors) * max(1, iterations)


def _units_of(parameters: dict[str, Any], report: dict[str, Any]) -> float | None:
    if report.get("kind") == "video":
        video = report.get("video", {})
        width, height, frames = video.get("width"), video.get("height"), video.get("frames")
    else:
        size = report.get("size", {})
        width, height, frames = size.get("width"), size.get("height"), 1
    iterations, detectors = parameters.get("iterations"), parameters.get("detectors")
    if not (width and height and frames and iterations and detectors):
        return None
    return work_units(width, height, frames, len(detectors), iterations)


def _seconds_of(report: dict[str, Any]) -> float | None:
    summary = report.get("summary") or {}
    return summary.get("seconds") or report.get("timings_s", {}).get("total")


def recent_rate(store: JobStore, kind: str) -> tuple[float | None, int]:
    """Median seconds per unit over the last finished jobs of ``kind``, and how many."""
    rates = []
    for job in store.list(JobState.DONE, limit=4 * _RECENT):
        if job.kind != kind or not job.report or len(rates) == _RECENT:
            continue
        units, seconds = _units_of(job.parameters, job.report), _seconds_of(job.report)
        if units and seconds:
            rates.append(seconds / units)
    return (statistics.median(rates) if rates else None), len(rates)


def estimate(
    store: JobStore,
    kind: str,
    width: int,
    height: int,
    frames: int,
    config: AttackConfig,
    device: str,
) -> Estimate:
    units = work_units(width, height, frames, len(config.detectors), config.iterations)
    rate, samples = recent_rate(store, kind)
    if rate is not None:
        return Estimate(units * rate, "recent", samples)
    guess = _FIRST_GUESS[kind] / (_GPU_SPEEDUP if device == "cuda" else 1)
    return Estimate(units * guess, "default", 0)
