"""The security layer's own durable state: login sessions and who may fetch which served file.

Both used to live in memory, so a restart logged everybody out (A1111 clients that keep a cookie broke)
and forgot which user each gradio file had been shown to, which made a user's own images unfetchable
after a restart. They are kept in one small SQLite file owned by this package, `<data>/security.sqlite3`
(owner-only permissions, WAL like the job store, so the readers on every request never wait for a writer).

What is stored is only what is needed to judge the next request:
- sessions: the SHA-256 digest of the cookie value (the file holds no cookie that would log anybody in),
  the user name and role, the expiry time, and for a login made with the start-up access token the
  digest of that token: the token changes at every start, and so such sessions end with the process
  that printed it, as the banner says. Expired sessions are removed as they are met and at start.
- served files: (real path, user name, time recorded); records older than `served_days` or beyond
  `max_served` (oldest first) are removed.

A file that cannot be read (torn copy, disk error, a newer schema) is moved aside with a warning and a
fresh one is started: the cost is that users log in again, which is better than a server that cannot start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from webui.security.identity import User
from webui.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

SECURITY_STORE_FILE = "security.sqlite3"
SCHEMA_VERSION = 1
SERVED_DAYS = 30.0
MAX_SERVED = 200_000  # served-file records kept (oldest forgotten first): tens of MB at most
PRUNE_EVERY = 1000  # served-file writes between two prunings
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    expires REAL NOT NULL,
    token_digest TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires);
CREATE TABLE IF NOT EXISTS served_files (
    path TEXT NOT NULL,
    owner TEXT NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (path, owner)
);
CREATE INDEX IF NOT EXISTS served_by_time ON served_files (recorded);
"""
_TABLES = {"sessions": {"digest", "name", "role", "expires", "token_digest"},
           "served_files": {"path", "owner", "recorded"}}


def digest(secret: str) -> str:
    """What is stored in place of a cookie or token."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class SecurityStore:
    """Sessions and served-file owners in SQLite; one connection behind a lock, safe from any thread."""

    def __init__(self, path: Path | str, served_days: float = SERVED_DAYS, max_served: int = MAX_SERVED,
                 clock: Callable[[], float] = time.time, prune_every: int = PRUNE_EVERY):
        self.path = Path(path) if str(path) != ":memory:" else None
        self._served_seconds = served_days * 24 * 3600
        self._max_served = max_served
        self._clock = clock
        self._writes = 0
        self._prune_every = prune_every
        self._db = SqliteFile(path, _SCHEMA, SCHEMA_VERSION, _TABLES, "security store", clock,
                              prepare=_create_owner_only)
        self._transaction, self._query = self._db.transaction, self._db.query
        self.prune()

    @classmethod
    def in_memory(cls) -> SecurityStore:
        """A store that lasts as long as the object (unit tests, servers built without a data folder)."""
        return cls(":memory:")

    def close(self) -> None:
        self._db.close()

    # ---- sessions ----
    def add_session(self, session_id: str, user: User, expires: float, access_token: str | None = None) -> None:
        """Remember a login; `access_token`: the start-up token it was made with (None for accounts)."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO sessions (digest, name, role, expires, token_digest) VALUES (?, ?, ?, ?, ?)",
                       (digest(session_id), user.name, user.role, expires,
                        digest(access_token) if access_token is not None else None))

    def session(self, session_id: str, access_token: str | None) -> tuple[User, bool] | None:
        """(user, made with the access token) of a live session; None if unknown, expired, or made with
        another start's access token (those are deleted)."""
        rows = self._query("SELECT name, role, expires, token_digest FROM sessions WHERE digest = ?",
                           (digest(session_id),))
        if not rows:
            return None
        name, role, expires, token_digest = rows[0]
        stale_token = token_digest is not None and (access_token is None or token_digest != digest(access_token))
        if expires < self._clock() or stale_token:
            self.end_session(session_id)
            return None
        return User(name, role), token_digest is not None

    def end_session(self, session_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE digest = ?", (digest(session_id),))

    # ---- served files ----
    def record_files(self, paths: Iterable[str], owner: str) -> None:
        """Remember that these (real) paths were handed to `owner`; refreshes the time of known ones."""
        rows = [(path, owner, self._clock()) for path in dict.fromkeys(paths)]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO served_files (path, owner, recorded) VALUES (?, ?, ?)", rows)
        self._writes += len(rows)
        if self._writes >= self._prune_every:
            self._writes = 0
            self.prune()

    def file_belongs_to(self, path: str, owner: str) -> bool:
        rows = self._query("SELECT 1 FROM served_files WHERE path = ? AND owner = ? AND recorded >= ?",
                           (path, owner, self._clock() - self._served_seconds))
        return bool(rows)

    # ---- upkeep ----
    def prune(self) -> None:
        """Drop expired sessions, served-file records past their age, and the oldest beyond the bound."""
        now = self._clock()
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            db.execute("DELETE FROM served_files WHERE recorded < ?", (now - self._served_seconds,))
            count = db.execute("SELECT COUNT(*) FROM served_files").fetchone()[0]
            if count > self._max_served:
                db.execute("DELETE FROM served_files WHERE rowid IN (SELECT rowid FROM served_files "
                           "ORDER BY recorded LIMIT ?)", (count - self._max_served,))


def _create_owner_only(path: Path) -> None:
    """Create the database file readable by this account only (its journal files inherit the mode)."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
