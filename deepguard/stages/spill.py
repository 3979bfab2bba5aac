"""The perturbation of every written frame, kept on disk while a clip is protected.

The check of the written file can find a face on a frame that passed its own lone-frame
check: inside the clip most frames are P or B frames, quantised differently. Repairing that
frame means encoding the clip again with every other frame exactly as before, so each frame's
perturbation must outlive the chunk that made it. Keeping them in memory would grow with the
clip; here each one is the bounding box of the frame's nonzero difference to the clean frame,
as int8, zlib-compressed, appended to one file. Only a small index stays in memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class _Record:
    offset: int
    length: int
    box: tuple[int, int, int, int]  # y1, y2, x1, x2 of the nonzero difference


class DeltaSpill:
    """Writes per-frame differences ``protected - clean`` (H×W×3) to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._records: dict[int, _Record] = {}
        self._end = 0

    def put(self, index: int, clean: np.ndarray, protected: np.ndarray) -> None:
        """Record frame ``index``'s difference; a later call for the same frame replaces it."""
        difference = protected.astype(np.int16) - clean.astype(np.int16)
        if np.abs(difference).max(initial=0) > 127:
            raise ValueError(f"frame {index}: a perturbation beyond ±127 levels")
        rows = np.flatnonzero(difference.any(axis=(1, 2)))
        columns = np.flatnonzero(difference.any(axis=(0, 2)))
        box = (0, 0, 0, 0)
        if rows.size:
            box = (int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1)
        y1, y2, x1, x2 = box
        data = zlib.compress(difference[y1:y2, x1:x2].astype(np.int8).tobytes(), 1)
        self._file.write(data)
        self._records[index] = _Record(self._end, len(data), box)
        self._end += len(data)

    def finish(self) -> SpilledDeltas:
        """Close the file and hand over what readers in other processes need."""
        self._file.close()
        return SpilledDeltas(self.path, dict(self._records))

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class SpilledDeltas:
    """The finished spill: picklable (a path and the index), read by any process."""

    path: Path
    records: dict[int, _Record]

    def __len__(self) -> int:
        return len(self.records)

    def apply(self, index: int, clean: np.ndarray) -> np.ndarray:
        """Frame ``index`` as it was written: ``clean`` plus its recorded difference."""
        record = self.records[index]
        y1, y2, x1, x2 = record.box
        out = clean.copy()
        if y2 > y1:
            with self.path.open("rb") as handle:
                handle.seek(record.offset)
                data = zlib.decompress(handle.read(record.length))
            difference = np.frombuffer(data, np.int8).reshape(y2 - y1, x2 - x1, clean.shape[2])
            region = out[y1:y2, x1:x2].astype(np.int16) + difference
            out[y1:y2, x1:x2] = np.clip(region, 0, 255).astype(np.uint8)
        return out

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
