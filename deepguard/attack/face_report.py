"""Per-face report rows: the ε each face got, what it costs the face, and whom it hides from.

A face climbs the ε ladder only as far as some covered tool still found it
(:mod:`~deepguard.attack.budget`), so faces in one picture end on different rungs. The report
says per face: the rung (its level, and whether the texture floor was lifted), the largest
change the perturbation makes on it (at most the rung: the L∞ size after the shrink, before
the file's own codec), PSNR and SSIM of the face crop (its box grown by 20 %) on the saved
file, and per delivery the covered tools that still find it and those it is protected
against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from deepguard.attack.budget import Rung
from deepguard.attack.metrics import report_psnr, ssim
from deepguard.attack.verification import Face

#: a face's crop for its quality figures: the box grown by this share of its size
CROP_GROWTH = 0.2


def face_crop(face: Face, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of ``face``'s box grown by :data:`CROP_GROWTH`, inside the picture."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    grow_x, grow_y = (x2 - x1) * CROP_GROWTH / 2, (y2 - y1) * CROP_GROWTH / 2
    left, top = max(0, int(np.floor(x1 - grow_x))), max(0, int(np.floor(y1 - grow_y)))
    right = min(width, max(left + 1, int(np.ceil(x2 + grow_x))))
    bottom = min(height, max(top + 1, int(np.ceil(y2 + grow_y))))
    return slice(top, bottom), slice(left, right)


def face_rows(
    faces: Sequence[Face],
    rungs: Sequence[Rung],
    clean: np.ndarray,
    perturbed: np.ndarray,
    saved: np.ndarray,
    tools: Sequence[dict],
) -> list[dict]:
    """One row per protected face of a photo: ``perturbed`` is the picture before the file's
    codec, ``saved`` the file's pixels; ``tools`` the report's tool rows."""
    rows = []
    height, width = clean.shape[:2]
    for index, (face, rung) in enumerate(zip(faces, rungs, strict=True)):
        rows_slice, cols_slice = face_crop(face, height, width)
        before, after = clean[rows_slice, cols_slice], saved[rows_slice, cols_slice]
        changed = np.abs(before.astype(np.int16) - perturbed[rows_slice, cols_slice])
        rows.append(
            {
                **face.to_report(),
                "epsilon": rung.level,
                "texture_floor_lifted": rung.flat,
                "linf": int(changed.max()) if changed.size else 0,
                "psnr_db": report_psnr(before, after),
                "ssim": round(ssim(before, after), 4),
                "deliveries": _deliveries(index, tools),
            }
        )
    return rows


def _deliveries(index: int, tools: Sequence[dict]) -> dict[str, dict[str, list[str]]]:
    """Per delivery, the covered tools that still find face ``index`` and the others."""
    chains: dict[str, dict[str, list[str]]] = {}
    for row in tools:
        if not row.get("covered"):
            continue
        for chain, tally in row.get("deliveries", {}).items():
            found = any(index in frame for frame in tally.get("faces_found", []))
            entry = chains.setdefault(chain, {"protected_against": [], "found_by": []})
            entry["found_by" if found else "protected_against"].append(row["tool"])
    return chains


def epsilon_summary(rungs: Iterable[Rung], cap: float) -> dict:
    """The ε the faces got, for a report's summary: the range, how many faces ended on each
    rung, how many at the cap and how many with the texture floor lifted."""
    rungs = list(rungs)
    levels = [rung.level for rung in rungs]
    counts = Counter(rung.describe() for rung in sorted(rungs))
    return {
        "min": min(levels, default=None),
        "max": max(levels, default=None),
        "cap": cap,
        "faces": len(rungs),
        "faces_at_cap": sum(level >= cap for level in levels),
        "texture_floor_lifted": sum(rung.flat for rung in rungs),
        "rungs": dict(counts),
    }


def describe_epsilon(summary: dict | None) -> str:
    """For the summary line: "ε 6–12 (3 faces at 12)", "ε 8", or "" when no face."""
    if not summary or summary.get("min") is None:
        return ""
    low, high = summary["min"], summary["max"]
    text = f"ε {low:g}" if low == high else f"ε {low:g}–{high:g}"
    at_cap = summary.get("faces_at_cap", 0)
    if at_cap and summary.get("faces", 0) > 1:
        text += f" ({at_cap} face{'s' if at_cap != 1 else ''} at {summary['cap']:g})"
    return text
