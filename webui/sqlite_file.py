"""One SQLite file the app keeps its state in (the job store, the security store), opened the same way.

Opening checks what a torn copy, a disk error or a newer version of the app could have left (integrity,
schema version, the columns this code reads) before anything is written; a file that fails is moved
aside with its WAL journal (`<name>.corrupt-<time>`) and a fresh one is started, with a warning: losing
history is better than a server that cannot start. WAL with synchronous=NORMAL: readers never wait for a
writer, an app crash loses nothing and no commit waits for an fsync (a power cut may lose the last
records). One connection behind a lock, so the store is safe from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)
MEMORY = ":memory:"


class SqliteFile:
    def __init__(self, path: Path | str, schema: str, version: int, tables: Mapping[str, set[str]], label: str,
                 clock: Callable[[], float] = time.time, prepare: Callable[[Path], None] | None = None):
        """`schema` creates the tables (IF NOT EXISTS); `tables` names the columns each must have; `label` is
        what the warning calls the store; `prepare(path)` runs before every open of a new file (e.g. to
        create it owner-only)."""
        self.path = None if str(path) == MEMORY else Path(path)
        self._schema, self._version, self._tables, self._label = schema, version, tables, label
        self._clock, self._prepare = clock, prepare
        self.lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if prepare is not None:
                prepare(self.path)
        try:
            self._connection = self._connect()
        except sqlite3.DatabaseError as error:
            self._move_aside(error)
            self._connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(str(self.path) if self.path is not None else MEMORY, check_same_thread=False,
                                     isolation_level=None, timeout=10)
        try:  # read-only checks first: a file that fails them is moved aside exactly as it was
            check = connection.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > self._version:
                raise sqlite3.DatabaseError(f"written by a newer version (schema {version} > {self._version})")
            for table, wanted in self._tables.items():
                columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                if columns and not wanted <= columns:
                    raise sqlite3.DatabaseError(f"its {table} table lacks {', '.join(sorted(wanted - columns))}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(self._schema)
            connection.execute(f"PRAGMA user_version = {self._version}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _move_aside(self, error: BaseException) -> None:
        assert self.path is not None  # an in-memory database cannot be corrupt on open
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            counter += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{counter}")
        for suffix in ("-wal", "-shm"):  # the journal belongs to the broken file, not to the new one
            sidecar = self.path.with_name(self.path.name + suffix)
            if sidecar.exists():
                sidecar.replace(target.with_name(target.name + suffix))
        self.path.replace(target)
        if self._prepare is not None:
            self._prepare(self.path)
        log.warning("the %s %s could not be read (%s); moved it to %s and started an empty one",
                    self._label, self.path, error, target.name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error), holding the lock."""
        with self.lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def query(self, sql: str, values: tuple = ()) -> list[tuple]:
        with self.lock:
            return self._connection.execute(sql, values).fetchall()

    def close(self) -> None:
        with self.lock:
            self._connection.close()
