"""One job queue, one worker thread per device: every GPU job (generation, model switch) runs here.

diffusers pipelines are not safe to call concurrently, and a model switch must not happen in the
middle of a generation; running everything on one worker makes overlapping API calls well defined:
they wait their turn in submission order. The UI and the API only submit and watch.

The queue is bounded (in total and per owner) so that a flood of requests is refused at the door
instead of piling up work nobody will wait for; a job that is still waiting can be cancelled and is
then never run. Each job records its owner (a user name) so that only they, or an admin, see its
preview and stop it; jobs the app submits for itself have no owner.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from webui.jobs.progress import JobControl

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """Raised by `Job.result()` when the job's function raised; `__cause__` holds the original error."""


class JobCancelled(RuntimeError):
    """Raised by `Job.result()` for a job that was cancelled before the worker started it."""


class QueueFullError(RuntimeError):
    """The queue holds as many jobs as it may. `per_owner` tells whether the owner's own share is full
    (they should wait for their jobs: HTTP 429) or the whole server is (everyone waits: HTTP 503)."""

    def __init__(self, message: str, per_owner: bool):
        super().__init__(message)
        self.per_owner = per_owner


@dataclass
class Job:
    """A unit of GPU work and its outcome."""

    job_id: int
    kind: str
    function: Callable[[JobControl], Any]
    control: JobControl
    owner: str | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _result: Any = None
    _error: BaseException | None = None
    _callbacks: list[Callable[["Job"], None]] = field(default_factory=list, repr=False)
    _callbacks_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self._error, JobCancelled)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; re-raises its exception (user errors keep their type)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running")
        if self._error is not None:
            raise self._error
        return self._result

    def add_done_callback(self, callback: Callable[["Job"], None]) -> None:
        """Call `callback(job)` once the job has finished (at once if it has). It runs on the worker
        thread, so it must only hand the news on (e.g. `loop.call_soon_threadsafe`), never block."""
        with self._callbacks_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        with self._callbacks_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a watcher's bug must not stop the worker
                log.exception("done-callback of job %s failed", self.job_id)


class JobQueue:
    """FIFO of jobs executed by a single daemon worker thread, bounded in total and per owner.

    `max_jobs` and `max_jobs_per_owner` count the running job and the waiting ones; None means no
    bound. Jobs without an owner (the app's own, such as the warm start) count towards the total only.
    """

    def __init__(self, preview_every_n_steps: int = 2, max_jobs: int | None = None,
                 max_jobs_per_owner: int | None = None):
        self._preview_every = preview_every_n_steps
        self._max_jobs = max_jobs
        self._max_per_owner = max_jobs_per_owner
        self._pending: collections.deque[Job] = collections.deque()
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="gpu-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, function: Callable[[JobControl], Any], owner: str | None = None) -> Job:
        """Queue a job; QueueFullError (nothing queued) when the server or this owner has no room left."""
        with self._changed:
            self._check_room(owner)
            job = Job(next(self._ids), kind, function, JobControl(preview_every_n_steps=self._preview_every),
                      owner=owner)
            self._pending.append(job)
            self._changed.notify_all()
        return job

    def run(self, kind: str, function: Callable[[JobControl], Any], timeout: float | None = None,
            owner: str | None = None) -> Any:
        """Submit and wait for the result (for callers that have nothing to show meanwhile)."""
        return self.submit(kind, function, owner).result(timeout)

    def _check_room(self, owner: str | None) -> None:
        jobs = list(self._pending) + ([self._current] if self._current is not None else [])
        if owner is not None and self._max_per_owner is not None:
            mine = sum(1 for job in jobs if job.owner == owner)
            if mine >= self._max_per_owner:
                raise QueueFullError(
                    f"you already have {mine} job(s) queued or running, the most one user may have "
                    f"({self._max_per_owner}); wait until one finishes", per_owner=True)
        if self._max_jobs is not None and len(jobs) >= self._max_jobs:
            raise QueueFullError(f"the server's queue is full ({len(jobs)} jobs); try again later", per_owner=False)

    @property
    def current(self) -> Job | None:
        with self._changed:
            return self._current

    @property
    def pending(self) -> int:
        """How many jobs wait for the worker (the running one not counted)."""
        with self._changed:
            return len(self._pending)

    def position(self, job: Job) -> int | None:
        """0 while the job runs, 1.. while it waits (1 = next), None once it has finished or was cancelled."""
        with self._changed:
            if self._current is job:
                return 0
            for place, waiting in enumerate(self._pending, start=1):
                if waiting is job:
                    return place
            return None

    def first_position_of(self, owner: str) -> int | None:
        """Where the owner's first job stands (0 = running, 1.. = waiting), None when they have none."""
        with self._changed:
            if self._current is not None and self._current.owner == owner:
                return 0
            return next((place for place, job in enumerate(self._pending, start=1) if job.owner == owner), None)

    def cancel(self, job: Job) -> bool:
        """A waiting job is removed and never runs; a running one is interrupted. False when it had finished."""
        with self._changed:
            if self._current is job:
                job.control.interrupt()
                return True
            try:
                self._pending.remove(job)
            except ValueError:
                return False
        job.control.finish("cancelled")
        job._finish(error=JobCancelled(f"job {job.job_id} was cancelled before it started"))
        return True

    def interrupt_current(self, may_act_on: Callable[[str | None], bool] | None = None) -> bool:
        """Interrupt the running job; with `may_act_on` (e.g. `User.may_act_on`) only if it allows the
        job's owner. True when a job was interrupted."""
        with self._changed:
            job = self._current
            if job is None or (may_act_on is not None and not may_act_on(job.owner)):
                return False
            job.control.interrupt()
            return True

    def skip_current(self, may_act_on: Callable[[str | None], bool] | None = None) -> bool:
        """Skip the running job's current batch, under the same rule as `interrupt_current`."""
        with self._changed:
            job = self._current
            if job is None or (may_act_on is not None and not may_act_on(job.owner)):
                return False
            job.control.skip()
            return True

    def shutdown(self) -> None:
        """Let the jobs already queued run, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join(timeout=30)

    def _next_job(self) -> Job | None:
        with self._changed:
            while not self._pending and not self._closed:
                self._changed.wait()
            if not self._pending:
                return None
            self._current = self._pending.popleft()
            return self._current

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.function(job.control)
                job.control.finish("interrupted" if job.control.interrupted else "done")
            except BaseException as failure:  # the worker must survive any job failure
                error = failure
                job.control.finish("failed")
            finally:
                with self._changed:
                    self._current = None
                job._finish(result, error)
