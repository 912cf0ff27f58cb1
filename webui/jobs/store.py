"""Durable job records in SQLite: queued jobs survive a restart, and finished ones form the history.

The standard library's sqlite3 is enough for one process: WAL mode lets readers (the Queue tab, the
job API) read while a worker writes, and one connection behind a lock keeps writes ordered. The file
is the app's own (`<data>/jobs.sqlite3`); if it cannot be read (a torn copy, a disk error, a newer
schema), it is moved aside as `<name>.corrupt-<time>` with a warning and a fresh store is created,
because a server that refuses to start over its job history helps nobody.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")
_COLUMNS = ("job_id", "kind", "owner", "request", "state", "cost", "summary", "created_at", "started_at",
            "finished_at", "worker", "progress", "result", "error", "webhook", "resumed_as")
# Columns added after schema 1 shipped: added to an older file on open (ALTER TABLE), so its history is kept,
# and not required by the open check; an older version of the app reading a newer file ignores them.
_ADDED_COLUMNS = {"resumed_as": "TEXT"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    cost REAL NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    progress TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    webhook TEXT,
    resumed_as TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
"""
INTERRUPTED_BY_RESTART = "the server stopped while this job ran"


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: the encoded request (JSON), its state, timings, and outcome."""

    job_id: str
    kind: str
    owner: str | None
    request: dict[str, Any]
    state: str
    cost: float
    summary: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    progress: str = ""
    result: Any = None
    error: str | None = None
    webhook: dict[str, Any] | None = None  # {"url": ..., "status": ...}: called when the job ends
    resumed_as: str | None = None  # the id of the job that continues this one (a resumed training run)


class JobStore:
    """The job table. `keep_finished` and `keep_days` bound the history (None: no bound); queued and
    running records are never pruned."""

    def __init__(self, path: Path | str, keep_finished: int | None = 1000, keep_days: float | None = 30.0,
                 clock: Callable[[], float] = time.time):
        if keep_finished is not None and keep_finished < 0 or keep_days is not None and keep_days < 0:
            raise ValueError("keep_finished and keep_days must not be negative")
        self.path = Path(path)
        self.owner_lock: Any = None  # set by `open_owned_store`; kept open while the store is in use
        self._keep_finished = keep_finished
        self._keep_days = keep_days
        self._clock = clock
        self._db = SqliteFile(path, _SCHEMA, SCHEMA_VERSION, {"jobs": set(_COLUMNS) - set(_ADDED_COLUMNS)},
                              "job store", clock)
        self._transaction = self._db.transaction
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        with self._transaction() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, sql_type in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        self._db.close()
        if self.owner_lock is not None:  # another process may own the stored queue now
            self.owner_lock.close()
            self.owner_lock = None

    # ---- writing ----
    def add(self, record: JobRecord) -> None:
        values = _row_values(record)
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                       values)

    def mark_running(self, job_id: str, started_at: float, worker: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, worker = ? WHERE job_id = ?",
                       (started_at, worker, job_id))

    def mark_finished(self, job_id: str, state: str, finished_at: float, progress: str = "",
                      result: Any = None, error: str | None = None) -> list[JobRecord]:
        """Record the outcome, then apply the retention limits; returns the records they removed."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state")
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, finished_at = ?, progress = ?, result = ?, error = ? "
                       "WHERE job_id = ?", (state, finished_at, progress, _dump(result), error, job_id))
        return self.prune()

    def set_webhook_status(self, job_id: str, status: str) -> None:
        """What happened when the job's webhook was called (delivered, or why not)."""
        with self._transaction() as db:
            row = db.execute("SELECT webhook FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or row[0] is None:
                return
            webhook = {**json.loads(row[0]), "status": status}
            db.execute("UPDATE jobs SET webhook = ? WHERE job_id = ?", (json.dumps(webhook), job_id))

    def link_resumed(self, job_id: str, new_job_id: str) -> bool:
        """Note that `new_job_id` continues `job_id`; False (nothing written) when it already has a successor,
        so one record never points at two runs."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET resumed_as = ? WHERE job_id = ? AND resumed_as IS NULL",
                                (new_job_id, job_id))
            return cursor.rowcount == 1

    def recover(self) -> list[JobRecord]:
        """At start: a record still `running` belongs to a process that died, so it becomes `interrupted`;
        the `queued` ones are returned in submission order, to be run again."""
        now = self._clock()
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ? WHERE state = 'running'",
                       (now, INTERRUPTED_BY_RESTART))
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return [_record(row) for row in rows]

    def prune(self) -> list[JobRecord]:
        """Delete finished records beyond `keep_finished` (the oldest first) or older than `keep_days`."""
        final = ", ".join(f"'{state}'" for state in FINAL_STATES)
        select = f"SELECT seq, {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({final})"
        with self._transaction() as db:
            doomed: list[tuple[Any, ...]] = []
            if self._keep_days is not None:
                cutoff = self._clock() - self._keep_days * 86400
                doomed += db.execute(f"{select} AND finished_at < ?", (cutoff,)).fetchall()
            if self._keep_finished is not None:
                doomed += db.execute(f"{select} ORDER BY finished_at DESC, seq DESC LIMIT -1 OFFSET ?",
                                     (self._keep_finished,)).fetchall()
            unique = {row[0]: row for row in doomed}
            db.executemany("DELETE FROM jobs WHERE seq = ?", [(seq,) for seq in unique])
        return [_record(row[1:]) for _, row in sorted(unique.items())]

    # ---- reading ----
    def get(self, job_id: str) -> JobRecord | None:
        rows = self._db.query(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def history(self, owner: str | None = None, states: tuple[str, ...] | None = None,
                limit: int = 100, kind: str | None = None) -> list[JobRecord]:
        """Records, newest first; `owner`, `states` and `kind` filter (the Queue tab and `GET /api/v1/jobs`)."""
        clauses, values = [], []
        if kind is not None:
            clauses.append("kind = ?")
            values.append(kind)
        if owner is not None:
            clauses.append("owner = ?")
            values.append(owner)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            values.extend(states)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY seq DESC LIMIT ?",
                              (*values, limit))
        return [_record(row) for row in rows]

    def seconds_per_unit(self, per_kind: int) -> dict[str, list[float]]:
        """For each kind, the run time per cost unit of its latest `per_kind` completed jobs (newest first),
        so that the ETA is known right after a restart."""
        rows = self._db.query(
            "SELECT kind, (finished_at - started_at) / cost FROM jobs WHERE state = 'done' AND cost > 0 "
            "AND started_at IS NOT NULL AND finished_at >= started_at ORDER BY seq DESC")
        speeds: dict[str, list[float]] = {}
        for kind, seconds in rows:
            kept = speeds.setdefault(kind, [])
            if len(kept) < per_kind:
                kept.append(float(seconds))
        return speeds


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _row_values(record: JobRecord) -> tuple[Any, ...]:
    values = {**record.__dict__, "request": json.dumps(record.request), "result": _dump(record.result),
              "webhook": _dump(record.webhook)}
    return tuple(values[name] for name in _COLUMNS)


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = dict(zip(_COLUMNS, row))
    values["request"] = json.loads(values["request"])
    values["result"] = None if values["result"] is None else json.loads(values["result"])
    values["webhook"] = None if values["webhook"] is None else json.loads(values["webhook"])
    return JobRecord(**values)


def open_owned_store(path: Path, keep_finished: int | None = 1000, keep_days: float | None = 30.0) -> JobStore:
    """The store at `path` when this process can own it, else an in-memory one with a warning.

    Only one process may run the stored queue: a second one on the same data folder (a second server,
    or `python -m webui.train` beside a running server) would otherwise mark the first one's running job
    interrupted and run its queued jobs too. Ownership is an OS lock on `<path>.lock`, released when the
    process ends, so a crash never leaves a stale lock behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 (held for the process's life)
    if _try_lock(lock):
        store = JobStore(path, keep_finished, keep_days)
        store.owner_lock = lock
        return store
    lock.close()
    log.warning("another SD Studio process owns the job store %s; this one keeps its jobs in memory", path)
    return JobStore(":memory:", keep_finished, keep_days)


def _try_lock(handle: Any) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
