"""Submission through the Ray Jobs API to a real head started with ``ray start --head``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from deepguard.errors import DeepguardError
from deepguard.pipeline.submit import job_client, job_rows, submit, submit_job, wait
from tests.processes import stop_ray_cluster
from tests.test_video_pipeline import free_port

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def dashboard_address():
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}  # jobs run `deepguard`
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="dg-ray-")
    ray.shutdown()
    subprocess.run(
        [str(venv_bin / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        check=True, capture_output=True, timeout=180, env=env,
    )  # fmt: skip
    yield f"http://127.0.0.1:{dashboard}"
    stop_ray_cluster(temp_dir, port)  # this cluster only: not every Ray of the machine


def _small_face(media_dir: Path, target: Path) -> Path:
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    image.thumbnail((160, 160))
    image.save(target, quality=95)
    return target


def test_two_jobs_run_to_completion_on_the_cluster(dashboard_address, media_dir, tmp_path):
    client = job_client(dashboard_address)
    inputs = [_small_face(media_dir, tmp_path / f"face{i}.jpg") for i in range(2)]
    # the job mechanics: a quick YuNet attack judged at native size
    submissions = submit(client, inputs, tmp_path / "out", ["--detectors", "yunet",
                                                            "--iterations", "4",
                                                            "--tools", "none"])  # fmt: skip
    statuses = wait(client, [s.job_id for s in submissions], timeout_s=600)
    logs = {s.job_id: client.get_job_logs(s.job_id) for s in submissions}
    assert set(statuses.values()) == {"SUCCEEDED"}, logs
    for item in submissions:
        assert item.output.exists() and item.report.exists()
        assert '"faces_after": 0' in item.report.read_text()
    listed = {row["id"] for row in job_rows(client)}
    assert {s.job_id for s in submissions} <= listed


def test_unreachable_jobs_api_is_a_clear_error():
    with pytest.raises(DeepguardError, match="cannot reach the Ray Jobs API"):
        job_client(f"http://127.0.0.1:{free_port()}")


def test_submission_waits_for_the_job_agent_of_a_fresh_head():
    class FreshHead:  # the Jobs API's answers while the head's job agent starts up
        def __init__(self, refusals: int) -> None:
            self.refusals = refusals

        def submit_job(self, **job) -> str:
            if self.refusals:
                self.refusals -= 1
                raise RuntimeError(
                    "Request failed with status code 500: No available agent to submit job, "
                    "please try again later.."
                )
            return "raysubmit_1"

    assert submit_job(FreshHead(refusals=2), entrypoint="true") == "raysubmit_1"
    with pytest.raises(RuntimeError, match="No available agent"):  # not forever
        submit_job(FreshHead(refusals=10), agent_wait_s=0.5, entrypoint="true")


def test_cancelled_job_stops_and_leaves_no_output(dashboard_address, videos_dir, tmp_path):
    from deepguard.cli import main
    from tests.media import make_clip

    clip = make_clip(videos_dir / "lp_d11.mp4", tmp_path / "talk.mp4", 40, size=(256, 256))
    client = job_client(dashboard_address)
    (item,) = submit(client, [clip], tmp_path / "out")
    deadline = time.monotonic() + 120
    while str(client.get_job_status(item.job_id).value) != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    assert main(["jobs", "--address", dashboard_address, "cancel", item.job_id]) == 0
    assert wait(client, [item.job_id], timeout_s=120)[item.job_id] == "STOPPED"
    assert not item.output.exists() and not list((tmp_path / "out").glob("*"))  # no partials
    assert main(["jobs", "--address", dashboard_address, "list"]) == 0
