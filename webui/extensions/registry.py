"""What the loaded extensions registered, and the one way the app calls them: isolated and timed.

Every registration is a (extension, hook, callable) row in a table. `call_each` runs one hook's rows in
load order; an exception or a return value of the wrong type switches that extension off until the
next start (its traceback is kept for the Extensions tab), the caller goes on without it, and a warning
naming the extension is handed back so the job that was running can say so. Each call is timed; an
extension whose calls are slow is named in the Extensions tab.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.extensions.manifest import ExtensionManifest
from webui.extensions.settings_store import ExtensionSettings

log = logging.getLogger("sdstudio.extensions")

# A hook call slower than this (on average, or once at most) gets the extension named as slow in the tab.
SLOW_AVERAGE_S = 0.25
SLOW_SINGLE_S = 2.0

# States of an extension, as the Extensions tab shows them.
LOADED = "loaded"          # imported, set up, its hooks run
DISABLED = "disabled"      # switched off by the user (remembered across restarts); not imported
FAILED = "failed"          # failed on import, in setup or in a hook: off until the next start
REFUSED = "refused"        # manifest, API version or name problem: never imported


@dataclass
class HookTiming:
    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    @property
    def average_s(self) -> float:
        return self.total_s / self.calls if self.calls else 0.0

    @property
    def slow(self) -> bool:
        return self.calls > 0 and (self.average_s > SLOW_AVERAGE_S or self.max_s > SLOW_SINGLE_S)


@dataclass
class ExtensionRecord:
    """One extension folder as the Extensions tab lists it."""

    name: str
    folder: Path
    builtin: bool
    manifest: ExtensionManifest | None = None
    state: str = LOADED
    problem: str = ""            # one line: why it is refused or failed
    traceback: str = ""          # the full traceback of a failure
    import_seconds: float = 0.0
    timings: dict[str, HookTiming] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state == LOADED

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else ""

    def slow_hooks(self) -> list[str]:
        return [f"{hook} ({timing.average_s * 1000:.0f} ms average, {timing.max_s * 1000:.0f} ms at most, "
                f"{timing.calls} calls)" for hook, timing in sorted(self.timings.items()) if timing.slow]


@dataclass(frozen=True)
class Registration:
    extension: str
    hook: str
    function: Callable[..., Any]
    # What the hook must return (a type or a tuple of types, None included where "no change" is allowed).
    returns: type | tuple[type, ...] | None = None
    payload: Any = None          # what a table row carries beside its callable (a tab title, a script, ...)


class HookFailure(Exception):
    """Raised by `call_one` when the extension failed; the extension is already switched off."""


class HookRefusal(ValueError):
    """Raised by a generation hook (`api.JobRefused`) to end the job with its message: the request cannot
    work (a ControlNet made for another model family). Not a bug: the extension stays on."""


class ExtensionRegistry:
    """The extensions found at start and everything they registered."""

    def __init__(self, api_version: str, settings: ExtensionSettings | None = None):
        self.api_version = api_version
        self.settings = settings if settings is not None else ExtensionSettings(None)
        self.records: dict[str, ExtensionRecord] = {}
        self._rows: list[Registration] = []
        self._lock = threading.Lock()

    # -- filled by the loader and by ExtensionSetup ------------------------------------------------
    def add_record(self, record: ExtensionRecord) -> None:
        self.records[record.name] = record

    def register(self, registration: Registration) -> None:
        with self._lock:
            self._rows.append(registration)

    def forget(self, extension: str) -> None:
        """Drop every row (and setting) of an extension whose setup failed half way."""
        with self._lock:
            self._rows = [row for row in self._rows if row.extension != extension]
        self.settings.forget(extension)

    # -- read by the app ---------------------------------------------------------------------------
    def rows(self, hook: str) -> list[Registration]:
        """The hook's rows of extensions that are still on, in load order."""
        with self._lock:
            rows = [row for row in self._rows if row.hook == hook]
        return [row for row in rows if self.records[row.extension].active]

    def has(self, hook: str) -> bool:
        return bool(self.rows(hook))

    def registrations(self, extension: str) -> list[Registration]:
        """Everything an extension registered, in order, whether or not it is still on (for the Extensions
        tab and the check)."""
        with self._lock:
            return [row for row in self._rows if row.extension == extension]

    def hooks_of(self, extension: str) -> list[str]:
        return list(dict.fromkeys(row.hook for row in self.registrations(extension)))

    def switch_off(self, extension: str) -> bool:
        """A loaded extension's hooks stop at once (the user disabled it); what it added to the UI or the
        routes stays until the next start. False when it was not loaded."""
        record = self.records.get(extension)
        with self._lock:
            if record is None or record.state != LOADED:
                return False
            record.state = DISABLED
        return True

    def call_one(self, row: Registration, *args: Any, warnings: list[str] | None = None) -> Any:
        """Call one row, timed and isolated. A failure switches the extension off, appends a warning and
        raises HookFailure, so the caller can go on without the extension's contribution."""
        started = time.perf_counter()
        try:
            result = row.function(*args)
        except HookRefusal:  # the job ends with the extension's message; the extension stays on
            self._record_time(row, started)
            raise
        except (Exception, SystemExit) as error:  # an extension's bug must never stop the app or the job
            self._record_time(row, started)
            self.fail(row.extension, f"{row.hook} raised {type(error).__name__}: {error}", traceback.format_exc(),
                      warnings)
            raise HookFailure(row.extension) from error
        self._record_time(row, started)
        if row.returns is not None and not isinstance(result, row.returns):
            expected = " or ".join(_type_name(t) for t in (row.returns if isinstance(row.returns, tuple)
                                                            else (row.returns,)))
            self.fail(row.extension, f"{row.hook} returned {_type_name(type(result))}, expected {expected}", "",
                      warnings)
            raise HookFailure(row.extension)
        return result

    def call_each(self, hook: str, *args: Any, warnings: list[str] | None = None) -> Iterator[tuple[Registration, Any]]:
        """(row, result) for every active row of the hook whose call succeeded."""
        for row in self.rows(hook):
            try:
                yield row, self.call_one(row, *args, warnings=warnings)
            except HookFailure:
                continue

    def fail(self, extension: str, problem: str, details: str, warnings: list[str] | None = None) -> None:
        record = self.records[extension]
        with self._lock:
            if record.state == FAILED:
                return
            record.state, record.problem, record.traceback = FAILED, problem, details
        log.error("extension %s switched off until restart: %s\n%s", extension, problem, details)
        if warnings is not None:
            warnings.append(f"extension '{extension}' failed and was switched off until restart ({problem}); "
                            "the job went on without it")

    def _record_time(self, row: Registration, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self.records[row.extension].timings.setdefault(row.hook, HookTiming()).add(elapsed)


def _type_name(kind: type) -> str:
    return "None" if kind is type(None) else kind.__name__
