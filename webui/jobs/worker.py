"""A worker: one device, the resources a handler needs there (its model manager), and one thread.

diffusers pipelines are not safe to call concurrently, and a model switch must not happen in the middle
of a generation, so each device runs one job at a time; several devices (or two CPU workers) mean
several workers taking jobs from one scheduler. A handler runs its sub-steps (X/Y/Z cells, batch folders)
inline on its worker, so no job ever waits for another job and nothing can deadlock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from webui.jobs.device_faults import GpuFault, explain_device_fault, probe_device
from webui.jobs.job import Job
from webui.jobs.out_of_memory import explain_out_of_memory

log = logging.getLogger(__name__)

# After a GPU fault the worker probes its device after these waits, doubling up to the last (seconds).
RECOVERY_FIRST_WAIT_S = 1.0
RECOVERY_MAX_WAIT_S = 60.0


class JobSource(Protocol):
    """What a worker needs from the scheduler: the next job for it (None: stop) and a place for outcomes."""

    def next_job_for(self, worker: Worker) -> Job | None: ...

    def finish(self, job: Job, worker: Worker, result: Any, error: BaseException | None) -> None: ...

    def retire(self, worker: Worker) -> None: ...

    def rest(self, worker: Worker, seconds: float) -> bool: ...


def _holds_nothing() -> str | None:
    return None


def _holds_no_controls() -> frozenset[str]:
    return frozenset()


class Worker:
    """Runs jobs on `device` with `resources` (e.g. a ModelManager). `current_model_key` says which
    checkpoint the resources hold now and `current_control_keys` which control models (ControlNet files)
    are built for them, so the scheduler can hand a job to the worker that already has its models; both
    are called from other threads and must be quick and must not block."""

    def __init__(self, name: str, device: Any, resources: Any,
                 current_model_key: Callable[[], str | None] = _holds_nothing,
                 current_control_keys: Callable[[], frozenset[str]] = _holds_no_controls,
                 probe: Callable[[], str | None] | None = None):
        self.name = name
        self.device = device
        self.resources = resources
        self._current_model_key = current_model_key
        self._current_control_keys = current_control_keys
        self.probe = probe or (lambda: probe_device(self.device))   # None: the device computes correctly
        self._thread: threading.Thread | None = None
        self._in_handler = False
        self.fault: str | None = None   # while set, the worker waits for its GPU and takes no jobs

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, device={self.device!r})"

    def current_model_key(self) -> str | None:
        """The model the resources hold; None when unknown (a failing callable only costs the affinity)."""
        try:
            return self._current_model_key()
        except Exception:
            log.exception("worker %s could not tell its current model", self.name)
            return None

    def current_control_keys(self) -> frozenset[str]:
        """The control models held; empty when unknown (a failing callable only costs the affinity)."""
        try:
            return frozenset(self._current_control_keys())
        except Exception:
            log.exception("worker %s could not tell its control models", self.name)
            return frozenset()

    def start(self, source: JobSource) -> None:
        """Start the thread that takes jobs from `source` until it answers None."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.name} is running already")
        self._thread = threading.Thread(target=self._work, args=(source,), name=f"worker-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; False if it still runs after `timeout`."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def accepts(self, job: Job) -> bool:
        """Whether this worker can run `job` at all (a local worker runs every kind; a remote one only the
        kinds whose requests and results can travel: see webui.jobs.ray_workers)."""
        return True

    @property
    def takes_parts(self) -> bool:
        """Whether this worker may run parts of a split job: their requests (RequestPart, CfgSplitPart, XyzPart)
        hold in-process objects, so only workers of this process take them."""
        return True

    @property
    def lost(self) -> bool:
        """True once the worker can take no more jobs (its remote process died); it then leaves the scheduler."""
        return False

    def run_job(self, job: Job) -> Any:
        """Run `job`'s handler here, on the worker's thread with its resources."""
        return job.kind_entry.run(self, job.request, job.control)

    def runs_a_handler_here(self) -> bool:
        """True when called from inside a handler this worker runs (the scheduler refuses nested jobs)."""
        return self._in_handler and threading.current_thread() is self._thread

    def _work(self, source: JobSource) -> None:
        while (job := source.next_job_for(self)) is not None:
            result: Any = None
            error: BaseException | None = None
            self._in_handler = True
            try:
                result = self.run_job(job)
            except BaseException as failure:  # the worker must survive any job failure
                error = explain_device_fault(explain_out_of_memory(failure, self.device), self.device)
            finally:
                self._in_handler = False
            try:
                source.finish(job, self, result, error)
            except Exception:  # e.g. the store's disk is full: keep serving the queue
                log.exception("worker %s could not record the end of job %s", self.name, job.job_id)
            if self.lost:
                source.retire(self)
                return
            if isinstance(error, GpuFault) and not self._wait_for_device(source, str(error)):
                return

    def _wait_for_device(self, source: JobSource, fault: str) -> bool:
        """After a GPU fault: take no jobs (the other workers go on) until a probe of the device succeeds,
        probing after waits that double up to RECOVERY_MAX_WAIT_S. False if the scheduler shut down first."""
        self.fault = fault
        log.warning("worker %s takes no jobs until its device %s answers again: %s", self.name, self.device, fault)
        wait = RECOVERY_FIRST_WAIT_S
        while source.rest(self, wait):
            problem = self.probe()
            if problem is None:
                self.fault = None
                log.warning("worker %s: device %s answers again; the worker takes jobs again", self.name, self.device)
                return True
            log.warning("worker %s: device %s still fails (%s); next probe in %.0f s", self.name, self.device,
                        problem, min(2 * wait, RECOVERY_MAX_WAIT_S))
            wait = min(2 * wait, RECOVERY_MAX_WAIT_S)
        return False
