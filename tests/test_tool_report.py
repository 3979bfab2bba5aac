"""Per-tool report rows: covered and report-only looks merged, per delivery; uncounted tools
null."""

from __future__ import annotations

import numpy as np
import torch

from deepguard.attack.core import AttackResult
from deepguard.attack.profiles import ToolProfile
from deepguard.attack.tool_report import (
    most_per_tool,
    tallies_of,
    tallies_of_counts,
    tool_summary,
)
from deepguard.attack.verification import Face, Look, Verdict
from deepguard.models.base import Detections
from deepguard.stages.poison import _merge


def _profile(name: str, *detectors: str) -> ToolProfile:
    return ToolProfile(name=name, title=name.title(), detectors=detectors)


def test_a_tool_finds_the_most_any_of_its_looks_finds() -> None:
    # FaceFusion with YuNet attacked: YuNet's look no longer finds the face, YOLO5Face's does
    covered = {"facefusion": [0, 0], "wav2lip": [1, 0]}
    outside = {"facefusion": [1, 0], "deepfacelive": [2, 1]}
    assert most_per_tool(covered, outside) == {
        "facefusion": [1, 0], "wav2lip": [1, 0], "deepfacelive": [2, 1]}  # fmt: skip


def test_rows_say_which_tools_are_protected_and_which_were_not_counted() -> None:
    profiles = [
        _profile("faceswap", "retinaface"),
        _profile("wav2lip", "retinaface"),
        _profile("deepfacelive", "yolo5face_n05"),
        _profile("roop", "scrfd_500m"),  # its weights could not be loaded: no counts
        _profile("latentsync", "retinaface"),
    ]
    before = {"faceswap": [1], "wav2lip": [2], "deepfacelive": [1], "latentsync": [0]}
    after = {"faceswap": [0], "wav2lip": [1], "deepfacelive": [1], "latentsync": [0]}
    tallies = tallies_of_counts(before, after, "saved")
    rows = {row["tool"]: row for row in tool_summary(profiles, ["retinaface"], tallies)}
    assert rows["faceswap"]["status"] == "protected"
    assert (rows["wav2lip"]["status"], rows["wav2lip"]["faces_after"]) == ("not protected", 1)
    assert rows["deepfacelive"]["status"] == "not covered"
    assert rows["deepfacelive"]["faces_before"] == 1
    assert rows["roop"]["status"] == "not covered"
    assert rows["roop"]["faces_before"] is rows["roop"]["faces_after"] is None
    assert rows["latentsync"]["status"] == "no faces found"


def test_batches_split_after_out_of_memory_keep_their_tool_counts() -> None:
    def batch(found: list[int]) -> AttackResult:
        frames = len(found)
        return AttackResult(
            frames=np.zeros((frames, 4, 4, 3), np.uint8),
            delta=torch.zeros(frames, 3, 4, 4),
            faces_before={"retinaface": found},
            faces_after={"retinaface": [0] * frames},
            tools_before={"faceswap": found},
            tools_after={"faceswap": [0] * frames},
        )

    merged = _merge([batch([1, 2]), batch([3])], [])
    assert merged.tools_before == {"faceswap": [1, 2, 3]}
    assert merged.tools_after == {"faceswap": [0, 0, 0]}


def test_rows_say_per_delivery_which_faces_a_tool_still_finds() -> None:
    """A tool is protected only when it misses every face on every delivery; its row names
    the faces it still finds on each, and its other detections."""
    faces = [[Face(np.array([[0, 0, 10, 10]], np.float32)),
              Face(np.array([[50, 50, 60, 60]], np.float32))]]  # fmt: skip
    look = Look("scrfd_500m", 0.5, 0.1, False, ("liveportrait",), (0.1,))

    def found(*boxes: list[float]) -> list[Detections]:
        array = np.array(boxes, np.float32).reshape(-1, 4)
        return [Detections(array, np.full(len(array), 0.9, np.float32))]

    both = found([0, 0, 10, 10], [50, 50, 60, 60])
    before = Verdict(faces, {"saved": {look: both}, "sns": {look: both}})
    after = Verdict(faces, {"saved": {look: found([90, 90, 99, 99])},
                            "sns": {look: found([51, 50, 61, 60])}})  # fmt: skip
    rows = tool_summary([_profile("liveportrait", "scrfd_500m")], ["scrfd_500m"],
                        tallies_of(before, after, ["liveportrait"]))  # fmt: skip
    (row,) = rows
    assert row["status"] == "not protected"
    assert (row["faces_before"], row["faces_after"]) == (2, 1)
    assert row["deliveries"]["saved"] == {"faces_before": 2, "faces_after": 0,
                                          "faces_found": [[]], "other_detections": 1}  # fmt: skip
    assert row["deliveries"]["sns"]["faces_found"] == [[1]]
