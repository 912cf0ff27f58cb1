"""SHA-256 of model files, cached on disk so each file is hashed once.

A1111 identifies models by `shorthash` (the first 10 hex digits of the file's sha256) in titles and
infotext. Hashing a 2 GB checkpoint takes seconds, so results are stored in a JSON cache keyed by
path and invalidated when the file's size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def sha256_of_file(path: Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_folder(folder: Path) -> str:
    """A stable hash for a diffusers folder: its weight and config files, by relative path."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".txt"}):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(sha256_of_file(file).encode())
    return digest.hexdigest()


class HashCache:
    """Thread-safe sha256 cache persisted as JSON (`cache/hashes.json`)."""

    def __init__(self, cache_file: Path):
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _fingerprint(path: Path) -> list:
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            return [len(files), sum(p.stat().st_size for p in files), max((p.stat().st_mtime for p in files), default=0)]
        stat = path.stat()
        return [stat.st_size, stat.st_mtime]

    def cached(self, path: Path) -> str | None:
        """The hash if known and still valid, without reading the file."""
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry.get("fingerprint") == self._fingerprint(path):
            return entry["sha256"]
        return None

    def sha256(self, path: Path) -> str:
        """Hash of a file or diffusers folder, computed at most once per version of it."""
        known = self.cached(path)
        if known:
            return known
        value = sha256_of_folder(path) if path.is_dir() else sha256_of_file(path)
        with self._lock:
            self._entries[str(path.resolve())] = {"sha256": value, "fingerprint": self._fingerprint(path)}
            self._write()
        return value

    def _write(self) -> None:
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._entries, indent=1), encoding="utf-8")
            os.replace(temporary, self._file)
        except OSError:
            pass  # a read-only or full disk only costs re-hashing next start
