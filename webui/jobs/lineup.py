"""The order of live jobs: who waits, who runs, and which waiting job a free worker takes.

Kept apart from the scheduler's threads, store and events so that the rules of the queue (FIFO, the
bounds, positions, model affinity: checkpoint, then control models; which free workers help with a split
job; ETA) read in one place. It is plain data and not thread-safe: the scheduler calls it only while holding
its lock.
"""

from __future__ import annotations

import collections

from webui.jobs.errors import QueueFullError
from webui.jobs.eta import SpeedBook, finish_time
from webui.jobs.job import Job
from webui.jobs.worker import Worker


class Lineup:
    """Waiting jobs in submission order, running jobs in start order, and the latest finished ones
    (so that a watcher who asks right after the end still finds the handle)."""

    def __init__(self, max_jobs: int | None, max_jobs_per_owner: int | None, finished_in_memory: int):
        self.waiting: list[Job] = []
        self.running: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._max_jobs = max_jobs
        self._max_per_owner = max_jobs_per_owner
        self._finished_in_memory = finished_in_memory

    def check_room(self, owner: str | None) -> None:
        """QueueFullError when the owner's share or the whole queue (running jobs included) is full;
        jobs without an owner (the app's own) count towards the total only."""
        jobs = self.live()
        if owner is not None and self._max_per_owner is not None:
            mine = sum(1 for job in jobs if job.owner == owner)
            if mine >= self._max_per_owner:
                raise QueueFullError(
                    f"you already have {mine} job(s) queued or running, the most one user may have "
                    f"({self._max_per_owner}); wait until one finishes", per_owner=True)
        if self._max_jobs is not None and len(jobs) >= self._max_jobs:
            raise QueueFullError(f"the server's queue is full ({len(jobs)} jobs); try again later", per_owner=False)

    def pick(self, worker: Worker, idle: list[Worker]) -> Job | None:
        """The job `worker` should take: the first waiting one, unless another idle worker is better placed
        for it (that worker takes it; this one looks further down the line). Better placed: it holds the
        job's checkpoint and this one does not, or, both holding it (or neither), it holds more of the job's
        control models (ControlNets built for its device), which would otherwise be built again here. Jobs
        the worker does not accept (`Worker.accepts`) are left to the others."""
        if not self.waiting:
            return None
        others = [(other, other.current_model_key(), other.current_control_keys())
                  for other in idle if other is not worker]
        mine = (worker.current_model_key(), worker.current_control_keys())
        for job in self.waiting:
            if not worker.accepts(job):  # e.g. a remote worker and a kind that runs only here
                continue
            own = _fit(job, *mine)
            if all(_fit(job, *held) <= own for other, *held in others if other.accepts(job)):
                return job
        return None

    def helpers_for(self, job: Job, free: list[Worker]) -> list[Worker]:
        """Which of the `free` workers may run parts of `job` (just taken, so no longer waiting) at once: only
        those left over once every waiting job has a free worker (splitting one job must not hold up the
        next), the workers holding the job's checkpoint first (the others must load it); never a worker that
        cannot take parts (a remote one)."""
        free = [worker for worker in free if worker.takes_parts and worker.accepts(job)]
        spare = len(free) - len(self.waiting)
        if spare <= 0:
            return []
        holders_first = sorted(free, key=lambda worker: not _fit(job, worker.current_model_key(), frozenset())[0])
        return holders_first[:spare]

    def start(self, job: Job) -> None:
        self.waiting.remove(job)
        self.running[job.job_id] = job

    def take_waiting(self, job_id: str) -> Job | None:
        """Remove a waiting job from the line (it is being cancelled); None if it is not waiting."""
        job = next((waiting for waiting in self.waiting if waiting.job_id == job_id), None)
        if job is not None:
            self.waiting.remove(job)
        return job

    def end(self, job: Job) -> None:
        """The job has finished (or was cancelled): out of the line, into the short memory."""
        self.running.pop(job.job_id, None)
        self._finished[job.job_id] = job
        while len(self._finished) > self._finished_in_memory:
            self._finished.popitem(last=False)

    def get(self, job_id: str) -> Job | None:
        return (self.running.get(job_id) or self._finished.get(job_id)
                or next((job for job in self.waiting if job.job_id == job_id), None))

    def live(self) -> list[Job]:
        return list(self.running.values()) + self.waiting

    def position(self, job_id: str) -> int | None:
        """0 while the job runs, 1.. while it waits (1 = next), None otherwise."""
        if job_id in self.running:
            return 0
        return next((place for place, job in enumerate(self.waiting, 1) if job.job_id == job_id), None)

    def first_position_of(self, owner: str) -> int | None:
        if any(job.owner == owner for job in self.running.values()):
            return 0
        return next((place for place, job in enumerate(self.waiting, 1) if job.owner == owner), None)

    def eta(self, job_id: str, now: float, speeds: SpeedBook, workers: int) -> float | None:
        """Seconds until the job should finish if workers take the waiting jobs in order; None when a
        kind involved has no measured speed yet, or the job is not live."""
        if job_id in self.running:
            return _left(self.running[job_id], now, speeds)
        place = self.position(job_id)
        if place is None:
            return None
        busy = [_left(running, now, speeds) for running in self.running.values()]
        ahead = [_duration(waiting, speeds) for waiting in self.waiting[: place - 1]]
        own = _duration(self.waiting[place - 1], speeds)
        if own is None or any(value is None for value in busy + ahead):
            return None
        free = max(0, workers - len(self.running))
        return finish_time([v for v in busy if v is not None], free, [v for v in ahead if v is not None], own)


def _fit(job: Job, model_key: str | None, control_keys: frozenset[str]) -> tuple[bool, int]:
    """How much of what `job` wants a worker holding these models has already: its checkpoint first, then
    the number of its control models (a job that names no checkpoint fits every worker alike on that)."""
    return (job.model_key is not None and job.model_key == model_key, len(job.control_keys & control_keys))


def _duration(job: Job, speeds: SpeedBook) -> float | None:
    seconds_per_unit = speeds.seconds_per_unit(job.kind)
    return None if seconds_per_unit is None else seconds_per_unit * job.cost


def _left(job: Job, now: float, speeds: SpeedBook) -> float | None:
    duration = _duration(job, speeds)
    if duration is None:
        return None
    return max(0.0, duration - (now - (job.started_at or now)))
