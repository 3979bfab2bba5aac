"""Per-tool counts for reports: covered and report-only looks merged; uncounted tools null."""

from __future__ import annotations

import numpy as np
import torch

from deepguard.attack.core import AttackResult
from deepguard.attack.profiles import ToolProfile
from deepguard.attack.tool_counts import most_per_tool
from deepguard.attack.verification import tool_summary
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
    rows = {row["tool"]: row for row in tool_summary(profiles, ["retinaface"], before, after)}
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
