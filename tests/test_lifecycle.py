"""A job's life as an operator sees it: the CLI, the watch folder and the dashboard stopped
by SIGTERM (``kill``, ``docker stop``) or killed with SIGKILL, as real processes.

SIGTERM must clean up as Ctrl-C does: exit code 143, no partial file, the job cancelled, and
a local Ray cluster stopped with every one of its processes. SIGKILL cannot be caught: the
next command that opens the job store marks the dead process's job failed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from deepguard.pipeline.jobs import Job, JobState, JobStore
from tests.media import make_clip
from tests.processes import QUICK, deepguard, environment, start_deepguard

#: a long attack on a small photo: cheap per step, and still running when the signal comes
LONG = ["--detectors", "yunet", "--tools", "none", "--iterations", "300", "--epsilon", "1"]


@pytest.fixture
def photo(media_dir: Path, tmp_path: Path) -> Path:
    image = Image.open(media_dir / "lp_s42.jpg").convert("RGB")
    image.thumbnail((128, 128))
    path = tmp_path / "in" / "photo.jpg"
    path.parent.mkdir()
    image.save(path, quality=95)
    return path


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """``start_deepguard``, with whatever is left running at the end killed (a failed test
    must not leave a dashboard or a Ray cluster behind)."""
    started: list[subprocess.Popen] = []

    def start(*args: str | Path, env: dict[str, str]) -> subprocess.Popen:
        started.append(start_deepguard(*args, env=env))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            leftovers = psutil.Process(process.pid).children(recursive=True)
            process.kill()
            process.wait()
            _still_running(leftovers)


def _wait_for(condition: Callable[[], object], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"ended ({process.returncode}) before {what}: "
                                 f"{process.stderr.read()[-2000:]}")  # fmt: skip
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.2)


def _job(data_dir: Path) -> Job | None:
    db = data_dir / "jobs.sqlite3"
    jobs = JobStore(db).list() if db.exists() else []
    return jobs[0] if jobs else None


def _attacking(data_dir: Path) -> bool:
    job = _job(data_dir)
    return job is not None and job.state is JobState.RUNNING and job.progress > 0


def _stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> list[psutil.Process]:
    """Send ``signum`` and wait for the process to end; returns its descendants (a local Ray
    cluster) as they were just before."""
    descendants = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signum)
    process.wait(timeout=240)
    return descendants


def _still_running(processes: list[psutil.Process]) -> list[str]:
    """Those of ``processes`` alive after a grace time (Ray's agents exit a moment after the
    raylet when it stops cleanly; stranded, they linger for a minute)."""
    _, alive = psutil.wait_procs(processes, timeout=20)
    names = [f"{p.name()} ({p.pid})" for p in alive]
    for process in alive:  # do not leave them to the next test
        process.kill()
    return names


def test_sigterm_stops_a_photo_job_as_ctrl_c_does(tmp_path, photo, spawn):
    data, output = tmp_path / "data", tmp_path / "out" / "photo.jpg"
    process = spawn("protect", photo, "-o", output, "-q", *LONG, env=environment(data))
    _wait_for(lambda: _attacking(data), process, "the attack")
    _stop(process)
    assert process.returncode == 128 + signal.SIGTERM
    assert "terminated" in process.stderr.read()
    assert not output.parent.exists() or list(output.parent.iterdir()) == []
    job = _job(data)
    assert job.state is JobState.CANCELLED and "SIGTERM" in job.error


def test_a_job_killed_with_sigkill_is_failed_by_the_next_command(tmp_path, photo, spawn):
    data, output = tmp_path / "data", tmp_path / "out" / "photo.jpg"
    process = spawn("protect", photo, "-o", output, "-q", *LONG, env=environment(data))
    _wait_for(lambda: _attacking(data), process, "the attack")
    _stop(process, signal.SIGKILL)
    import sqlite3

    with sqlite3.connect(data / "jobs.sqlite3") as db:  # as the kill left it
        assert db.execute("SELECT state FROM jobs").fetchall() == [("running",)]
    cleanup = deepguard("cleanup", env=environment(data))  # any command that opens the store
    assert cleanup.returncode == 0, cleanup.stderr
    job = _job(data)
    assert job.state is JobState.FAILED and job.error.startswith("interrupted")


def test_sigterm_stops_the_watch_folder_and_leaves_the_input_to_redo(tmp_path, photo, spawn):
    data, in_dir, out_dir = tmp_path / "data", photo.parent, tmp_path / "out"
    env = environment(data, DEEPGUARD_WATCH_STABLE_SECONDS="0")
    process = spawn("watch", in_dir, out_dir, "--interval", "0.2", *LONG, env=env)
    _wait_for(lambda: _attacking(data), process, "the attack")
    _stop(process)
    assert process.returncode == 128 + signal.SIGTERM
    job = _job(data)
    assert job.state is JobState.CANCELLED and "watch folder stopped" in job.error
    assert photo.exists() and list(out_dir.iterdir()) == []  # redone at the next start


@pytest.mark.slow
def test_sigterm_during_a_video_cleans_up_and_stops_its_ray_cluster(tmp_path, videos_dir, spawn):
    clip = make_clip(videos_dir / "lp_d11.mp4", tmp_path / "clip.mp4", 48, size=(160, 160))
    data, output = tmp_path / "data", tmp_path / "out" / "clip.mp4"
    process = spawn("protect", clip, "-o", output, "-q", *QUICK, env=environment(data))
    _wait_for(lambda: _attacking(data), process, "the first frames written")
    assert list(output.parent.glob(".*.part"))
    ray = _stop(process)
    assert process.returncode == 128 + signal.SIGTERM, process.stderr.read()[-2000:]
    assert list(output.parent.iterdir()) == []
    assert _job(data).state is JobState.CANCELLED
    assert ray and _still_running(ray) == []


@pytest.mark.slow
def test_sigterm_stops_serve_its_running_job_and_its_ray_cluster(tmp_path, photo, spawn):
    port, data = free_port(), tmp_path / "data"
    process = spawn("serve", env=environment(data, PORT=str(port)))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        _wait_for(lambda: _answers(client), process, "the dashboard")

        def job(**options) -> str:
            octets = {"content-type": "application/octet-stream"}
            upload = client.post("/api/uploads", params={"name": "photo.jpg"},
                                 content=photo.read_bytes(), headers=octets).json()  # fmt: skip
            options = {"upload_id": upload["id"], "detectors": ["yunet"], "tools": [], **options}
            created = client.post("/api/jobs", json=options).json()
            assert "id" in created, created
            return created["id"]

        def state(job_id: str) -> dict:
            return client.get(f"/api/jobs/{job_id}").json()

        first = job(iterations=1)
        _wait_for(lambda: state(first)["state"] == "done", process, "the first job's end")
        second = job(iterations=200, epsilon=1)
        attacking = lambda: state(second)["progress"]["fraction"] > 0  # noqa: E731
        _wait_for(attacking, process, "the second job's attack")
    ray = _stop(process)
    assert process.returncode == 128 + signal.SIGTERM
    assert JobStore(data / "jobs.sqlite3").get(second).state is JobState.CANCELLED
    assert ray and _still_running(ray) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/api/health").status_code == 200
    except httpx.TransportError:
        return False
