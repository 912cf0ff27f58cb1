"""Deciding who a request is: access token, API tokens, HTTP Basic, login sessions, failed-login backoff.

One `Authenticator` per server. Modes:
- open: no accounts and no access token (the default 127.0.0.1 server, or `--insecure-no-auth`):
  every request is the person at the machine (`LOCAL_ADMIN`).
- secured: accounts (`--auth`, `users.json`) and/or a start-up access token (created when `--listen` or
  `--share` is given without accounts, like Jupyter's). Requests prove themselves with a session cookie
  (from the login form or `?token=`), `Authorization: Bearer <token>` or HTTP Basic (A1111 clients).

Login sessions are kept in the `SecurityStore` (webui.security.store), so they survive a restart: a
browser or an A1111 client with a cookie stays logged in. Sessions made with the start-up access token
end with it (a new token is made at every start).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from webui.security.identity import ADMIN, LOCAL_ADMIN, User
from webui.security.store import SecurityStore
from webui.security.users import UserStore

SESSION_COOKIE = "sdstudio_session"
SESSION_SECONDS = 7 * 24 * 3600
BASIC_CACHE_SECONDS = 600  # A1111 clients send Basic on every call: hash the password once per 10 minutes
ACCESS_TOKEN_USER = User("admin", ADMIN)  # whoever holds the start-up token started the server


class TooManyAttempts(PermissionError):
    """Refused without checking: this client or name failed too often recently."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many failed logins; try again in {int(retry_after) + 1} s")
        self.retry_after = retry_after


class LoginThrottle:
    """Exponential backoff per client address and per user name after repeated failures.

    The first `free_attempts` failures cost nothing; each further one doubles the wait (1 s, 2 s, 4 s ...
    up to `max_delay`). A success clears the record. Waiting is enforced by refusing, never by sleeping,
    so an attacker cannot tie up server threads.
    """

    def __init__(self, free_attempts: int = 5, max_delay: float = 300.0):
        self._free = free_attempts
        self._max_delay = max_delay
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, time of the last failure)

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                count, last = self._failures.get(key, (0, 0.0))
                if count >= self._free:
                    wait = min(self._max_delay, 2.0 ** (count - self._free)) - (now - last)
                    if wait > 0:
                        raise TooManyAttempts(wait)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                count, _ = self._failures.get(key, (0, 0.0))
                self._failures[key] = (count + 1, now)
            if len(self._failures) > 10_000:  # bounded memory under a spray of names
                for key, _ in sorted(self._failures.items(), key=lambda item: item[1][1])[:5_000]:
                    del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


@dataclass(frozen=True)
class Credentials:
    """What a request presented; all optional."""

    client: str
    session: str | None = None
    authorization: str | None = None
    query_token: str | None = None


class Authenticator:
    def __init__(self, users: UserStore, access_token: str | None = None, throttle: LoginThrottle | None = None,
                 store: SecurityStore | None = None):
        self.users = users
        self.access_token = access_token
        self.throttle = throttle or LoginThrottle()
        self.store = store if store is not None else SecurityStore.in_memory()  # where sessions are kept
        self._basic_cache: dict[str, tuple[User, float]] = {}  # digest of a verified Basic header -> user
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        """No login at all: only for servers bound to this machine or started with --insecure-no-auth."""
        return self.access_token is None and len(self.users) == 0

    # ---- sessions ----
    def start_session(self, user: User) -> str:
        session_id = secrets.token_urlsafe(32)
        by_token = user == ACCESS_TOKEN_USER and self.access_token is not None and user not in self.users.users()
        self.store.add_session(session_id, user, time.time() + SESSION_SECONDS,
                               self.access_token if by_token else None)
        return session_id

    def end_session(self, session_id: str) -> None:
        self.store.end_session(session_id)

    def _session_user(self, session_id: str) -> User | None:
        found = self.store.session(session_id, self.access_token)
        if found is None:
            return None
        user, by_token = found
        if not by_token and user not in self.users.users():  # removed, or the role changed
            self.store.end_session(session_id)
            return None
        return user

    def _still_exists(self, user: User) -> bool:
        return user == ACCESS_TOKEN_USER and self.access_token is not None or user in self.users.users()

    # ---- checks ----
    def login(self, name: str, password: str, client: str) -> User | None:
        """A login-form or Basic check with backoff; raises TooManyAttempts while a client is throttled."""
        keys = (f"ip:{client}", f"user:{name}")
        self.throttle.check(*keys)
        user = self.users.check_password(name, password)
        if user is None:
            self.throttle.failed(*keys)
            return None
        self.throttle.succeeded(*keys)
        return user

    def token_user(self, token: str, client: str) -> User | None:
        """The start-up access token or a user's API token, with the same backoff as passwords."""
        key = f"ip:{client}"
        self.throttle.check(key)
        user = None
        if self.access_token is not None and hmac.compare_digest(token.encode(), self.access_token.encode()):
            user = ACCESS_TOKEN_USER
        else:
            user = self.users.user_for_token(token)
        if user is None:
            self.throttle.failed(key)
        return user

    def _basic_user(self, value: str, client: str) -> User | None:
        key = hashlib.sha256(value.encode()).hexdigest()
        with self._lock:
            cached = self._basic_cache.get(key)
        if cached is not None and cached[1] > time.time() and self._still_exists(cached[0]):
            return cached[0]
        try:
            name, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = self.login(name, password, client)
        if user is not None:
            with self._lock:
                if len(self._basic_cache) > 1000:
                    self._basic_cache.clear()
                self._basic_cache[key] = (user, time.time() + BASIC_CACHE_SECONDS)
        return user

    def needs_hashing(self, credentials: Credentials) -> bool:
        """Whether checking these credentials may run scrypt (then the caller runs it off the event loop)."""
        return (credentials.authorization or "").lower().startswith("basic ")

    def authenticate(self, credentials: Credentials) -> User | None:
        """The user these credentials prove, or None. Raises TooManyAttempts while throttled."""
        if self.open:
            return LOCAL_ADMIN
        if credentials.session:
            user = self._session_user(credentials.session)
            if user is not None:
                return user
        scheme, _, value = (credentials.authorization or "").partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.token_user(value.strip(), credentials.client)
        if scheme.lower() == "basic" and value:
            return self._basic_user(value.strip(), credentials.client)
        if credentials.query_token:
            return self.token_user(credentials.query_token, credentials.client)
        return None
