"""Prometheus metrics for operators (prometheus-client), served on ``/metrics``.

Counters and histograms are updated as jobs finish; job counts by state and the queue depth
are read from the job store at scrape time, so every process that shares the store reports
the same numbers. CPU use comes from the client's standard process collector; GPU use from
``torch.cuda`` when a GPU is present.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from deepguard.errors import DeepguardError, InputError
from deepguard.pipeline.jobs import JobStore

_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class _StoreCollector:
    """Jobs by state and queue depth, read from the shared job store at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):
        counts = self.store.counts()
        jobs = GaugeMetricFamily("deepguard_jobs", "Jobs in the store by state", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "deepguard_queue_depth", "Jobs waiting to start", value=counts.get("queued", 0)
        )


class Metrics:
    """One registry per service, so tests and several services never collide."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory
        if store is not None:
            self.registry.register(_StoreCollector(store))
        self.processing_seconds = Histogram(
            "deepguard_processing_seconds", "Wall time per protected file", ["kind"],
            buckets=_SECONDS, registry=self.registry,
        )  # fmt: skip
        self.frames = Counter(
            "deepguard_frames_processed", "Frames protected (an image is one)",
            registry=self.registry,
        )  # fmt: skip
        self.fps = Gauge(
            "deepguard_frames_per_second", "Frames per second of the last video",
            registry=self.registry,
        )  # fmt: skip
        self.hide_rate = Gauge(
            "deepguard_hide_rate", "Share of faces hidden in the last job, per detector",
            ["detector"], registry=self.registry,
        )  # fmt: skip
        self.failures = Counter(
            "deepguard_failures", "Failed jobs by reason", ["reason"], registry=self.registry
        )
        # every label value exists from the start at 0, so rate() sees the first event too
        for kind in ("image", "video"):
            self.processing_seconds.labels(kind)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.gpu = Gauge(
            "deepguard_gpu_utilization_percent", "GPU use (0 without a GPU)",
            registry=self.registry,
        )  # fmt: skip
        self.gpu.set_function(_gpu_utilization)

    def job_done(self, report: dict[str, Any]) -> None:
        summary = report.get("summary", report)
        kind = report.get("kind", "image")
        seconds = summary.get("seconds") or report.get("timings_s", {}).get("total", 0.0)
        self.processing_seconds.labels(kind).observe(seconds)
        frames = report.get("video", {}).get("frames", 1)
        self.frames.inc(frames)
        if kind == "video" and seconds:
            self.fps.set(frames / seconds)
        for name, figures in summary["detectors"].items():
            before, after = figures["faces_before"], figures["faces_after"]
            if before:
                self.hide_rate.labels(name).set(1 - after / before)

    def job_failed(self, error: BaseException) -> None:
        self.failures.labels(failure_reason(error)).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)


FAILURE_REASONS = ("input", "storage", "cluster", "internal")


def failure_reason(error: BaseException) -> str:
    """A small, fixed set of label values: input, storage, cluster or internal."""
    if isinstance(error, InputError):
        return "input"
    if isinstance(error, OSError):
        return "storage"
    if isinstance(error, DeepguardError):
        return "cluster" if "ray" in str(error).lower() else "input"
    return "internal"


def _gpu_utilization() -> float:
    try:
        import torch

        return float(torch.cuda.utilization()) if torch.cuda.is_available() else 0.0
    except Exception:  # no NVML: report no use rather than fail the scrape
        return 0.0
