"""The job store: every protection job, whatever started it, in one SQLite file.

The CLI, the watch folder and the dashboard share it. SQLite in WAL mode lets one writer and
many readers work at once; each call opens its own connection, so threads never share one.

Each unfinished job records the process that owns it (host, pid and start time). A process
killed outright cannot record anything, so whoever opens the store next marks the jobs of
owners that no longer run as failed ("interrupted") instead of leaving them running for ever.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from deepguard.errors import DeepguardError
from deepguard.faults import fault_point
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
    finished REAL,
    owner_host TEXT,                  -- the process that runs the job, while it is unfinished
    owner_pid INTEGER,
    owner_started REAL                -- its start time: a reused pid is another process
);
CREATE INDEX IF NOT EXISTS jobs_by_hash ON jobs (content_hash, state);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""
#: the store's schema version (SQLite's ``user_version``): 1 had no owner columns, 2 adds
#: them. A store of a newer version is refused; an older one is migrated when opened.
SCHEMA_VERSION = 2
#: columns added since the first schema, for stores created before them
_ADDED_COLUMNS = {"owner_host": "TEXT", "owner_pid": "INTEGER", "owner_started": "REAL"}
#: how a job whose process died is marked (state failed)
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Owner:
    """The process that runs a job: a pid alone could be reused by another process."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def is_gone(self) -> bool:
        """Whether this process has ended; a process on another host cannot be judged here,
        so it counts as running."""
        if self.host != socket.gethostname():
            return False
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            return not math.isclose(process.create_time(), self.started, abs_tol=0.01)
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:  # someone else's process, alive
            return False


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
        data = {key: value for key, value in dict(row).items() if not key.startswith("owner_")}
        data["state"] = JobState(data["state"])
        data["parameters"] = json.loads(data["parameters"] or "{}")
        data["report"] = json.loads(data["report"]) if data["report"] else None
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The job without its (large) report, for listings and the API."""
        fields = {k: v for k, v in self.__dict__.items() if k != "report"}
        return {**fields, "state": self.state.value}


class JobStore:
    """A small repository over the ``jobs`` table.

    Opening it settles the jobs of processes that died (see :meth:`recover_interrupted`);
    ``recovered`` holds the jobs this opening marked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
        self.recovered = self.recover_interrupted()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the store to :data:`SCHEMA_VERSION` in one transaction (an older store's
        missing columns added, its version raised), or refuse a newer store in one line."""
        db.execute("BEGIN IMMEDIATE")  # one opener at a time migrates
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DeepguardError(
                    f"job store schema {version} is newer than this deepguard supports "
                    f"({SCHEMA_VERSION}): {self.path} was written by a newer deepguard; "
                    "upgrade, or set DEEPGUARD_JOB_DB to another file"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        owner = Owner.current()  # the process that creates a job runs it
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, origin, kind, state, input, output, content_hash,"
                " parameters, created, owner_host, owner_pid, owner_started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, origin, kind, JobState.QUEUED.value, str(source),
                 str(output) if output else None, content_hash,
                 json.dumps(parameters or {}), time.time(),
                 owner.host, owner.pid, owner.started),
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

    def owners(self) -> dict[str, Owner]:
        """The process that runs each unfinished job that names one, by job id."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, owner_host, owner_pid, owner_started FROM jobs"
                " WHERE state IN (?, ?) AND owner_pid IS NOT NULL",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            ).fetchall()
        return {
            row["id"]: Owner(row["owner_host"], row["owner_pid"], row["owner_started"])
            for row in rows
        }

    def find_done(self, content_hash: str) -> Job | None:
        """A finished job for the same content: the watch folder never does work twice."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE content_hash = ? AND state = ? LIMIT 1",
                (content_hash, JobState.DONE.value),
            ).fetchone()
        return Job.from_row(row) if row else None

    def find_interrupted(self, content_hash: str) -> list[Job]:
        """Jobs for the same content whose process died (newest first), each with an output
        path no other live or finished job has claimed since."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs AS job WHERE content_hash = ? AND state = ? AND error LIKE ?"
                " AND output IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs AS other"
                " WHERE other.output = job.output AND other.id != job.id"
                " AND other.state IN (?, ?, ?)) ORDER BY created DESC",
                (content_hash, JobState.FAILED.value, f"{INTERRUPTED}%", JobState.DONE.value,
                 JobState.QUEUED.value, JobState.RUNNING.value),
            ).fetchall()  # fmt: skip
        return [Job.from_row(row) for row in rows]

    def start(self, job_id: str) -> None:
        owner = Owner.current()
        self._update(job_id, state=JobState.RUNNING.value, started=time.time(),
                     owner_host=owner.host, owner_pid=owner.pid,
                     owner_started=owner.started)  # fmt: skip

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
        """Unfinished jobs whose process has ended (a crash, ``kill -9``, a power cut):
        marked failed ("interrupted"), so they can be redone; returns them.

        ``origin`` also takes that origin's running jobs that name no owner (stored by an
        older deepguard): the service that runs them calls this as it starts."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?)",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            ).fetchall()
        interrupted = []
        for row in rows:
            if row["owner_pid"] is None:
                gone = row["origin"] == origin and row["state"] == JobState.RUNNING.value
                reason = f"{INTERRUPTED} (the service stopped)"
            else:
                owner = Owner(row["owner_host"], row["owner_pid"], row["owner_started"])
                gone = owner.is_gone()
                reason = f"{INTERRUPTED} (its process {owner.pid} ended before it finished)"
            if gone and self._finish_unfinished(row["id"], reason):
                interrupted.append(self.get(row["id"]))
        return interrupted

    def _finish_unfinished(self, job_id: str, error: str) -> bool:
        """Mark the job failed unless it has finished meanwhile (two openers may race)."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (JobState.FAILED.value, error, time.time(), job_id,
                 JobState.QUEUED.value, JobState.RUNNING.value),
            )  # fmt: skip
            return cursor.rowcount == 1

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


class Cancelled(KeyboardInterrupt):
    """Raised inside a job to stop it on request: recorded as cancelled, like Ctrl-C, and
    not caught by handlers of ordinary errors."""


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
            fault_point("before_store_update")
            self.store.finish(self.job.id, JobState.DONE, report=self.report, output=self.output)
        elif isinstance(error, KeyboardInterrupt):  # Ctrl-C, SIGTERM or Cancelled
            self.store.finish(self.job.id, JobState.CANCELLED, error=str(error) or "cancelled")
        else:
            self.store.finish(self.job.id, JobState.FAILED, error=error_message(error))
        self.job = self.store.get(self.job.id)
