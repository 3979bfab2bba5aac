"""Runs the dashboard's jobs and keeps their live progress.

Each job is created ``queued`` by the API, then marked running and finished through
:class:`~deepguard.pipeline.jobs.TrackedJob`, exactly as the CLI and the watch folder do. A
bounded pool of threads drives the jobs; the work itself, photos and clips alike, runs on the
Ray cluster (local by default, ``RAY_ADDRESS`` otherwise), so this service stays small. Live
detail (each stage, each detector, the ETA) is kept in memory for the WebSocket; the store
gets the overall fraction, so every client of the store sees web jobs too.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepguard.attack.config import AttackConfig
from deepguard.errors import DeepguardError
from deepguard.pipeline.jobs import Cancelled, Job, JobState, JobStore, TrackedJob
from deepguard.pipeline.metrics import Metrics
from deepguard.pipeline.protect import ProtectOptions, Protector
from deepguard.progress import VIDEO_STAGES, split_phase
from deepguard.settings import Settings

log = logging.getLogger(__name__)

#: share of a video job's time spent in each stage (the attack dominates), for one progress bar
_STAGE_WEIGHTS = {stage: 0.05 for stage in VIDEO_STAGES} | {"poison": 0.7}
_STORE_EVERY_S = 0.5


class QueueFull(DeepguardError):
    """More jobs are waiting than DEEPGUARD_WEB_MAX_QUEUE allows."""


@dataclass
class LiveProgress:
    """What a running job has done so far; ``version`` bumps on every change."""

    kind: str
    estimate_s: float | None
    started: float | None = None
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    detectors: dict[str, dict[str, int]] = field(default_factory=dict)
    version: int = 0

    def update(self, phase: str, done: int, total: int) -> None:
        kind, detector = split_phase(phase)
        if detector is None:
            self.phases[kind] = {"done": done, "total": total}
        elif kind == "loss":
            self.detectors.setdefault(detector, {})["loss_removed_pct"] = done
        elif kind == "faces":
            self.detectors.setdefault(detector, {}).update(faces_found=done, faces_before=total)
        self.version += 1

    def fraction(self) -> float:
        if self.kind == "image":
            attack = self.phases.get("attack")
            return min(1.0, attack["done"] / attack["total"]) if attack and attack["total"] else 0
        total = 0.0
        for stage, weight in _STAGE_WEIGHTS.items():
            phase = self.phases.get(stage)
            if phase and phase["total"]:
                total += weight * min(1.0, phase["done"] / phase["total"])
        return total

    def eta_s(self) -> float | None:
        """From the pace so far once there is some; before that, the estimate."""
        if self.started is None:
            return self.estimate_s
        elapsed = time.time() - self.started
        fraction = self.fraction()
        main = self.phases.get("attack" if self.kind == "image" else "poison", {})
        if main.get("done") and fraction >= 0.05:  # decoding alone says little about the pace
            return max(0.0, elapsed * (1 - fraction) / fraction)
        return max(0.0, self.estimate_s - elapsed) if self.estimate_s is not None else None

    def as_dict(self) -> dict[str, Any]:
        eta = self.eta_s()
        return {
            "phases": self.phases,
            "detectors": self.detectors,
            "fraction": round(self.fraction(), 4),
            "eta_s": None if eta is None else round(eta, 1),
        }


class JobRunner:
    """A thread pool of ``web_concurrency`` workers with a bounded queue."""

    def __init__(self, store: JobStore, settings: Settings, metrics: Metrics | None = None):
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(settings.web_concurrency, "deepguard-job")
        self._lock = threading.Lock()
        self._live: dict[str, LiveProgress] = {}
        self._futures: dict[str, Future] = {}
        self._stopping = threading.Event()
        for job in store.recover_interrupted(origin="web"):
            log.warning("web job %s was interrupted by a restart", job.id)
        for job in store.list(JobState.QUEUED, limit=1000):
            if job.origin == "web":  # queued before a restart: nobody is running it any more
                store.finish(job.id, JobState.FAILED, error="interrupted (the service restarted)")

    def submit(self, job: Job, config: AttackConfig, estimate_s: float | None) -> None:
        with self._lock:
            waiting = sum(1 for f in self._futures.values() if not f.running() and not f.done())
            if waiting >= self.settings.web_max_queue:
                raise QueueFull(
                    f"{waiting} jobs are already waiting; try again when one has finished"
                )
            self._live[job.id] = LiveProgress(job.kind, estimate_s)
            future = self._pool.submit(self._run, job.id, config)
            self._futures[job.id] = future
            future.add_done_callback(lambda _f, job_id=job.id: self._forget(job_id))

    def live(self, job_id: str) -> LiveProgress | None:
        with self._lock:
            return self._live.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is running (or unknown)."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is None or not future.cancel():
            return False
        self.store.finish(job_id, JobState.CANCELLED, error="cancelled")
        return True

    def is_active(self, job_id: str) -> bool:
        with self._lock:
            future = self._futures.get(job_id)
        return future is not None and not future.done()

    def shutdown(self) -> None:
        """Cancel the waiting jobs, and the running ones at their next progress report."""
        self._stopping.set()
        with self._lock:
            futures = list(self._futures.items())
        for job_id, future in futures:
            if future.cancel():
                self.store.finish(job_id, JobState.CANCELLED, error="the service stopped")
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._futures.pop(job_id, None)
            self._live.pop(job_id, None)

    def _run(self, job_id: str, config: AttackConfig) -> None:
        job = self.store.get(job_id)
        live = self._live[job_id]
        live.started = time.time()
        tracked = TrackedJob(self.store, job)
        stored = [0.0]

        def progress(phase: str, done: int, total: int) -> None:
            if self._stopping.is_set():
                raise Cancelled("cancelled: the service stopped")
            with self._lock:
                live.update(phase, done, total)
            now = time.monotonic()
            if now - stored[0] >= _STORE_EVERY_S:
                stored[0] = now
                self.store.progress(job_id, live.fraction())

        report_path = Path(job.output).parent / "report.json"
        try:
            with tracked:
                protector = Protector(config, self.settings, images_on_ray=True)
                tracked.report = protector.protect(
                    Path(job.input),
                    Path(job.output),
                    ProtectOptions(report_path=report_path),
                    progress,
                )
        except Exception as error:  # recorded as failed by TrackedJob; the pool must go on
            log.warning("web job %s failed: %s", job_id, error)
            if self.metrics:
                self.metrics.job_failed(error)
            return
        if self.metrics and tracked.report:
            self.metrics.job_done(tracked.report)
