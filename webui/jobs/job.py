"""The handle of one scheduled job: what callers wait on, watch and stop.

It keeps the interface of the old queue's `Job` (wait, result, done, cancelled, add_done_callback,
control, job_id, kind, owner) so that the UI and the A1111 routes can move to the scheduler without
rewriting their waiting code; the id is now a string, because it appears in URLs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from webui.jobs.errors import JobCancelled
from webui.jobs.events import EventLog
from webui.jobs.progress import JobControl
from webui.jobs.spec import JobKind, JobSpec

log = logging.getLogger(__name__)

QUEUED, RUNNING = "queued", "running"
DONE, FAILED, CANCELLED, INTERRUPTED = "done", "failed", "cancelled", "interrupted"
FINAL_STATES = (DONE, FAILED, CANCELLED, INTERRUPTED)


class Job:
    """A queued, running or finished job. Its state fields are written by the scheduler under its lock."""

    def __init__(self, job_id: str, spec: JobSpec, kind: JobKind, control: JobControl, events: EventLog,
                 created_at: float, cost: float):
        self.job_id = job_id
        self.spec = spec
        self.kind_entry = kind
        self.control = control
        self.events = events
        self.created_at = created_at
        self.cost = cost
        self.model_key = kind.model_key(spec.request)  # asked once: the scheduler compares it on every pick
        self.control_keys = frozenset(kind.control_keys(spec.request))  # likewise
        self.state = QUEUED
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.worker_name: str | None = None
        self.error_text: str | None = None
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Job], None]] = []
        self._callbacks_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, kind={self.kind!r}, owner={self.owner!r}, state={self.state!r})"

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def owner(self) -> str | None:
        return self.spec.owner

    @property
    def request(self) -> Any:
        return self.spec.request

    @property
    def summary(self) -> str:
        """The kind's one-line description of the request (for the Queue tab)."""
        return self.kind_entry.summary(self.spec.request)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self._error, JobCancelled)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The handler's return value (also for an interrupted job, which returns what it had); re-raises
        the handler's exception with its own type, or JobCancelled."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} is still {self.state}")
        if self._error is not None:
            raise self._error
        return self._result

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call `callback(job)` once the job has finished (at once if it has). It runs on the worker
        thread, so it must only hand the news on (e.g. `loop.call_soon_threadsafe`), never block."""
        with self._callbacks_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        """Publish the outcome and run the callbacks (called by the scheduler, outside its lock)."""
        self._result, self._error = result, error
        with self._callbacks_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a watcher's bug must not stop the worker
                log.exception("done-callback of job %s failed", self.job_id)
