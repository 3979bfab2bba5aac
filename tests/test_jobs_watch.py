"""Job store, watch folder and retention, with real protection of small real images."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from deepguard.attack.config import load_preset
from deepguard.pipeline.jobs import JobState, JobStore
from deepguard.pipeline.protect import Protector
from deepguard.pipeline.retention import cleanup
from deepguard.pipeline.watch import WatchFolder, content_hash
from deepguard.settings import Settings
from tests.processes import dead_pid, killed_job


@pytest.fixture(scope="module")
def protector() -> Protector:
    # the watch folder's mechanics: a quick YuNet attack judged at native size (tools=[])
    config = load_preset("balanced", detectors=["yunet"], iterations=4, epsilon=8, step=2, tools=[])
    return Protector(config.model_copy(update={"repair_rounds": 1}))


@pytest.fixture
def face_jpeg(media_dir: Path, tmp_path: Path) -> Path:
    image = Image.open(media_dir / "lp_s42.jpg").convert("RGB")
    image.thumbnail((192, 192))
    path = tmp_path / "portrait.jpg"
    image.save(path, quality=95)
    return path


def _watch(tmp_path: Path, protector: Protector, store: JobStore | None = None):
    settings = Settings(DEEPGUARD_DATA_DIR=tmp_path / "data", DEEPGUARD_WATCH_STABLE_SECONDS=0)
    store = store or JobStore(tmp_path / "jobs.sqlite3")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir(exist_ok=True)
    return WatchFolder(in_dir, out_dir, protector, store, settings), store


def _drain(watcher: WatchFolder) -> None:
    for _ in range(3):  # the first scan records sizes, later ones find them stable
        watcher.poll(wait=True)


def test_store_round_trip_and_recovery(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.create("cli", "image", Path("a.jpg"), Path("b.jpg"), {"epsilon": 6}, "abc")
    store.start(job.id)
    store.progress(job.id, 0.5)
    assert store.get(job.id).state is JobState.RUNNING and store.get(job.id).progress == 0.5
    # another command opens the store while the job's process (this one) still runs it
    assert JobStore(tmp_path / "jobs.sqlite3").recover_interrupted() == []
    assert store.get(job.id).state is JobState.RUNNING
    killed = killed_job(tmp_path / "jobs.sqlite3", "cli", Path("c.jpg"), Path("d.jpg"), "def")
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # any later command: protect, watch, ...
    again = reopened.get(killed)
    assert again.state is JobState.FAILED and "interrupted" in again.error
    assert reopened.counts()["running"] == 1 and reopened.counts()["failed"] == 1
    assert reopened.find_done("def") is None and reopened.get(job.id).state is JobState.RUNNING


def test_a_store_from_before_owners_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:  # the first schema, one job running
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, origin TEXT NOT NULL, kind TEXT NOT NULL,"
            " state TEXT NOT NULL, input TEXT NOT NULL, output TEXT, content_hash TEXT,"
            " parameters TEXT NOT NULL DEFAULT '{}', progress REAL NOT NULL DEFAULT 0,"
            " error TEXT, report TEXT, created REAL NOT NULL, started REAL, finished REAL)"
        )
        db.execute("INSERT INTO jobs (id, origin, kind, state, input, created) VALUES"
                   " ('old', 'watch', 'image', 'running', 'a.jpg', 0)")  # fmt: skip
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.get("old").state is JobState.RUNNING  # no owner recorded: nobody can judge
    (recovered,) = store.recover_interrupted(origin="watch")  # the watch folder, restarting
    assert recovered.id == "old" and store.get("old").state is JobState.FAILED
    job = store.create("cli", "image", Path("b.jpg"))
    store.start(job.id)
    assert store.get(job.id).state is JobState.RUNNING


def test_watch_protects_once_and_moves_the_original(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    shutil.copy(face_jpeg, watcher.in_dir / "a.jpg")
    _drain(watcher)
    assert (watcher.out_dir / "a.jpg").exists() and (watcher.in_dir / "done" / "a.jpg").exists()
    (job,) = store.list()
    assert job.state is JobState.DONE and job.report["detectors"]["yunet"]["faces_after"] == 0
    # the same content dropped again, under another name: not protected twice
    shutil.copy(face_jpeg, watcher.in_dir / "b.jpg")
    _drain(watcher)
    assert len(store.list()) == 1 and not (watcher.out_dir / "b.jpg").exists()
    assert (watcher.in_dir / "done" / "b.jpg").exists()


def test_partial_and_growing_files_wait(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    hidden = watcher.in_dir / ".a.jpg.part"  # a copy in progress under a temporary name
    hidden.write_bytes(face_jpeg.read_bytes()[:1000])
    growing = watcher.in_dir / "b.jpg"
    growing.write_bytes(face_jpeg.read_bytes()[:1000])
    watcher.poll(wait=True)
    with growing.open("ab") as handle:  # still being written between scans
        handle.write(face_jpeg.read_bytes()[1000:])
    watcher.poll(wait=True)
    assert store.list() == []
    _drain(watcher)
    assert [j.input for j in store.list()] == [str(growing)] and hidden.exists()


def test_failure_goes_to_failed_with_an_error_json(tmp_path, protector):
    watcher, store = _watch(tmp_path, protector)
    (watcher.in_dir / "broken.jpg").write_text("not a picture")
    _drain(watcher)
    (job,) = store.list()
    assert job.state is JobState.FAILED and "broken.jpg" in job.error
    record = json.loads((watcher.in_dir / "failed" / "broken.jpg.error.json").read_text())
    assert record["job"] == job.id and (watcher.in_dir / "failed" / "broken.jpg").exists()
    assert not list(watcher.out_dir.glob("*"))
    later = time.time() + 60  # touched, not changed: still broken, not tried again
    os.utime(watcher.in_dir / "failed" / "broken.jpg", (later, later))
    _drain(watcher)
    assert len(store.list()) == 1 and (watcher.in_dir / "failed" / "broken.jpg").exists()


def test_disk_full_loses_nothing(tmp_path, protector, face_jpeg, monkeypatch):
    watcher, store = _watch(tmp_path, protector)
    shutil.copy(face_jpeg, watcher.in_dir / "a.jpg")

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("deepguard.stages.remux.write_atomically", no_space)
    _drain(watcher)
    (job,) = store.list()
    assert job.state is JobState.FAILED and "No space left" in job.error
    assert (watcher.in_dir / "failed" / "a.jpg").read_bytes() == face_jpeg.read_bytes()
    assert not list(watcher.out_dir.glob("*"))


def test_restart_redoes_an_interrupted_job(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    shutil.copy(face_jpeg, watcher.in_dir / "a.jpg")
    # the process died here, the original is still in IN
    crashed = killed_job(store.path, "watch", watcher.in_dir / "a.jpg", None, "x")
    watcher, store = _watch(tmp_path, protector, JobStore(tmp_path / "jobs.sqlite3"))
    assert store.get(crashed).state is JobState.FAILED
    _drain(watcher)
    assert (watcher.out_dir / "a.jpg").exists()
    assert store.counts()["done"] == 1


def test_vanished_input_is_not_an_error(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    path = watcher.in_dir / "a.jpg"
    shutil.copy(face_jpeg, path)
    path.unlink()
    assert watcher.process(path) is None and store.list() == []


def test_retention_deletes_old_media_and_archives_recent_reports(tmp_path: Path) -> None:
    settings = Settings(DEEPGUARD_DATA_DIR=tmp_path, DEEPGUARD_ARCHIVED_REPORTS=2)
    store = JobStore(tmp_path / "jobs.sqlite3")
    old, new = tmp_path / "uploads" / "old.jpg", tmp_path / "results" / "new.jpg"
    for path in (old, new):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    for index in range(3):
        job = store.create("web", "image", Path(f"{index}.jpg"))
        store.finish(job.id, JobState.DONE, report={"n": index})
    result = cleanup(settings, store)
    assert not old.exists() and new.exists() and result.deleted_files == 1
    archived = sorted((tmp_path / "archive").glob("*.json"))
    assert len(archived) == 2 and result.archived_reports == 2


def test_run_loop_processes_drops_until_stopped(tmp_path, protector, face_jpeg):
    import threading

    watcher, store = _watch(tmp_path, protector)
    thread = threading.Thread(target=watcher.run, kwargs={"interval_s": 0.1}, daemon=True)
    thread.start()
    shutil.copy(face_jpeg, watcher.in_dir / "a.jpg")
    deadline = time.monotonic() + 60
    while not (watcher.in_dir / "done" / "a.jpg").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    watcher.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and (watcher.out_dir / "a.jpg").exists()
    assert store.counts()["done"] == 1


def test_input_vanishing_mid_job_fails_it_clearly(tmp_path, protector, face_jpeg, monkeypatch):
    watcher, _ = _watch(tmp_path, protector)
    path = watcher.in_dir / "a.jpg"
    shutil.copy(face_jpeg, path)

    def hash_then_lose(target: Path) -> str:
        target.unlink()  # deleted by someone else right after it was read
        return "0" * 64

    monkeypatch.setattr("deepguard.pipeline.watch.content_hash", hash_then_lose)
    job = watcher.process(path)
    assert job.state is JobState.FAILED and "no such file" in job.error
    record = json.loads((watcher.in_dir / "failed" / "a.jpg.error.json").read_text())
    assert record["job"] == job.id and not list(watcher.out_dir.glob("*"))


def test_restart_completes_a_job_whose_output_had_landed(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    source, output = watcher.in_dir / "w1.jpg", watcher.out_dir / "w1.jpg"
    shutil.copy(face_jpeg, source)
    # killed after the output's rename, before the store said done
    crashed = killed_job(store.path, "watch", source, output, content_hash(source))
    output.parent.mkdir()
    output.write_bytes(b"the protected picture")
    watcher, store = _watch(tmp_path, protector, JobStore(store.path))
    _drain(watcher)
    assert [p.name for p in watcher.out_dir.iterdir()] == ["w1.jpg"]
    assert output.read_bytes() == b"the protected picture"  # completed, not redone
    assert not source.exists() and (watcher.in_dir / "done" / "w1.jpg").exists()
    assert store.get(crashed).state is JobState.DONE and len(store.list()) == 1


def test_an_output_another_job_claimed_since_is_not_taken_for_landed(
    tmp_path, protector, face_jpeg
):
    watcher, store = _watch(tmp_path, protector)
    source, output = watcher.in_dir / "a.jpg", watcher.out_dir / "a.jpg"
    shutil.copy(face_jpeg, source)
    killed_job(store.path, "watch", source, output, content_hash(source))  # killed mid-attack
    source.unlink()  # the user took it away, and another picture of that name was protected
    other = store.create("watch", "image", source, output, {}, "another picture")
    store.finish(other.id, JobState.DONE, output=output)
    output.parent.mkdir()
    output.write_bytes(b"the other protected picture")
    shutil.copy(face_jpeg, source)  # the first picture dropped again
    watcher, store = _watch(tmp_path, protector, JobStore(store.path))
    _drain(watcher)
    assert len(list(watcher.out_dir.glob("a.*.jpg"))) == 1  # protected now, under its own name
    assert output.read_bytes() == b"the other protected picture"


def test_start_removes_partial_files_a_killed_job_left(tmp_path, protector):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stale = out_dir / f".a.jpg.{dead_pid()}.k3x9_q2z.part"
    live = out_dir / f".b.jpg.{os.getpid()}.ab12cd34.part"  # being written right now
    foreign = out_dir / ".c.jpg.part"  # not of our making
    for path in (stale, live, foreign):
        path.write_bytes(b"half")
    _watch(tmp_path, protector)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_slow_drop_taken_half_written_is_retried_once_complete(tmp_path, protector, face_jpeg):
    watcher, store = _watch(tmp_path, protector)
    data = face_jpeg.read_bytes()
    with (watcher.in_dir / "slow.jpg").open("wb") as copy:
        copy.write(data[: len(data) // 2])
        copy.flush()
        _drain(watcher)  # the copy paused for longer than the stable time
        assert (watcher.in_dir / "failed" / "slow.jpg").exists()
        copy.write(data[len(data) // 2 :])  # the file moved under the writer: lands in failed/
    _drain(watcher)
    assert (watcher.out_dir / "slow.jpg").exists()
    assert (watcher.in_dir / "done" / "slow.jpg").read_bytes() == data
    assert list((watcher.in_dir / "failed").iterdir()) == []
    assert sorted(job.state for job in store.list()) == [JobState.DONE, JobState.FAILED]


def test_protect_removes_what_a_killed_attempt_at_its_output_left(tmp_path, protector, face_jpeg):
    output = tmp_path / "out" / "portrait.jpg"
    output.parent.mkdir()
    stale = output.parent / f".portrait.jpg.{dead_pid()}.x1y2z3w4.part"
    stale.write_bytes(b"half of an earlier attempt")
    protector.protect(face_jpeg, output)
    assert [p.name for p in output.parent.iterdir()] == ["portrait.jpg"]


def test_jobs_lists_the_store_and_marks_the_jobs_of_dead_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deepguard jobs list`` opens the store: a job whose CLI was killed is marked failed
    and named as marked; a job another host runs is shown as that host's, not judged."""
    import sqlite3

    from deepguard.cli import main
    from deepguard.settings import get_settings

    database = tmp_path / "jobs.sqlite3"
    killed = killed_job(database, "cli", Path("c.jpg"), Path("d.jpg"), "")
    store = JobStore(database)
    elsewhere = store.create("watch", "image", Path("e.jpg"), Path("f.jpg"))
    store.start(elsewhere.id)
    with sqlite3.connect(database) as db:  # as if another host's watch folder ran it
        db.execute("UPDATE jobs SET owner_host = 'render-7', owner_pid = 1 WHERE id = ?",
                   (elsewhere.id,))  # fmt: skip
    with sqlite3.connect(database) as db:  # the killed job, still "running" in the file
        db.execute("UPDATE jobs SET state = 'running', error = NULL WHERE id = ?", (killed,))
    monkeypatch.setenv("DEEPGUARD_JOB_DB", str(database))
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")  # no Ray here
    get_settings.cache_clear()
    try:
        assert main(["jobs", "list"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith(f"marked failed: {killed} (c.jpg): interrupted")
    row = next(line for line in lines if line.startswith(killed))
    assert "\tfailed\tcli\t" in row
    foreign = next(line for line in lines if line.startswith(elsewhere.id))
    assert "\trunning\t" in foreign and "run by render-7, pid 1: not judged here" in foreign
    assert JobStore(database).get(elsewhere.id).state is JobState.RUNNING
    assert "Ray jobs: not listed" in out.err


def test_a_store_of_a_newer_schema_is_refused_and_an_older_one_migrated(tmp_path: Path) -> None:
    import sqlite3

    from deepguard.errors import DeepguardError
    from deepguard.pipeline.jobs import SCHEMA_VERSION

    database = tmp_path / "jobs.sqlite3"
    store = JobStore(database)
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DeepguardError) as refused:
        JobStore(database)
    assert str(refused.value).startswith(
        f"job store schema {SCHEMA_VERSION + 1} is newer than this deepguard supports"
    )
    assert "\n" not in str(refused.value)
    del store
    older = tmp_path / "old.sqlite3"
    with sqlite3.connect(older) as db:  # version 1: no owner columns, no version recorded
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, origin TEXT NOT NULL, kind TEXT NOT NULL,"
            " state TEXT NOT NULL, input TEXT NOT NULL, output TEXT, content_hash TEXT,"
            " parameters TEXT NOT NULL DEFAULT '{}', progress REAL NOT NULL DEFAULT 0,"
            " error TEXT, report TEXT, created REAL NOT NULL, started REAL, finished REAL)"
        )
    JobStore(older)
    with sqlite3.connect(older) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        assert {"owner_host", "owner_pid", "owner_started"} <= columns
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
