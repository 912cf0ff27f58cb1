"""The SQLite job store: records, restart recovery, retention by count and age, and a corrupt file moved aside."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from tests.support.fake_jobs import WAIT, FakeClock, Studio, paint
from webui.jobs.scheduler import Scheduler
from webui.jobs.store import INTERRUPTED_BY_RESTART, JobRecord, JobStore
from webui.jobs.worker import Worker

DAY = 86400.0


def record(job_id: str, state: str = "queued", created_at: float = 0.0, **fields) -> JobRecord:
    return JobRecord(job_id, "paint", fields.pop("owner", "alice"), {"label": job_id}, state, 2.0,
                     f"paint {job_id}", created_at, **fields)


def test_a_record_goes_from_queued_to_running_to_finished_with_its_outcome(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock(100.0))
    store.add(record("a1", created_at=10.0))
    store.mark_running("a1", 11.0, "w0")
    assert store.get("a1").state == "running" and store.get("a1").worker == "w0"
    store.mark_finished("a1", "done", 15.0, "step 20/20", {"files": ["00001.png"], "infotexts": ["a cat"]})
    stored = store.get("a1")
    assert (stored.state, stored.started_at, stored.finished_at, stored.progress) == ("done", 11.0, 15.0, "step 20/20")
    assert stored.result == {"files": ["00001.png"], "infotexts": ["a cat"]} and stored.request == {"label": "a1"}
    assert store.seconds_per_unit(10) == {"paint": [2.0]}  # 4 s for a cost of 2
    assert store.get("missing") is None
    with pytest.raises(ValueError, match="not a final state"):
        store.mark_finished("a1", "running", 16.0)


def test_history_is_newest_first_and_filters_by_owner_and_state(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock(100.0))
    for number, owner in enumerate(["alice", "bob", "alice"]):
        store.add(record(f"j{number}", owner=owner))
    store.mark_finished("j0", "failed", 5.0, error="ValueError: bad")
    assert [r.job_id for r in store.history()] == ["j2", "j1", "j0"]
    assert [r.job_id for r in store.history(owner="alice")] == ["j2", "j0"]
    assert [r.job_id for r in store.history(states=("failed",))] == ["j0"]
    assert [r.job_id for r in store.history(limit=1)] == ["j2"]


def test_recovery_interrupts_what_was_running_and_returns_the_queue_in_order(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    before = JobStore(path)
    for job_id in ("first", "second", "third"):
        before.add(record(job_id))
    before.mark_running("first", 1.0, "w0")
    before.close()
    after = JobStore(path, clock=FakeClock(50.0))
    assert [r.job_id for r in after.recover()] == ["second", "third"]
    dead = after.get("first")
    assert (dead.state, dead.finished_at, dead.error) == ("interrupted", 50.0, INTERRUPTED_BY_RESTART)


def test_retention_keeps_the_newest_finished_records_and_never_prunes_the_queue(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", keep_finished=2, keep_days=None)
    store.add(record("waiting"))
    for number in range(4):
        store.add(record(f"old{number}"))
    pruned = [r.job_id for number in range(4) for r in store.mark_finished(f"old{number}", "done", 10.0 + number)]
    assert pruned == ["old0", "old1"]
    assert sorted(r.job_id for r in store.history()) == ["old2", "old3", "waiting"]


def test_retention_drops_records_older_than_the_age_limit(tmp_path):
    clock = FakeClock(100 * DAY)
    store = JobStore(tmp_path / "jobs.sqlite3", keep_finished=None, keep_days=7, clock=clock)
    for job_id in ("ancient", "recent"):
        store.add(record(job_id))
    store.mark_finished("ancient", "done", clock.now)
    clock.now += 6 * DAY
    assert store.mark_finished("recent", "done", clock.now) == []  # six days old: still kept
    clock.now += 2 * DAY
    assert [r.job_id for r in store.prune()] == ["ancient"]
    assert [r.job_id for r in store.history()] == ["recent"]


@pytest.mark.parametrize("damage", ["garbage", "foreign table", "newer schema"])
def test_an_unreadable_store_is_moved_aside_and_a_fresh_one_works(tmp_path, caplog, damage):
    path = tmp_path / "jobs.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"this is not a database, just some bytes " * 100)
    else:
        with sqlite3.connect(path) as db:
            if damage == "foreign table":
                db.execute("CREATE TABLE jobs (id INTEGER, what TEXT)")
            else:
                db.execute("PRAGMA user_version = 99")
        db.close()
    original = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="webui.jobs.store"):
        store = JobStore(path, clock=FakeClock(0.0))
    moved = tmp_path / "jobs.sqlite3.corrupt-19700101-000000"
    assert moved.read_bytes() == original
    assert "could not be read" in caplog.text and moved.name in caplog.text
    store.add(record("fresh"))
    assert [r.job_id for r in store.history()] == ["fresh"]


def test_the_scheduler_starts_and_runs_jobs_on_a_corrupt_store(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"\x00garbage" * 512)
    studio = Studio()
    scheduler = Scheduler(studio.kinds(), JobStore(path))
    scheduler.add_worker(Worker("w0", "cpu", "manager"))
    try:
        assert scheduler.run(paint("after the crash"), WAIT) == "painted after the crash on manager"
        assert len(list(tmp_path.glob("jobs.sqlite3.corrupt-*"))) == 1
    finally:
        scheduler.shutdown()


def test_a_queued_record_whose_kind_is_gone_fails_with_the_reason_instead_of_blocking_the_start(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    store.add(JobRecord("orphan", "sculpt", None, {"clay": 1}, "queued", 1.0, "sculpt", 0.0))
    store.add(record("kept"))
    studio = Studio()
    scheduler = Scheduler(studio.kinds(), store)
    scheduler.add_worker(Worker("w0", "cpu", "manager"))
    try:
        assert scheduler.get("kept").result(WAIT) == "painted kept on manager"
        orphan = scheduler.record("orphan")
        assert orphan.state == "failed" and "unknown job kind 'sculpt'" in orphan.error
    finally:
        scheduler.shutdown()


def test_a_second_process_on_the_same_data_folder_keeps_its_jobs_in_memory(tmp_path):
    """Only one process runs the stored queue; another (a CLI beside the server) must not take its jobs."""
    import subprocess
    import sys

    from webui.jobs.store import open_owned_store

    first = open_owned_store(tmp_path / "jobs.sqlite3")
    try:
        probe = ("import sys; from pathlib import Path; from webui.jobs.store import open_owned_store; "
                 "store = open_owned_store(Path(sys.argv[1])); print(store.path)")
        other = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "jobs.sqlite3")], capture_output=True,
                               text=True, timeout=60)
        assert other.stdout.strip() == ":memory:", other.stderr
        assert "another SD Studio process owns the job store" in other.stderr
    finally:
        first.close()
    again = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "jobs.sqlite3")], capture_output=True,
                           text=True, timeout=60)
    assert again.stdout.strip().endswith("jobs.sqlite3")


def test_history_filters_by_kind_in_the_query(tmp_path):
    from webui.jobs.store import JobRecord, JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    for index, kind in enumerate(("txt2img", "train", "txt2img")):
        store.add(JobRecord(f"k{index}", kind, None, {}, "queued", 1.0, "", float(index)))
    assert [r.job_id for r in store.history(kind="txt2img")] == ["k2", "k0"]
    assert [r.job_id for r in store.history(kind="txt2img", limit=1)] == ["k2"]
    store.close()


def test_a_store_written_before_resume_links_keeps_its_history_and_links_a_resumed_job(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)  # the schema-1 table as the first release wrote it, without `resumed_as`
    old.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, "
                "kind TEXT NOT NULL, owner TEXT, request TEXT NOT NULL, state TEXT NOT NULL, cost REAL NOT NULL, "
                "summary TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, started_at REAL, finished_at REAL, "
                "worker TEXT, progress TEXT NOT NULL DEFAULT '', result TEXT, error TEXT, webhook TEXT)")
    old.execute("INSERT INTO jobs (job_id, kind, owner, request, state, cost, created_at) "
                "VALUES ('old', 'paint', 'alice', '{}', 'interrupted', 1.0, 1.0)")
    old.commit()
    old.close()
    store = JobStore(path)
    assert store.get("old").state == "interrupted" and store.get("old").resumed_as is None
    store.add(record("new"))
    assert store.link_resumed("old", "new") is True
    assert store.link_resumed("old", "other") is False  # one record never points at two runs
    assert store.get("old").resumed_as == "new" and store.get("new").resumed_as is None
    assert not list(tmp_path.glob("*.corrupt-*"))
