"""Retention: uploads and results are deleted after a day; the last reports are archived.

Photos and clips of people are personal data, so nothing is kept longer than it must be. The
processing reports (JSON, no pixels) of the most recent jobs stay in ``archive/`` for support
and audit. Runs periodically inside the service and as ``deepguard cleanup`` for cron.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from deepguard.fileio import write_atomically
from deepguard.pipeline.jobs import FINAL_STATES, JobStore
from deepguard.settings import Settings

#: the folders under DEEPGUARD_DATA_DIR that hold people's media
MEDIA_FOLDERS = ("uploads", "results")


@dataclass
class CleanupResult:
    deleted_files: int
    freed_bytes: int
    archived_reports: int
    pruned_reports: int


def cleanup(
    settings: Settings, store: JobStore | None = None, now: float | None = None
) -> CleanupResult:
    """Delete media older than the retention time; archive the newest reports."""
    now = time.time() if now is None else now
    cutoff = now - settings.retention_hours * 3600
    deleted = freed = 0
    for folder in MEDIA_FOLDERS:
        root = settings.data_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
            if path.is_file() and path.stat().st_mtime < cutoff:
                freed += path.stat().st_size
                path.unlink()
                deleted += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    archived, pruned = _archive_reports(settings, store) if store else (0, 0)
    return CleanupResult(deleted, freed, archived, pruned)


def _archive_reports(settings: Settings, store: JobStore) -> tuple[int, int]:
    archive = settings.data_dir / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    keep = [j for j in store.list(limit=10 * settings.archived_reports + 100)
            if j.state in FINAL_STATES][: settings.archived_reports]  # fmt: skip
    wanted = {f"{job.id}.json" for job in keep}
    written = 0
    for job in keep:
        target = archive / f"{job.id}.json"
        if not target.exists():
            record = {**job.summary(), "report": job.report}
            write_atomically(target, json.dumps(record, indent=2).encode())
            written += 1
    pruned = 0
    for path in archive.glob("*.json"):
        if path.name not in wanted:
            path.unlink()
            pruned += 1
    return written, pruned
