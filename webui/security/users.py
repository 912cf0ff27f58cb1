"""Accounts: users with roles, hashed passwords and per-user API tokens, kept in `users.json`.

Passwords are hashed with scrypt (Python's `hashlib.scrypt`, OpenSSL's implementation) and a random
salt; API tokens are random 256-bit secrets of which only a SHA-256 digest is stored (a digest is
enough for a secret that long and keeps lookups constant-time). The file is written atomically with
owner-only permissions. Users given with `--auth`/`--auth-file`/`SDSTUDIO_AUTH` are admins held in
memory only, like A1111's `--gradio-auth` accounts; accounts made in the Account tab or with
`python -m webui.security.users_cli` are stored in the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from webui.security.identity import ADMIN, ROLES, User

TOKEN_PREFIX = "sds_"
# Also a folder name (outputs/users/<name>/, webui.security.paths): no leading dot, so never "." or "..".
USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD_LENGTH = 8
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class AccountError(ValueError):
    """A user-management request that cannot be done (bad name, short password, unknown user)."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=len(expected), **_SCRYPT)
    except (ValueError, TypeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def _token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class TokenRecord:
    token_id: str
    label: str
    created: float
    digest: str


@dataclass
class Account:
    name: str
    role: str
    password_hash: str
    tokens: list[TokenRecord] = field(default_factory=list)
    stored: bool = True  # False for --auth accounts, which live only as long as the process

    @property
    def user(self) -> User:
        return User(self.name, self.role)


class UserStore:
    """Thread-safe accounts, backed by a JSON file (None: memory only)."""

    def __init__(self, path: Path | None, flag_accounts: tuple[tuple[str, str], ...] = ()):
        self._path = path
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._loaded_mtime: float | None = None
        for name, password in flag_accounts:
            self._accounts[name] = Account(name, ADMIN, hash_password(password), stored=False)
        self._reload_if_changed(strict=True)

    def _reload_if_changed(self, strict: bool = False) -> None:
        """Pick up accounts and tokens another process (the CLI, a second server) wrote to the file.

        At start a broken file is an error (`strict`); later the accounts already loaded stay in force."""
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
        except FileNotFoundError:
            return
        with self._lock:
            if mtime != self._loaded_mtime:
                try:
                    self._load(self._path)
                except AccountError:
                    if strict:
                        raise
                self._loaded_mtime = mtime

    # ---- reading ----
    def __len__(self) -> int:
        self._reload_if_changed()
        return len(self._accounts)

    def users(self) -> list[User]:
        self._reload_if_changed()
        with self._lock:
            return [account.user for account in sorted(self._accounts.values(), key=lambda a: a.name)]

    def check_password(self, name: str, password: str) -> User | None:
        self._reload_if_changed()
        account = self._accounts.get(name)
        if account is None:
            verify_password(password, hash_password("timing"))  # same work for unknown names
            return None
        return account.user if verify_password(password, account.password_hash) else None

    def user_for_token(self, secret: str) -> User | None:
        if not secret.startswith(TOKEN_PREFIX):
            return None
        digest = _token_digest(secret)
        self._reload_if_changed()
        with self._lock:
            for account in self._accounts.values():
                if any(hmac.compare_digest(token.digest, digest) for token in account.tokens):
                    return account.user
        return None

    def tokens_of(self, name: str) -> list[TokenRecord]:
        with self._lock:
            account = self._accounts.get(name)
            return list(account.tokens) if account else []

    # ---- changing ----
    def add_user(self, name: str, password: str, role: str) -> User:
        if not USER_NAME_PATTERN.match(name):
            raise AccountError("user name: use 1-64 letters, digits, '_', '.', '@' or '-', not starting with '.'")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"password: use at least {MIN_PASSWORD_LENGTH} characters")
        with self._lock:
            if name in self._accounts:
                raise AccountError(f"user {name!r} already exists")
            self._accounts[name] = Account(name, role, hash_password(password))
            self._save()
        return User(name, role)

    def remove_user(self, name: str) -> None:
        with self._lock:
            account = self._accounts.get(name)
            if account is None:
                raise AccountError(f"no user {name!r}")
            if not account.stored:
                raise AccountError(f"{name!r} comes from --auth; remove it from the command line or auth file")
            if account.role == ADMIN and sum(a.role == ADMIN for a in self._accounts.values()) == 1:
                raise AccountError("the last admin cannot be removed")
            del self._accounts[name]
            self._save()

    def create_token(self, name: str, label: str) -> str:
        """A new API token for `name`; the secret is returned once and only its digest is kept."""
        label = label.strip()[:64] or "token"
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            account = self._accounts.get(name)
            if account is None:
                raise AccountError(f"no user {name!r}")
            account.tokens.append(TokenRecord(secrets.token_hex(4), label, time.time(), _token_digest(secret)))
            self._save()
        return secret

    def revoke_token(self, name: str, token_id: str) -> None:
        with self._lock:
            account = self._accounts.get(name)
            kept = [t for t in account.tokens if t.token_id != token_id] if account else []
            if account is None or len(kept) == len(account.tokens):
                raise AccountError(f"no token {token_id!r} for {name!r}")
            account.tokens = kept
            self._save()

    # ---- file ----
    def _load(self, path: Path) -> None:
        """Replace the stored accounts with the file's (flag accounts stay); call with the lock held."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            stored = {}
            for name, entry in data.get("users", {}).items():
                tokens = [TokenRecord(**token) for token in entry.get("tokens", [])]
                stored[name] = Account(name, entry["role"], entry["password"], tokens)
            flags = {name: account for name, account in self._accounts.items() if not account.stored}
            self._accounts = {**stored, **flags}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AccountError(f"cannot read {path}: {error}") from error

    def _save(self) -> None:
        """Write the stored accounts atomically, readable by the owner only (call with the lock held)."""
        if self._path is None:
            return
        data = {"users": {
            a.name: {"role": a.role, "password": a.password_hash, "tokens": [t.__dict__ for t in a.tokens]}
            for a in self._accounts.values() if a.stored
        }}
        temporary = self._path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.replace(temporary, self._path)
        self._loaded_mtime = self._path.stat().st_mtime
