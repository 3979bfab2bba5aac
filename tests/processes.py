"""Real processes for the job-lifecycle tests: the CLI as an operator runs it, and jobs whose
process was killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the cheapest real protection the CLI offers: YuNet alone, native size, one iteration
QUICK = ["--detectors", "yunet", "--tools", "none", "--iterations", "1"]

_KILLED_JOB = """
import os, signal, sys
from pathlib import Path
from deepguard.pipeline.jobs import JobStore
db, origin, source, output, digest = sys.argv[1:]
store = JobStore(Path(db))
job = store.create(origin, "image", Path(source), Path(output) if output else None, {},
                   digest or None)
store.start(job.id)
print(job.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """This checkout first on the path, its own job store, Ray left to start locally."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "DEEPGUARD_DATA_DIR": str(data_dir)}
    env.pop("DEEPGUARD_JOB_DB", None)
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def deepguard(*args: str | Path, env: dict[str, str], timeout: float = 300):
    """Run ``deepguard ARGS`` to its end; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "deepguard.cli", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start_deepguard(*args: str | Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deepguard.cli", *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def killed_job(
    db: Path, origin: str, source: Path, output: Path | None = None, digest: str = ""
) -> str:
    """A job created and started by a process that was then killed with SIGKILL; its id."""
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_JOB, str(db), origin, str(source),
         str(output or ""), digest],
        env=environment(db.parent), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result.stdout.strip()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return int(process.stdout)


def ray_cluster_processes(temp_dir: str, port: int) -> list:
    """The processes of the cluster ``ray start --head --port=PORT --temp-dir=TEMP_DIR`` began:
    those that name its folder or its port, and their children (its workers and agents)."""
    import psutil

    marks = (temp_dir, f":{port}")
    own = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(mark in cmdline for mark in marks) and process.pid != os.getpid():
            own.append(process)
    for process in list(own):
        with contextlib.suppress(psutil.NoSuchProcess):
            own += process.children(recursive=True)
    return list({process.pid: process for process in own}.values())


def stop_ray_cluster(temp_dir: str, port: int, timeout: float = 30) -> None:
    """End that cluster, and only it. ``ray stop --force`` ends every Ray process on the
    machine: a clip being protected beside the test suite died with "Raylet is terminated"."""
    import psutil

    processes = ray_cluster_processes(temp_dir, port)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
