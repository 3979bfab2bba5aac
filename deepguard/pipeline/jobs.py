"""The job store: every protection job, whatever started it, in one SQLite file.

The CLI, the watch folder and the dashboard share it. SQLite in WAL mode lets one writer and
many readers work at once; each call opens its own connection, so threads never share one.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from deepguard.errors import DeepguardError
from deepguard.stages.video_io import VIDEO_SUFFIXES


def new_job_id() -> str:
    """122 random bits as 32 hex digits: one user cannot guess another's job."""
    return uuid.uuid4().hex


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,             -- cli, watch, web or submit
    kind TEXT NOT NULL,               -- image or video
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    content_hash TEXT,
    parameters TEXT NOT NULL DEFAULT '{}',
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    report TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_hash ON jobs (content_hash, state);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""


@dataclass(frozen=True)
class Job:
    id: str
    origin: str
    kind: str
    state: JobState
    input: str
    output: str | None
    content_hash: str | None
    parameters: dict[str, Any]
    progress: float
    error: str | None
    report: dict[str, Any] | None
    created: float
    started: float | None
    finished: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["state"] = JobState(data["state"])
        data["parameters"] = json.loads(data["parameters"] or "{}")
        data["report"] = json.loads(data["report"]) if data["report"] else None
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The job without its (large) report, for listings and the API."""
        fields = {k: v for k, v in self.__dict__.items() if k != "report"}
        return {**fields, "state": self.state.value}


class JobStore:
    """A small repository over the ``jobs`` table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def create(
        self,
        origin: str,
        kind: str,
        source: Path,
        output: Path | None = None,
        parameters: dict[str, Any] | None = None,
        content_hash: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        job_id = job_id or new_job_id()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, origin, kind, state, input, output, content_hash,"
                " parameters, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, origin, kind, JobState.QUEUED.value, str(source),
                 str(output) if output else None, content_hash,
                 json.dumps(parameters or {}), time.time()),
            )  # fmt: skip
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return Job.from_row(row)

    def list(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        query, args = "SELECT * FROM jobs", ()
        if state is not None:
            query, args = query + " WHERE state = ?", (state.value,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created DESC LIMIT ?", (*args, limit))
            return [Job.from_row(row) for row in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state.value: 0 for state in JobState} | {row[0]: row[1] for row in rows}

    def find_done(self, content_hash: str) -> Job | None:
        """A finished job for the same content: the watch folder never does work twice."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE content_hash = ? AND state = ? LIMIT 1",
                (content_hash, JobState.DONE.value),
            ).fetchone()
        return Job.from_row(row) if row else None

    def start(self, job_id: str) -> None:
        self._update(job_id, state=JobState.RUNNING.value, started=time.time())

    def progress(self, job_id: str, fraction: float) -> None:
        self._update(job_id, progress=max(0.0, min(1.0, fraction)))

    def finish(
        self,
        job_id: str,
        state: JobState,
        error: str | None = None,
        report: dict[str, Any] | None = None,
        output: Path | None = None,
    ) -> None:
        changes: dict[str, Any] = {"state": state.value, "finished": time.time(), "error": error}
        if state is JobState.DONE:
            changes["progress"] = 1.0
        if report is not None:
            changes["report"] = json.dumps(report)
        if output is not None:
            changes["output"] = str(output)
        self._update(job_id, **changes)

    def recover_interrupted(self, origin: str | None = None) -> list[Job]:
        """Jobs left ``running`` by a crash or kill: marked failed, so they can be redone."""
        with self._connect() as db:
            query = "SELECT * FROM jobs WHERE state = ?"
            args: tuple = (JobState.RUNNING.value,)
            if origin:
                query, args = query + " AND origin = ?", (*args, origin)
            jobs = [Job.from_row(row) for row in db.execute(query, args).fetchall()]
        for job in jobs:
            self.finish(job.id, JobState.FAILED, error="interrupted (the service stopped)")
        return jobs

    def delete(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def _update(self, job_id: str, **changes: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*changes.values(), job_id))


def error_message(error: BaseException) -> str:
    """What a user reads: our own errors as they are, anything else with its type."""
    return str(error) if isinstance(error, DeepguardError) else repr(error)


class TrackedJob:
    """A job recorded in the store while its ``with`` block runs.

    Entering marks it running; leaving records done (with ``report``), cancelled on
    Ctrl-C, or failed with the error, which propagates. Progress follows an image's
    iterations or a video's frames.
    """

    def __init__(self, store: JobStore, job: Job) -> None:
        self.store = store
        self.job = job
        self.output = Path(job.output) if job.output else None
        self.report: dict[str, Any] | None = None

    @classmethod
    def new(cls, store: JobStore, origin: str, source: Path, output: Path,
            parameters: dict[str, Any], content_hash: str | None = None) -> TrackedJob:  # fmt: skip
        """Create the job (kind from the file name) and track it."""
        kind = "video" if source.suffix.lower() in VIDEO_SUFFIXES else "image"
        return cls(store, store.create(origin, kind, source, output, parameters, content_hash))

    def __enter__(self) -> TrackedJob:
        self.store.start(self.job.id)
        return self

    def progress(self, stage: str, done: int, total: int) -> None:
        if total and stage in ("attack", "remux"):
            self.store.progress(self.job.id, done / total)

    def __exit__(self, kind, error, _traceback) -> None:
        if error is None:
            self.store.finish(self.job.id, JobState.DONE, report=self.report, output=self.output)
        elif isinstance(error, KeyboardInterrupt):
            self.store.finish(self.job.id, JobState.CANCELLED, error="cancelled")
        else:
            self.store.finish(self.job.id, JobState.FAILED, error=error_message(error))
        self.job = self.store.get(self.job.id)
