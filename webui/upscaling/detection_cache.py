"""What spandrel detected in each upscaler file, kept in `<data>/cache/upscalers.json` across restarts.

Detecting a file's architecture means reading all of it and building the model; with dozens of 60 MB
files that would make the first upscaler list after every start take a long while. An outcome is kept per
path with the file's mtime and size and the spandrel version that produced it, and used again only while
all three still match. Outcomes that depend on this process rather than on the file (spandrel missing) are
never kept. A cache file that cannot be read is ignored (and rewritten), never an error.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("sdstudio")

FileKey = tuple[str, int, int]  # (path, mtime_ns, size)


class DetectionCache:
    """path -> {mtime_ns, size, spandrel, scale, architecture, usable, reason}; None: kept in memory only."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = {}
            if self.path is not None and self.path.is_file():
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    if isinstance(data, dict):
                        self._records = {str(k): v for k, v in data.items() if isinstance(v, dict)}
                except (OSError, ValueError) as error:
                    log.warning("%s cannot be read (%s); upscaler files will be detected again", self.path, error)
        return self._records

    def get(self, key: FileKey, version: str) -> dict[str, Any] | None:
        """The kept outcome for this exact file and spandrel version, else None."""
        with self._lock:
            record = self._load().get(key[0])
        if record and record.get("mtime_ns") == key[1] and record.get("size") == key[2] \
                and record.get("spandrel") == version:
            return record
        return None

    def put(self, key: FileKey, version: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            records = self._load()
            records[key[0]] = {"mtime_ns": key[1], "size": key[2], "spandrel": version, **outcome}
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                partial = self.path.with_name(self.path.name + ".partial")
                partial.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")
                partial.replace(self.path)
            except OSError as error:
                log.warning("cannot write %s (%s); upscaler detection results stay in memory", self.path, error)
