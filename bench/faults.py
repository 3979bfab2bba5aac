"""Fault injection: ``kill -9`` at each point of a job's life, then a restart; nothing is lost.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/faults.py \
        [--watch-trials 3] [--cli-trials 2]

Each trial runs the real CLI in its own folders, with ``DEEPGUARD_FAULT_POINT`` naming the
point (see ``deepguard/faults.py``) so the process sends itself SIGKILL there, then runs the
same command again without it:

- watch: one to three small photos in IN, ``deepguard watch IN OUT --once`` (killed during
  its first job), then ``deepguard watch IN OUT --once`` again;
- cli: the same photos, ``deepguard protect IN -o OUT`` (killed during the first), then the
  same command again.

After the restart every input must be protected exactly once (one output each, the watch
folder's input in ``IN/done``), OUT must hold no partial or duplicate file, and the job store
no job still queued or running. Prints the trials per point and the four counts. The attack
is the cheapest the CLI offers (YuNet alone, native size, one iteration): the job's life, not
protection, is under test.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from deepguard.faults import FAULT_POINTS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "media" / "images"
PHOTOS = ("lp_s42.jpg", "lp_s0.jpg", "lp_s12.jpg")
QUICK = ["--detectors", "yunet", "--tools", "none", "--iterations", "1"]
#: the points each kind of job passes (a CLI job moves no input)
POINTS = {"watch": FAULT_POINTS, "cli": FAULT_POINTS[:-1]}


@dataclass
class Outcome:
    """What one trial left behind after the restart."""

    kind: str
    point: str
    killed: bool  # the first run died of SIGKILL at the point
    lost: int = 0  # inputs with no output, or (watch) not moved to IN/done
    duplicates: int = 0  # outputs beyond one per input
    partials: int = 0  # hidden temporary files left in OUT
    stuck: int = 0  # jobs still queued or running in the store
    problems: list[str] = field(default_factory=list)


def small_photo(name: str, target: Path) -> Path:
    image = Image.open(SHARED / name).convert("RGB")
    image.thumbnail((128, 128))
    image.save(target, quality=95)
    return target


def deepguard(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepguard.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def environment(folder: Path, point: str | None) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "DEEPGUARD_DATA_DIR": str(folder / "data"),
           "DEEPGUARD_WATCH_STABLE_SECONDS": "0", "DEEPGUARD_WATCH_CONCURRENCY": "1"}  # fmt: skip
    env.pop("DEEPGUARD_JOB_DB", None)
    env.pop("DEEPGUARD_FAULT_POINT", None)
    if point:
        env["DEEPGUARD_FAULT_POINT"] = point
    return env


def unfinished_jobs(db: Path) -> int:
    """Jobs queued or running, read straight from the file (opening a JobStore would settle
    them: the count must show what the restarted command left)."""
    with sqlite3.connect(db) as connection:
        query = "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"
        return connection.execute(query).fetchone()[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_trial(kind: str, point: str, folder: Path, inputs: int = 1) -> Outcome:
    """One trial of ``kind`` (``watch`` or ``cli``) killed at ``point``, in ``folder``."""
    in_dir, out_dir = folder / "in", folder / "out"
    in_dir.mkdir(parents=True)
    sources = [small_photo(PHOTOS[i], in_dir / f"w{i + 1}.jpg") for i in range(inputs)]
    contents = {digest(path): path.name for path in sources}
    if kind == "watch":
        command = ["watch", str(in_dir), str(out_dir), "--once", *QUICK]
    else:
        command = ["protect", str(in_dir), "-o", str(out_dir), "-q", *QUICK]
    first = deepguard(command, environment(folder, point))
    outcome = Outcome(kind, point, killed=first.returncode == -signal.SIGKILL)
    if not outcome.killed:
        outcome.problems.append(f"first run ended with {first.returncode}: {first.stderr[-300:]}")
    second = deepguard(command, environment(folder, None))
    if second.returncode != 0:
        outcome.problems.append(f"restart ended with {second.returncode}: {second.stderr[-300:]}")
    outputs = [p for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    outcome.partials = sum(1 for p in out_dir.iterdir() if p.name.startswith("."))
    outcome.duplicates = max(0, len(outputs) - len(sources))
    outcome.lost = max(0, len(sources) - len(outputs))
    if kind == "watch":  # every original moved to done/, unchanged, and nothing failed
        done = in_dir / "done"
        moved = {digest(p) for p in done.iterdir()} if done.is_dir() else set()
        outcome.lost += sum(1 for content in contents if content not in moved)
        failed = in_dir / "failed"
        if failed.is_dir() and any(failed.iterdir()):
            outcome.problems.append(f"failed/: {sorted(p.name for p in failed.iterdir())}")
    outcome.stuck = unfinished_jobs(folder / "data" / "jobs.sqlite3")
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watch-trials", type=int, default=3, help="trials per watch point")
    parser.add_argument("--cli-trials", type=int, default=2, help="trials per CLI point")
    args = parser.parse_args()
    plan = [("watch", point, n) for point in POINTS["watch"] for n in range(args.watch_trials)]
    plan += [("cli", point, n) for point in POINTS["cli"] for n in range(args.cli_trials)]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="dg-faults-") as scratch:
        for index, (kind, point, n) in enumerate(plan):
            folder = Path(scratch) / f"{index:02d}-{kind}-{point}"
            outcome = run_trial(kind, point, folder, inputs=1 + n % len(PHOTOS))
            outcomes.append(outcome)
            print(f"{kind:5} {point:20} killed={outcome.killed} lost={outcome.lost} "
                  f"duplicates={outcome.duplicates} partials={outcome.partials} "
                  f"stuck={outcome.stuck} {'; '.join(outcome.problems)}", flush=True)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
    per_point = Counter(f"{o.kind} {o.point}" for o in outcomes if o.killed)
    print("\nkill -9 trials per point:")
    for name, count in per_point.items():
        print(f"  {name:26} {count}")
    print(f"trials {len(outcomes)}, killed at the point {sum(per_point.values())}; "
          f"inputs lost {sum(o.lost for o in outcomes)}, "
          f"duplicates {sum(o.duplicates for o in outcomes)}, "
          f"partials {sum(o.partials for o in outcomes)}, "
          f"stuck jobs {sum(o.stuck for o in outcomes)}, "
          f"other problems {sum(len(o.problems) for o in outcomes)}")  # fmt: skip


if __name__ == "__main__":
    main()
