"""Fault injection, a sample of ``bench/faults.py``: the CLI and the watch folder killed with
SIGKILL at points of a job's life (``DEEPGUARD_FAULT_POINT``), then run again. Every input
ends protected exactly once, with no partial or duplicate output and no job left running."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import run_trial


@pytest.mark.parametrize(
    ("kind", "point", "inputs"),
    [("watch", "after_rename", 2), ("watch", "before_input_move", 1), ("cli", "mid_attack", 1)],
)
def test_a_job_killed_at_a_fault_point_ends_done_once(
    kind: str, point: str, inputs: int, tmp_path: Path, media_dir: Path
) -> None:
    outcome = run_trial(kind, point, tmp_path / "trial", inputs)
    assert outcome.killed and outcome.problems == []
    assert (outcome.lost, outcome.duplicates, outcome.partials, outcome.stuck) == (0, 0, 0, 0)
