"""Per-tool report rows: which protected faces each tool finds, before and after, per delivery.

A photo's verdicts (:class:`~deepguard.attack.verification.Verdict`) hold every look's
detections on every chain's copy; :func:`tallies_of` reads one tool's share of them: the
protected faces it found on the clean copy, those it still finds on the protected one (which
faces, by index), and its other detections, which fail nothing. A clip's frames are counted
per frame (:data:`ToolCounts`) and summed into the same tallies.

A tool whose detectors are not all attacked is "not covered", whatever its figures say; one
that found no face on the clean input has nothing to protect; one with no figures at all was
not looked at (none of its detectors could be loaded): its faces are null, not a 0 that would
read as "none found".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from deepguard.attack.profiles import ToolProfile
from deepguard.attack.verification import Verdict, keep_most

#: faces per tool, per frame
ToolCounts = dict[str, list[int]]


@dataclass
class Tally:
    """One tool on one delivered copy: protected faces it finds on the clean copy and on the
    protected one (with their indices, per frame), and its other detections."""

    faces_before: int
    faces_after: int
    found: list[list[int]] = field(default_factory=list)
    others: int = 0


def tallies_of(
    before: Verdict, after: Verdict, tools: Iterable[str]
) -> dict[str, dict[str, Tally]]:
    """tool → chain → its tally, for every chain ``after`` was judged on."""
    tallies: dict[str, dict[str, Tally]] = {}
    known = set(before.tools()) | set(after.tools())
    for tool in tools:
        if tool not in known:
            continue
        per_chain = {}
        for chain in after.chains:
            clean = before.tool(tool, chain) if chain in before.found else []
            protected = after.tool(tool, chain)
            per_chain[chain] = Tally(
                faces_before=sum(len(f.faces) for f in clean),
                faces_after=sum(len(f.faces) for f in protected),
                found=[sorted(f.faces) for f in protected],
                others=sum(f.others for f in protected),
            )
        tallies[tool] = per_chain
    return tallies


def tallies_of_counts(
    before: Mapping[str, Sequence[int]], after: Mapping[str, Sequence[int]], chain: str
) -> dict[str, dict[str, Tally]]:
    """The same from per-frame counts (a clip's rows), on one chain."""
    return {
        tool: {chain: Tally(sum(before[tool]), sum(after.get(tool, [])))}
        for tool in before
        if tool in after
    }


def tool_summary(
    profiles: Sequence[ToolProfile],
    attacked: Iterable[str],
    tallies: Mapping[str, Mapping[str, Tally]],
) -> list[dict]:
    """One report row per tool: faces before → after (the worst delivery), per delivery the
    faces found and the other detections, and whether the result protects against it."""
    attacked = set(attacked)
    rows = []
    for profile in profiles:
        per_chain = tallies.get(profile.name)
        covered = set(profile.detectors) <= attacked
        before = max((t.faces_before for t in per_chain.values()), default=0) if per_chain else None
        after = max((t.faces_after for t in per_chain.values()), default=0) if per_chain else None
        if not covered:
            status = "not covered"
        elif not before:
            status = "no faces found"
        else:
            status = "protected" if after == 0 else "not protected"
        rows.append(
            {
                "tool": profile.name,
                "title": profile.title,
                "detectors": list(profile.detectors),
                "resize": profile.describe_resize(),
                "threshold": profile.threshold,
                "runs": profile.runs,
                "stand_in": profile.stand_in,
                # "own weights" where the tool's own detector file judged it, else its stand-in
                "weights": profile.weights or ("stand-in" if profile.stand_in else "own weights"),
                "covered": covered,
                "faces_before": before,
                "faces_after": after,
                "deliveries": {
                    chain: {
                        "faces_before": tally.faces_before,
                        "faces_after": tally.faces_after,
                        "faces_found": tally.found,
                        "other_detections": tally.others,
                    }
                    for chain, tally in (per_chain or {}).items()
                },
                "status": status,
            }
        )
    return rows


def most_per_tool(*tables: Mapping[str, Sequence[int]]) -> ToolCounts:
    """Per tool and frame, the most faces found in any of ``tables``."""
    merged: ToolCounts = {}
    for table in tables:
        for tool, per_frame in table.items():
            keep_most(merged, tool, list(per_frame))
    return merged
