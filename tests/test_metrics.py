"""Metrics scraped by a real Prometheus server (Debian's package) on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deepguard.errors import InputError
from deepguard.pipeline.jobs import JobState, JobStore
from deepguard.pipeline.metrics import Metrics
from tests.conftest import IN_CI
from tests.test_video_pipeline import free_port

REPORT = {
    "kind": "video",
    "video": {"frames": 50},
    "summary": {
        "seconds": 10.0,
        "detectors": {"retinaface": {"faces_before": 50, "faces_after": 1},
                      "yunet": {"faces_before": 40, "faces_after": 0}},
    },
}  # fmt: skip


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "prometheus not installed (make test installs Debian's package)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def test_prometheus_scrapes_the_service(prometheus_binary: str, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for state in (JobState.DONE, JobState.DONE, JobState.FAILED):
        job = store.create("watch", "video", Path("clip.mp4"))
        store.finish(job.id, state)
    store.create("web", "image", Path("photo.jpg"))  # queued
    metrics = Metrics(store)
    metrics.job_done(REPORT)
    metrics.job_failed(InputError("truncated"))
    service_port, prometheus_port = free_port(), free_port()
    metrics.serve(service_port)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: deepguard\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{service_port}']}}]\n"
    )
    server = subprocess.Popen(
        [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        jobs: list[dict] = []
        while time.monotonic() < deadline and not jobs:
            time.sleep(1)
            try:
                jobs = _query(prometheus_port, 'deepguard_jobs{state="done"}')
            except OSError:
                continue  # not listening yet
        assert jobs and float(jobs[0]["value"][1]) == 2
        assert float(_query(prometheus_port, "deepguard_queue_depth")[0]["value"][1]) == 1
        hide = {r["metric"]["detector"]: float(r["value"][1])
                for r in _query(prometheus_port, "deepguard_hide_rate")}  # fmt: skip
        assert hide == {"retinaface": pytest.approx(0.98), "yunet": 1.0}
        frames = _query(prometheus_port, "deepguard_frames_processed_total")
        assert float(frames[0]["value"][1]) == 50
        failures = _query(prometheus_port, 'deepguard_failures_total{reason="input"}')
        assert float(failures[0]["value"][1]) == 1
        seconds = _query(prometheus_port, 'deepguard_processing_seconds_count{kind="video"}')
        assert float(seconds[0]["value"][1]) == 1
        assert _query(prometheus_port, "process_cpu_seconds_total")
        assert float(_query(prometheus_port, "deepguard_frames_per_second")[0]["value"][1]) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)
