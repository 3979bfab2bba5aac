"""The watch folder: protect every image or clip dropped into a folder, exactly once.

A file is picked up only when it is complete: its size and modification time have held for
``watch_stable_seconds`` across two scans. Each input is keyed by the sha256 of its content,
so a file dropped twice (or again after a restart) is not protected twice. The original moves
to ``IN/done/`` after its output landed atomically in ``OUT/``, or to ``IN/failed/`` next to
an ``.error.json`` saying why; a failed file whose content changes afterwards (the rest of a
slow copy arrived) is tried again.

A crash or ``kill -9`` can stop a job anywhere. The job store marks it failed ("interrupted")
once its process is gone, and the original is still in ``IN``: at the next scan it is redone,
unless its output had already landed, in which case the job is completed instead. Temporary
files a killed job left in ``OUT`` are deleted at start. Stopping the folder (Ctrl-C,
SIGTERM) cancels the running jobs at their next progress report and leaves their inputs in
``IN``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from deepguard.errors import DeepguardError
from deepguard.faults import fault_point
from deepguard.fileio import remove_stale_partials, write_atomically
from deepguard.pipeline.jobs import Cancelled, Job, JobState, JobStore, TrackedJob, error_message
from deepguard.pipeline.metrics import Metrics
from deepguard.pipeline.protect import ProtectOptions, Protector
from deepguard.pipeline.retention import cleanup
from deepguard.settings import Settings
from deepguard.stages.image_io import IMAGE_SUFFIXES
from deepguard.stages.video_io import VIDEO_SUFFIXES

log = logging.getLogger(__name__)
SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def move_unique(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` without overwriting anything already there."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    counter = 1
    while target.exists():
        target = folder / f"{path.stem}.{counter}{path.suffix}"
        counter += 1
    shutil.move(path, target)
    return target


class WatchFolder:
    """Polls ``in_dir``; one :meth:`poll` is one scan, :meth:`run` loops until stopped."""

    def __init__(
        self, in_dir: Path, out_dir: Path, protector: Protector, store: JobStore,
        settings: Settings, metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.in_dir, self.out_dir = in_dir, out_dir
        self.protector = protector
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.done_dir, self.failed_dir = in_dir / "done", in_dir / "failed"
        self._seen: dict[Path, tuple[int, float, float]] = {}  # size, mtime, first seen
        self._busy: dict[Path, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=settings.watch_concurrency)
        self._stop = threading.Event()
        for job in store.recover_interrupted(origin="watch"):
            log.warning("job %s for %s was interrupted; its input will be redone", job.id,
                        job.input)  # fmt: skip
        for path in remove_stale_partials(out_dir):
            log.warning("removed %s, left by a job that was killed", path.name)

    def candidates(self) -> list[Path]:
        """Files that may be inputs: supported types, not hidden (partial copies often are)."""
        if not self.in_dir.is_dir():
            raise DeepguardError(f"{self.in_dir}: watch folder does not exist")
        return sorted(
            p for p in self.in_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
        )  # fmt: skip

    def ready(self, path: Path, now: float) -> bool:
        """Complete once size and mtime held still for the configured time."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        key = (stat.st_size, stat.st_mtime)
        previous = self._seen.get(path)
        if previous is None or previous[:2] != key:
            self._seen[path] = (*key, now)
            return False
        stable_since = max(previous[2], stat.st_mtime)
        return stat.st_size > 0 and now - stable_since >= self.settings.watch_stable_seconds

    def poll(self, wait: bool = False) -> list[Future]:
        """Start work on every complete file; with ``wait``, also wait for it to finish."""
        now = time.time()
        self._busy = {p: f for p, f in self._busy.items() if not f.done()}
        self._retry_changed_failures(now)
        started = []
        for path in self.candidates():
            if path in self._busy or not self.ready(path, now):
                continue
            self._seen.pop(path, None)
            future = self._pool.submit(self.process, path)
            self._busy[path] = future
            started.append(future)
        if wait:
            for future in started:
                future.result()
        return started

    def process(self, path: Path) -> Job | None:
        """Protect one complete input; never raises (the outcome is in the store and, on
        failure, in an ``.error.json`` beside the original in ``failed/``)."""
        try:
            digest = content_hash(path)
        except FileNotFoundError:
            log.warning("%s vanished before it could be read", path.name)
            return None
        previous = self.store.find_done(digest)
        if previous is not None:
            log.info("%s: same content as job %s, already protected", path.name, previous.id)
            move_unique(path, self.done_dir)
            return previous
        landed = self._landed_before_a_crash(digest)
        if landed is not None:
            log.warning("%s: job %s was interrupted after its output %s landed; completed",
                        path.name, landed.id, landed.output)  # fmt: skip
            move_unique(path, self.done_dir)
            return landed
        output = self._output_path(path, digest)
        parameters = self.protector.config.model_dump(mode="json")
        tracked = TrackedJob.new(self.store, "watch", path, output, parameters, digest)

        def progress(stage: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise Cancelled("cancelled: the watch folder stopped")
            tracked.progress(stage, done, total)

        try:
            with tracked:
                tracked.report = self.protector.protect(path, output, ProtectOptions(), progress)
        except Exception as error:  # every failure is recorded, none stops the folder
            message = error_message(error)
            if self.metrics:
                self.metrics.job_failed(error)
            # the original (if it still exists) and the reason end up side by side
            moved = move_unique(path, self.failed_dir) if path.exists() else None
            where = moved or self.failed_dir / path.name
            record = {"job": tracked.job.id, "input": path.name, "error": message,
                      "time": time.time(), "sha256": digest}  # fmt: skip
            if moved:  # how the file looked: a later change means it may be whole now
                record.update(_file_state(moved))
            write_atomically(_error_record(where), json.dumps(record, indent=2).encode())
            log.error("%s failed: %s", path.name, message)
            return tracked.job
        if self.metrics:
            self.metrics.job_done(tracked.report)
        fault_point("before_input_move")
        move_unique(path, self.done_dir)
        log.info("%s protected → %s", path.name, output)
        return tracked.job

    def _landed_before_a_crash(self, digest: str) -> Job | None:
        """A job for this content that was interrupted after its output landed (killed between
        the rename and the store update): marked done rather than redone, which would leave a
        second copy under another name. An output another job has since claimed is not it."""
        for job in self.store.find_interrupted(digest):
            output = Path(job.output or "")
            if job.origin == "watch" and output.parent == self.out_dir and output.is_file():
                self.store.finish(job.id, JobState.DONE, output=output)
                return self.store.get(job.id)
        return None

    def _retry_changed_failures(self, now: float) -> None:
        """Move back to ``IN`` the failed files whose content changed since they failed: a slow
        copy that paused longer than the stable time was taken half-written, and the rest of
        it landed in ``failed/``."""
        if not self.failed_dir.is_dir():
            return
        for path in sorted(self.failed_dir.iterdir()):
            record_path = _error_record(path)
            if path.suffix.lower() not in SUFFIXES or not record_path.is_file():
                continue
            try:
                record = json.loads(record_path.read_text())
            except (OSError, ValueError):
                continue
            if "sha256" not in record or _file_state(path) == {k: record.get(k) for k in _STATE}:
                continue
            if not self.ready(path, now):  # still being written: wait until it holds still
                continue
            self._seen.pop(path, None)
            if content_hash(path) == record["sha256"]:  # touched, not changed: note the new state
                record |= _file_state(path)
                write_atomically(record_path, json.dumps(record, indent=2).encode())
                continue
            retried = move_unique(path, self.in_dir)
            record_path.unlink(missing_ok=True)
            log.info("%s changed since it failed; trying it again as %s", path.name, retried.name)

    def _output_path(self, path: Path, digest: str) -> Path:
        """``OUT/NAME``; a different file of the same name gets the content hash appended."""
        output = self.out_dir / path.name
        if output.exists():
            output = self.out_dir / f"{path.stem}.{digest[:8]}{path.suffix}"
        return output

    def run(self, interval_s: float = 1.0, cleanup_every_s: float = 3600.0) -> None:
        """Scan until :meth:`stop` (or Ctrl-C); apply retention once an hour meanwhile."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        next_cleanup = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_cleanup:
                    result = cleanup(self.settings, self.store)
                    log.info("retention: %s", result)
                    next_cleanup = time.monotonic() + cleanup_every_s
                self.poll()
                self._stop.wait(interval_s)
        finally:
            self.close()

    def stop(self) -> None:
        """Scan no more; running jobs are cancelled at their next progress report."""
        self._stop.set()

    def close(self) -> None:
        """Stop, and wait until the running jobs have ended (their inputs stay in ``IN``)."""
        self.stop()
        self._pool.shutdown(wait=True)


#: what :func:`_file_state` records
_STATE = ("size", "mtime_ns")


def _file_state(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _error_record(path: Path) -> Path:
    """``failed/NAME.error.json`` beside ``failed/NAME``."""
    return path.with_name(path.name + ".error.json")
