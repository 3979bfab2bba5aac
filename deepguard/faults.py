"""A fault-injection hook for tests: ``kill -9`` at a named point of a job's life.

With ``DEEPGUARD_FAULT_POINT=after_rename`` (say) in its environment, a process sends itself
SIGKILL when it reaches that point, so tests and ``bench/faults.py`` can check what a real
crash there leaves behind. Unset, :func:`fault_point` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

#: the points of a job's life, in order; ``before_input_move`` is the watch folder's only
FAULT_POINTS = (
    "before_attack",  # the job is marked running, no pixel is attacked yet
    "mid_attack",  # the attack (an image's iterations, a video's frames) has begun
    "after_rename",  # the output was just renamed into place
    "before_store_update",  # protection returned; the store does not say done yet
    "before_input_move",  # the store says done; the watch folder's input is still in IN
)
ENVIRONMENT_VARIABLE = "DEEPGUARD_FAULT_POINT"


def fault_point(name: str) -> None:
    """SIGKILL this process if ``DEEPGUARD_FAULT_POINT`` names ``name``."""
    if os.environ.get(ENVIRONMENT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
