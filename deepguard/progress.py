"""Progress records shared by the attack, the pipeline, the CLI and the dashboard.

A progress callback receives ``(phase, done, total)``. Whole phases are named after the
pipeline stages ("decode", "attack", "remux", ...). The attack also reports each detector:
``loss:<name>`` (percent of its score loss removed so far, of 100) while iterating, and
``faces:<name>`` (faces still found, of the faces found before) after each verification.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
DETAIL_SEPARATOR = ":"
#: the phases of a video job, in pipeline order (an image job has "attack" only)
VIDEO_STAGES = ("decode", "scenecut", "track", "poison", "smooth", "remux", "verify")


def detector_phase(kind: str, detector: str) -> str:
    """The phase name of a per-detector record, e.g. ``faces:retinaface``."""
    return f"{kind}{DETAIL_SEPARATOR}{detector}"


def split_phase(phase: str) -> tuple[str, str | None]:
    """``faces:retinaface`` → (``faces``, ``retinaface``); ``attack`` → (``attack``, None)."""
    kind, _, detector = phase.partition(DETAIL_SEPARATOR)
    return kind, detector or None
