"""Per-tool face counts for reports: the ensemble's own looks and the report-only ones, merged.

The attack counts faces per tool through the ensemble's looks
(:attr:`~deepguard.attack.core.AttackResult.tools_before` and ``tools_after``). A tool whose
detectors are not all in the ensemble is also looked at with the detectors outside it, loaded
for reports only (:meth:`~deepguard.attack.core.FacePoison.judge_uncovered`). One tool may
have looks of both kinds (FaceFusion lets its user pick YuNet or YOLO5Face), so per frame it
finds the most that any of its looks finds: the counts are merged, not one set replacing the
other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from deepguard.attack.core import FacePoison
from deepguard.attack.verification import keep_most

#: faces per tool, per frame
ToolCounts = dict[str, list[int]]


def most_per_tool(*tables: Mapping[str, Sequence[int]]) -> ToolCounts:
    """Per tool and frame, the most faces found in any of ``tables``."""
    merged: ToolCounts = {}
    for table in tables:
        for tool, per_frame in table.items():
            keep_most(merged, tool, list(per_frame))
    return merged


def with_uncovered(
    attack: FacePoison, covered: Mapping[str, Sequence[int]], versions: list[np.ndarray]
) -> ToolCounts:
    """``covered`` (faces the ensemble's looks found) merged with what the tools' detectors
    outside the ensemble find on the worst of ``versions``."""
    return most_per_tool(covered, attack.judge_uncovered(versions).by_tool())
