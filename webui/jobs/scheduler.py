"""The scheduler: one queue of job specs for all workers, with ids, positions, ETA, cancel, bounds,
durable records and per-job event streams.

The UI, the A1111 routes and the job API only submit specs and watch jobs by id; workers (one per
device) take jobs from here. Everything a caller may see (order, positions, states) changes under one
lock, so two workers never take the same job and a cancelled job never runs. Owner checks are the
caller's business (`Job.owner` and `User.may_act_on`); the scheduler only records owners and counts
them for the per-owner bound.

Wiring (the composition root does this once):

    kinds = JobKinds([JobKind("txt2img", run=..., encode=..., decode=..., model_key=..., cost=...)])
    scheduler = Scheduler(kinds, JobStore(data / "jobs.sqlite3", keep_finished=1000, keep_days=30),
                          max_jobs=..., max_jobs_per_owner=..., preview_every_n_steps=...)
    scheduler.add_worker(Worker("cpu0", device, manager, current_model_key=manager_key))
    job = scheduler.submit(JobSpec("txt2img", request, owner=user.name))   # then job.result(), or
    scheduler.position(job.job_id); scheduler.eta(job.job_id); scheduler.events(job.job_id, after_seq)
    scheduler.stop(job.job_id)                      # cancel if waiting, interrupt if running
    scheduler.shutdown(interrupt_running=True)      # at exit; queued jobs stay in the store

Splitting: when a worker takes a job whose kind has a `Splitter` while other workers are free and no other
job waits for them, the job is split into parts that run at once on this worker and the free ones (those
holding the job's checkpoint first); see `webui.jobs.fanout`. `split_jobs=False` turns that off.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from webui.jobs.errors import JobCancelled, SchedulerClosed, UnknownJob
from webui.jobs.eta import SAMPLES_PER_KIND, SpeedBook
from webui.jobs.fanout import FanOut
from webui.jobs.events import FINISHED, PREVIEW, PROGRESS, QUEUED, STARTED, EventLog, JobEvent
from webui.jobs.job import CANCELLED, DONE, FAILED, INTERRUPTED, RUNNING, Job
from webui.jobs.lineup import Lineup
from webui.jobs.progress import JobControl
from webui.jobs.spec import JobKind, JobKinds, JobSpec
from webui.jobs.store import JobRecord, JobStore
from webui.jobs.worker import Worker

log = logging.getLogger(__name__)


class Scheduler:
    """Jobs in submission order for the workers added with `add_worker`.

    `max_jobs` and `max_jobs_per_owner` count running and waiting jobs (None: no bound); jobs without
    an owner (the app's own) count towards the total only. Queued jobs found in `store` are queued again
    at construction; they run once a worker is added.
    """

    def __init__(self, kinds: JobKinds, store: JobStore, max_jobs: int | None = None,
                 max_jobs_per_owner: int | None = None, clock: Callable[[], float] = time.time,
                 preview_every_n_steps: int = 0, max_events_per_job: int = 256, finished_in_memory: int = 100,
                 recover_stored_jobs: bool = True, split_jobs: bool = True):
        self._kinds = kinds
        self._store = store
        self._clock = clock
        self._preview_every = preview_every_n_steps
        self._max_events = max_events_per_job
        self._changed = threading.Condition()  # guards the lineup, the worker lists and the flag below
        self._line = Lineup(max_jobs, max_jobs_per_owner, finished_in_memory)
        self._workers: list[Worker] = []
        self._finish_listeners: list[Callable[[str], None]] = []
        self._idle: list[Worker] = []
        self._split_jobs = split_jobs
        self._reserved: set[Worker] = set()         # free workers kept for a job being split right now
        self._assigned: dict[Worker, Job] = {}      # a part handed to a free worker, not yet taken
        self._fanouts: dict[str, FanOut] = {}       # split jobs by id (running)
        self._part_of: dict[Job, FanOut] = {}       # parts not yet ended -> their job's fan-out
        self._closed = False
        self._speeds = SpeedBook(store.seconds_per_unit(SAMPLES_PER_KIND))
        if recover_stored_jobs:
            self.recover_stored_jobs()

    @property
    def kinds(self) -> JobKinds:
        """The kinds table; services (and extensions) register their kinds here before jobs of them arrive."""
        return self._kinds

    # ---- submitting ----
    def submit(self, spec: JobSpec, webhook_url: str | None = None) -> Job:
        """Queue a job. UnknownJobKind for a kind with no handler, ValueError for a request its kind
        cannot store, QueueFullError when the server or this owner has no room left (nothing queued).
        `webhook_url` is stored with the job for the finish listeners (see `webui.jobs.webhooks`)."""
        if any(worker.runs_a_handler_here() for worker in self.workers):
            raise RuntimeError("a job cannot submit another job (with every worker busy it would wait forever); "
                               "run the sub-step inline on the worker that runs this job")
        kind = self._kinds.get(spec.kind)
        encoded = kind.encode(spec.request)
        try:
            json.dumps(encoded)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the {spec.kind} job's request cannot be stored: {error}") from error
        cost, summary = float(kind.cost(spec.request)), kind.summary(spec.request)
        with self._changed:
            if self._closed:
                raise SchedulerClosed("the server is shutting down and accepts no new jobs")
            self._line.check_room(spec.owner)
            job = self._new_job(spec, kind, uuid.uuid4().hex, self._clock(), cost)
            self._store.add(JobRecord(job.job_id, spec.kind, spec.owner, encoded, "queued", cost, summary,
                                      job.created_at, webhook={"url": webhook_url} if webhook_url else None))
            self._enqueue(job)
        return job

    def run(self, spec: JobSpec, timeout: float | None = None) -> Any:
        """Submit and wait for the result (for callers that have nothing to show meanwhile)."""
        return self.submit(spec).result(timeout)

    def _new_job(self, spec: JobSpec, kind: JobKind, job_id: str, created_at: float, cost: float) -> Job:
        control = JobControl(preview_every_n_steps=self._preview_every)
        job = Job(job_id, spec, kind, control, EventLog(self._max_events, self._clock), created_at, cost)
        emitted: dict[str, Any] = {"progress": None, "preview": 0}
        control.listen(lambda: self._report_progress(job, emitted))
        return job

    def _enqueue(self, job: Job) -> None:
        self._line.waiting.append(job)
        job.events.append(QUEUED, position=len(self._line.waiting))
        self._changed.notify_all()

    def recover_stored_jobs(self) -> None:
        """Queue again the jobs a previous process had queued (a job it was running is marked interrupted);
        one whose kind is unknown or that cannot be decoded is failed. Done at construction unless the
        kinds table is filled afterwards (`recover_stored_jobs=False`), then called once it is."""
        for record in self._store.recover():
            try:
                kind = self._kinds.get(record.kind)
                spec = JobSpec(record.kind, kind.decode(record.request), record.owner)
                job = self._new_job(spec, kind, record.job_id, record.created_at, record.cost)
            except Exception as error:
                log.warning("queued job %s (%s) could not be restored: %s", record.job_id, record.kind, error)
                self._store.mark_finished(record.job_id, FAILED, self._clock(),
                                          error=f"could not be restored after a restart: {error}")
                continue
            with self._changed:
                self._enqueue(job)

    # ---- workers ----
    def add_worker(self, worker: Worker) -> None:
        """Start `worker`'s thread; it takes jobs from now on."""
        with self._changed:
            if self._closed:
                raise SchedulerClosed("the scheduler is shut down")
            self._workers.append(worker)
        worker.start(self)

    def retire(self, worker: Worker) -> None:
        """Take a worker that can run no more jobs (a remote worker whose process died) out of the
        scheduler: it is no longer counted for ETAs or idleness, and its thread has ended."""
        with self._changed:
            if worker in self._workers:
                self._workers.remove(worker)
            self._changed.notify_all()
        log.warning("worker %s is lost; the scheduler sends it no more jobs", worker.name)

    def rest(self, worker: Worker, seconds: float) -> bool:
        """Keep `worker` out of the line for `seconds` (it waits for its GPU to recover: not idle, so it is
        handed no job and no part); False once the scheduler is shut down."""
        with self._changed:
            return not self._changed.wait_for(lambda: self._closed, timeout=seconds)

    @property
    def workers(self) -> list[Worker]:
        with self._changed:
            return list(self._workers)

    def next_job_for(self, worker: Worker) -> Job | None:
        """Block until a job is there for `worker` (None once the scheduler is shut down). A free worker
        takes a part of a split job handed to it, else the first waiting job, unless another free worker
        already holds that job's model. A job taken while other workers are free may be split: the worker
        then gets its first part and the free workers the others."""
        with self._changed:
            self._idle.append(worker)
            self._changed.notify_all()  # for wait_until_idle
            job: Job | None = None
            try:
                while (job := self._assigned.pop(worker, None)) is None and not self._closed:
                    if worker not in self._reserved:
                        job = self._line.pick(worker, self._free_workers())
                        if job is not None:
                            break
                    self._changed.wait()
            finally:
                self._idle.remove(worker)
            if job is None:
                return None
            if job in self._part_of:  # a part handed to this worker: its job was started by another
                return job
            self._line.start(job)
            job.state, job.started_at = RUNNING, self._clock()
            helpers = self._helpers_for(job) if worker.takes_parts else []  # parts run in this process
            self._reserved.update(helpers)
        requests = self._split(job, 1 + len(helpers)) if helpers else None  # the kind's code: outside the lock
        with self._changed:
            self._reserved.difference_update(helpers)
            run_here, names = job, [worker.name]
            if requests is not None and not self._closed:
                fanout = FanOut(job, requests, job.kind_entry.splitter, self._preview_every, self._clock)
                self._fanouts[job.job_id] = fanout
                for part in fanout.parts:
                    self._part_of[part] = fanout
                for part, helper in zip(fanout.parts[1:], helpers):
                    self._assigned[helper] = part
                    names.append(helper.name)
                run_here = fanout.parts[0]
            job.worker_name = ", ".join(names)
            job.events.append(STARTED, worker=job.worker_name)
            self._guarded(self._store.mark_running, job.job_id, job.started_at, job.worker_name)
            self._changed.notify_all()
            return run_here

    def _helpers_for(self, job: Job) -> list[Worker]:
        """The free workers that may take parts of `job` (none unless its kind splits and splitting is on; see
        `Lineup.helpers_for`). Called under the lock."""
        if not self._split_jobs or job.kind_entry.splitter is None:
            return []
        return self._line.helpers_for(job, self._free_workers())

    def _free_workers(self) -> list[Worker]:
        """Idle workers neither kept for a job being split nor handed a part (under the lock)."""
        return [w for w in self._idle if w not in self._reserved and w not in self._assigned]

    def _split(self, job: Job, count: int) -> list[Any] | None:
        """The part requests of `job` for `count` workers; None when its kind does not split it this time
        (or the split failed: then the job runs whole, and meets the same problem there, with its message)."""
        try:
            requests = list(job.kind_entry.splitter.split(job.request, count))  # type: ignore[union-attr]
        except Exception:
            log.exception("job %s (%s) could not be split; it runs on one worker", job.job_id, job.kind)
            return None
        return requests[:count] if len(requests) > 1 else None

    def finish(self, job: Job, worker: Worker, result: Any, error: BaseException | None) -> None:
        """Record a job's outcome (called by the worker that ran it, for a part of a split job too)."""
        with self._changed:
            fanout = self._part_of.pop(job, None)
        if fanout is not None:
            self._part_ended(fanout, job, worker, result, error)
            return
        self._finish_whole(job, result, error)

    def _part_ended(self, fanout: FanOut, part: Job, worker: Worker, result: Any, error: BaseException | None) -> None:
        """A part ended; after the last one the job ends: failed with the first failed part's error, else
        with the parts' results gathered by its kind (on this worker's thread)."""
        if not fanout.part_ended(part, worker.name, result, error):
            return
        with self._changed:
            self._fanouts.pop(fanout.whole.job_id, None)
        failure = fanout.failure()
        if failure is not None:
            self._finish_whole(fanout.whole, None, failure.error, failure.text)
            return
        try:
            gathered, gather_error = fanout.splitter.gather(fanout.whole.request, fanout.results()), None
        except Exception as problem:
            log.exception("the parts of job %s could not be gathered", fanout.whole.job_id)
            gathered, gather_error = None, problem
        self._finish_whole(fanout.whole, gathered, gather_error)

    def _finish_whole(self, job: Job, result: Any, error: BaseException | None, error_text: str | None = None) -> None:
        state = FAILED if error is not None else INTERRUPTED if job.control.interrupted else DONE
        if error is not None and error_text is None:
            error_text = f"{type(error).__name__}: {error}"
        job.control.finish(state)
        recorded = None
        if error is None:
            try:
                recorded = job.kind_entry.result_record(result)
                json.dumps(recorded)
            except Exception:
                log.exception("the result of job %s could not be recorded", job.job_id)
                recorded = None
        now = self._clock()
        with self._changed:
            job.state, job.finished_at, job.error_text = state, now, error_text
            self._line.end(job)
            if state == DONE and job.started_at is not None and job.cost > 0:
                self._speeds.add(job.kind, (now - job.started_at) / job.cost)
            self._changed.notify_all()
        self._record_end(job, state, now, recorded, error_text)
        job._settle(result, error)

    def _record_end(self, job: Job, state: str, now: float, result: Any, error_text: str | None) -> None:
        pruned = self._guarded(self._store.mark_finished, job.job_id, state, now, _progress_text(job.control),
                               result, error_text) or []
        for record in pruned:
            if record.kind in self._kinds:
                self._guarded(self._kinds.get(record.kind).forget, record.request)
        job.events.append(FINISHED, state=state, error=error_text)
        for listener in list(self._finish_listeners):
            self._guarded(listener, job.job_id)

    def add_finish_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` after every job ended and its record was written (on the worker's
        thread, or the cancelling caller's: hand slow work to another thread)."""
        self._finish_listeners.append(listener)

    def record_webhook_status(self, job_id: str, status: str) -> None:
        self._guarded(self._store.set_webhook_status, job_id, status)

    def link_resumed(self, job_id: str, new_job_id: str) -> bool:
        """Record that `new_job_id` continues the finished job `job_id` (its record then links to it); False
        when that job already has a successor."""
        return self._store.link_resumed(job_id, new_job_id)

    def _guarded(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a store or clean-up call whose failure must not stop the queue (it is logged)."""
        try:
            return action(*args)
        except Exception:
            log.exception("%s failed; the scheduler carries on", getattr(action, "__name__", action))
            return None

    def _report_progress(self, job: Job, emitted: dict[str, Any]) -> None:
        """JobControl's listener: new step or batch -> `progress` event, new preview -> `preview` event."""
        try:
            snapshot = job.control.snapshot()
            progress = (snapshot.step, snapshot.total_steps, snapshot.batch_index, snapshot.batch_count)
            if progress != emitted["progress"]:
                emitted["progress"] = progress
                job.events.append(PROGRESS, step=snapshot.step, total=snapshot.total_steps,
                                  batch_index=snapshot.batch_index, batch_count=snapshot.batch_count)
            if snapshot.preview_serial != emitted["preview"]:
                emitted["preview"] = snapshot.preview_serial
                job.events.append(PREVIEW, serial=snapshot.preview_serial)
        except Exception:  # a progress report must never break the generation that sent it
            log.exception("progress event of job %s failed", job.job_id)

    # ---- stopping jobs ----
    def cancel(self, job_id: str) -> bool:
        """Remove a waiting job; it never runs. False when it runs or has finished; UnknownJob if no such job."""
        with self._changed:
            job = self._line.take_waiting(job_id)
            if job is not None:
                job.state, job.finished_at = CANCELLED, self._clock()
                self._line.end(job)
                self._changed.notify_all()
        if job is None:
            self._require_known(job_id)
            return False
        job.control.finish(CANCELLED)
        self._record_end(job, CANCELLED, job.finished_at or self._clock(), None, "cancelled before it started")
        job._settle(None, JobCancelled(f"job {job_id} was cancelled before it started"))
        return True

    def interrupt(self, job_id: str) -> bool:
        """Ask a running job to stop at its next step. False when it is not running; UnknownJob if no such job."""
        return self._signal(job_id, JobControl.interrupt)

    def skip(self, job_id: str) -> bool:
        """Ask a running job to end its current batch. False when it is not running; UnknownJob if no such job."""
        return self._signal(job_id, JobControl.skip)

    def stop(self, job_id: str) -> str | None:
        """Cancel a waiting job or interrupt a running one (what a client that leaves, or `DELETE` of a
        job, wants): "cancelled", "interrupted", or None when it had finished already."""
        if self.cancel(job_id):
            return CANCELLED
        return INTERRUPTED if self.interrupt(job_id) else None

    def _signal(self, job_id: str, action: Callable[[JobControl], None]) -> bool:
        with self._changed:
            job = self._line.running.get(job_id)
            controls = self._controls_of(job) if job is not None else []
        if job is None:
            self._require_known(job_id)
            return False
        for control in controls:
            action(control)
        return True

    def _controls_of(self, job: Job) -> list[JobControl]:
        """What interrupt and skip act on: the job's control, and its parts' when it is split (under the lock)."""
        fanout = self._fanouts.get(job.job_id)
        return fanout.controls() if fanout is not None else [job.control]

    def _require_known(self, job_id: str) -> None:
        if self.get(job_id) is None and self._store.get(job_id) is None:
            raise UnknownJob(f"no job with id {job_id!r}")

    # ---- looking ----
    def get(self, job_id: str) -> Job | None:
        """The live handle of a queued, running or recently finished job (None otherwise: see `record`)."""
        with self._changed:
            return self._line.get(job_id)

    def record(self, job_id: str) -> JobRecord | None:
        """The stored record of any job the retention limits kept."""
        return self._store.get(job_id)

    def history(self, owner: str | None = None, states: tuple[str, ...] | None = None,
                limit: int = 100, kind: str | None = None) -> list[JobRecord]:
        """Stored records, newest first (queued, running and finished)."""
        return self._store.history(owner, states, limit, kind)

    def jobs(self) -> list[Job]:
        """The live queue: running jobs (in start order), then the waiting ones in order."""
        with self._changed:
            return self._line.live()

    def position(self, job_id: str) -> int | None:
        """0 while the job runs, 1.. while it waits (1 = next), None otherwise."""
        with self._changed:
            return self._line.position(job_id)

    def eta(self, job_id: str) -> float | None:
        """Seconds until the job should finish, from the measured speed of finished jobs of each kind
        involved; None when one of them has no measurement yet, or the job is not queued or running. A worker
        waiting for its failed GPU does not count."""
        with self._changed:
            serving = sum(1 for worker in self._workers if worker.fault is None)
            return self._line.eta(job_id, self._clock(), self._speeds, max(1, serving))

    def events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        """The job's events after `after_seq`. A job known only from the store (finished before a
        restart, or long ago) has one event: `finished` with its state. UnknownJob if no such job."""
        job = self.get(job_id)
        return job.events.after(after_seq) if job is not None else self._stored_events(job_id, after_seq)

    def wait_events(self, job_id: str, after_seq: int, timeout: float | None) -> list[JobEvent]:
        """Like `events`, but wait up to `timeout` seconds for a new one; an empty list: nothing new."""
        job = self.get(job_id)
        return job.events.wait_after(after_seq, timeout) if job is not None else self._stored_events(job_id, after_seq)

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after each new event of a live job (see `EventLog.subscribe`); returns the
        unsubscribe function. A job known only from the store gets no new events: a no-op is returned.
        UnknownJob if no such job."""
        job = self.get(job_id)
        if job is not None:
            return job.events.subscribe(callback)
        self._stored_events(job_id, 0)  # raises UnknownJob
        return _nothing

    def _stored_events(self, job_id: str, after_seq: int) -> list[JobEvent]:
        record = self._store.get(job_id)
        if record is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        if after_seq >= 1 or record.state not in (DONE, FAILED, CANCELLED, INTERRUPTED):
            return []
        return [JobEvent(1, FINISHED, {"state": record.state, "error": record.error}, record.finished_at or 0.0)]

    # ---- the running job and the caller's place, as A1111's progress route and the UI show them ----
    @property
    def current(self) -> Job | None:
        """The running job that started first (None when all workers are idle)."""
        with self._changed:
            return next(iter(self._line.running.values()), None)

    @property
    def pending(self) -> int:
        """How many jobs wait for a worker (running ones not counted)."""
        with self._changed:
            return len(self._line.waiting)

    def first_position_of(self, owner: str) -> int | None:
        """Where the owner's first job stands (0 = running, 1.. = waiting), None when they have none."""
        with self._changed:
            return self._line.first_position_of(owner)

    def interrupt_current(self, may_act_on: Callable[[str | None], bool] | None = None) -> bool:
        """Interrupt every running job whose owner `may_act_on` allows (all without it); True if any."""
        return self._signal_running(JobControl.interrupt, may_act_on)

    def skip_current(self, may_act_on: Callable[[str | None], bool] | None = None) -> bool:
        """Skip the current batch of the running jobs `may_act_on` allows; True if any."""
        return self._signal_running(JobControl.skip, may_act_on)

    def _signal_running(self, action: Callable[[JobControl], None],
                        may_act_on: Callable[[str | None], bool] | None) -> bool:
        with self._changed:
            chosen = [job for job in self._line.running.values() if may_act_on is None or may_act_on(job.owner)]
            controls = [control for job in chosen for control in self._controls_of(job)]
        for control in controls:
            action(control)
        return bool(chosen)

    # ---- lifecycle ----
    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job waits or runs and every worker is free; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._line.live() and len(self._idle) == len(self._workers), timeout)

    def shutdown(self, interrupt_running: bool = False, timeout: float = 30.0) -> None:
        """Stop accepting jobs, let the running ones finish (or interrupt them), and join the workers.
        Waiting jobs stay queued in the store and run after the next start. The store stays open (its
        owner closes it)."""
        with self._changed:
            self._closed = True
            if interrupt_running:
                for job in self._line.running.values():
                    for control in self._controls_of(job):
                        control.interrupt()
            self._changed.notify_all()
            workers = list(self._workers)
        for worker in workers:
            if not worker.join(timeout):
                log.warning("worker %s did not stop within %.0f s", worker.name, timeout)


def _nothing() -> None:
    return None


def _progress_text(control: JobControl) -> str:
    """A short summary of how far the job got, kept in its record (e.g. "step 20/20, batch 2/2")."""
    snapshot = control.snapshot()
    if snapshot.step == 0 and snapshot.batch_index == 0 and not snapshot.message:
        return ""
    text = f"step {snapshot.step}/{snapshot.total_steps}"
    if snapshot.batch_count > 1:
        text += f", batch {snapshot.batch_index + 1}/{snapshot.batch_count}"
    return f"{text}: {snapshot.message}" if snapshot.message else text
