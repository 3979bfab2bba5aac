"""Submission to a Ray cluster through the Ray Jobs API.

Each file becomes one Ray job whose entrypoint is ``deepguard protect`` on the cluster. Inputs
and outputs are paths on storage every node mounts at the same place (a shared filesystem);
the paths are made absolute here, and the job writes its output atomically there.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepguard.errors import DeepguardError
from deepguard.pipeline.cluster import present_token_if_available

#: how a finished Ray job ended
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
#: what the Jobs API answers while a freshly started head's job agent is not up yet
AGENT_NOT_READY = "No available agent to submit job"


@dataclass(frozen=True)
class Submission:
    job_id: str
    input: Path
    output: Path
    report: Path


def job_client(address: str, timeout_s: float = 10.0):
    """A JobSubmissionClient for ``address`` (the dashboard, e.g. http://head:8265), once
    something there has answered HTTP within ``timeout_s`` (the client itself waits forever
    on a server that accepts the connection and says nothing)."""
    from ray.job_submission import JobSubmissionClient

    _check_answers(address, timeout_s)
    present_token_if_available()
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DeepguardError(f"cannot reach the Ray Jobs API at {address}: {error}") from None


def _check_answers(address: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    url = address if "://" in address else f"http://{address}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/version", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it speaks HTTP: the client's own version check says what it is
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError | socket.timeout):
            answer = f"no HTTP answer within {timeout_s:.0f} s"
        else:
            answer = f"nothing answers there ({reason})"
        raise DeepguardError(f"cannot reach the Ray Jobs API at {address}: {answer}") from None


def submit(
    client,
    files: Sequence[Path],
    output_dir: Path | None,
    options: Sequence[str] = (),
) -> list[Submission]:
    """One job per file; outputs go next to each input (or into ``output_dir``)."""
    submissions = []
    for source in files:
        source = source.resolve()
        if not source.is_file():
            raise DeepguardError(f"{source}: no such file")
        folder = (output_dir or source.parent).resolve()
        output = folder / f"{source.stem}.protected{source.suffix}"
        report = folder / f"{source.stem}.protected.json"
        command = ["deepguard", "protect", str(source), "-o", str(output),
                   "--report", str(report), "--quiet", *options]  # fmt: skip
        job_id = submit_job(
            client,
            entrypoint=shlex.join(command),
            metadata={"deepguard": "protect", "input": str(source), "output": str(output)},
        )
        submissions.append(Submission(job_id, source, output, report))
    return submissions


def submit_job(client, agent_wait_s: float = 60.0, **job: Any) -> str:
    """``client.submit_job(**job)``, waiting up to ``agent_wait_s`` for the head's job agent.

    Right after ``ray start --head`` (or on a busy head) the dashboard answers before its job
    agent has registered, and refuses submissions with "try again later"; a queue of files
    should not fail on that.
    """
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if AGENT_NOT_READY not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def wait(client, job_ids: Sequence[str], timeout_s: float | None = None) -> dict[str, str]:
    """Poll until every job has ended; returns each job's final status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    statuses: dict[str, str] = {}
    while True:
        statuses = {job: str(client.get_job_status(job).value) for job in job_ids}
        if all(status in TERMINAL for status in statuses.values()):
            return statuses
        if deadline is not None and time.monotonic() > deadline:
            raise DeepguardError(f"jobs still running after {timeout_s:.0f} s: {statuses}")
        time.sleep(1.0)


def job_rows(client) -> list[dict[str, Any]]:
    """deepguard's jobs on the cluster, newest first."""
    rows = []
    for job in client.list_jobs():
        metadata = job.metadata or {}
        if metadata.get("deepguard") != "protect":
            continue
        rows.append({
            "id": job.submission_id, "status": str(job.status.value),
            "input": metadata.get("input"), "output": metadata.get("output"),
            "start_time": job.start_time, "message": job.message,
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["start_time"] or 0, reverse=True)
