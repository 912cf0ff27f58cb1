"""One job queue, one worker thread per device: every GPU job (generation, model switch) runs here.

diffusers pipelines are not safe to call concurrently, and a model switch must not happen in the
middle of a generation; running everything on one worker makes overlapping API calls well defined:
they wait their turn in submission order. The UI and the API only submit and watch.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from webui.jobs.progress import JobControl


class JobFailed(RuntimeError):
    """Raised by `Job.result()` when the job's function raised; `__cause__` holds the original error."""


@dataclass
class Job:
    """A unit of GPU work and its outcome."""

    job_id: int
    kind: str
    function: Callable[[JobControl], Any]
    control: JobControl
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _result: Any = None
    _error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; re-raises its exception (user errors keep their type)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running")
        if self._error is not None:
            raise self._error
        return self._result


class JobQueue:
    """FIFO of jobs executed by a single daemon worker thread."""

    def __init__(self, preview_every_n_steps: int = 2):
        self._preview_every = preview_every_n_steps
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="gpu-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, function: Callable[[JobControl], Any]) -> Job:
        job = Job(next(self._ids), kind, function, JobControl(preview_every_n_steps=self._preview_every))
        self._queue.put(job)
        return job

    def run(self, kind: str, function: Callable[[JobControl], Any], timeout: float | None = None) -> Any:
        """Submit and wait for the result (for callers that have nothing to show meanwhile)."""
        return self.submit(kind, function).result(timeout)

    @property
    def current(self) -> Job | None:
        with self._lock:
            return self._current

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def interrupt_current(self) -> bool:
        job = self.current
        if job:
            job.control.interrupt()
        return job is not None

    def skip_current(self) -> bool:
        job = self.current
        if job:
            job.control.skip()
        return job is not None

    def shutdown(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._current = job
            try:
                job._result = job.function(job.control)
                job.control.finish("interrupted" if job.control.interrupted else "done")
            except BaseException as error:  # the worker must survive any job failure
                job._error = error
                job.control.finish("failed")
            finally:
                with self._lock:
                    self._current = None
                job._done.set()
