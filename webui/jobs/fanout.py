"""One job run as several parts at once on free workers: the parts, their outcomes, and the whole job's
progress made of theirs.

The scheduler decides *when* a job is split (free workers, nothing else waiting for them) and hands the
parts to workers; the job's kind decides *how* (`Splitter`: split the request, gather the results). This
module only keeps the parts of one split job together. Parts are jobs (a spec with a part request, its own
`JobControl`) that never enter the queue or the store: watchers see the one job they submitted, whose
progress, preview, interrupt and skip cover all its parts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.jobs.events import EventLog
from webui.jobs.job import Job
from webui.jobs.progress import JobControl
from webui.jobs.spec import JobKind, JobSpec, Splitter

PART_EVENTS = 8  # a part's own event log is never read; the job's is


@dataclass(frozen=True)
class PartFailure:
    """The first part (in part order) that failed: what the whole job fails with."""

    index: int
    count: int
    worker: str
    error: BaseException

    @property
    def text(self) -> str:
        return (f"{type(self.error).__name__}: {self.error} "
                f"(part {self.index + 1} of {self.count}, on worker {self.worker})")


class FanOut:
    """The parts of one split job. `part_ended` is called once per part (from the worker that ran it); the
    last call says so, and the scheduler then gathers the results or fails the job."""

    def __init__(self, whole: Job, requests: list[Any], splitter: Splitter, preview_every_n_steps: int,
                 clock: Callable[[], float]):
        self.whole = whole
        self.splitter = splitter
        # Parts are run by the kind's own handler; their request is a part request, which the kind's
        # model_key/control_keys/summary need not understand, so the part's kind row has only `run`.
        part_kind = JobKind(whole.kind, run=whole.kind_entry.run, encode=whole.kind_entry.encode,
                            decode=whole.kind_entry.decode)
        self.parts = [
            Job(f"{whole.job_id}.{index + 1}", JobSpec(whole.kind, request, whole.owner), part_kind,
                JobControl(preview_every_n_steps=preview_every_n_steps), EventLog(PART_EVENTS, clock),
                whole.created_at, whole.cost / len(requests))
            for index, request in enumerate(requests)
        ]
        self._lock = threading.Lock()
        self._outcomes: dict[int, tuple[str, Any, BaseException | None]] = {}
        self._previews_seen = [0] * len(self.parts)
        self._reporting = [part for part in self.parts if splitter.reports(part.request)] or self.parts
        for part in self._reporting:
            part.control.listen(self._relay)
        if whole.control.interrupted:  # interrupted while it was being split
            self.signal(JobControl.interrupt)

    def controls(self) -> list[JobControl]:
        """The whole job's control and every part's: what interrupt and skip act on."""
        return [self.whole.control] + [part.control for part in self.parts]

    def signal(self, action: Callable[[JobControl], None]) -> None:
        for part in self.parts:
            action(part.control)

    def part_ended(self, part: Job, worker_name: str, result: Any, error: BaseException | None) -> bool:
        """Record a part's outcome; True when it was the last part to end. A failed part stops the others
        (their work can no longer make the job's result)."""
        index = self.parts.index(part)
        with self._lock:
            self._outcomes[index] = (worker_name, result, error)
            last = len(self._outcomes) == len(self.parts)
        if error is not None:
            self.signal(JobControl.interrupt)
        self._relay()  # its last words (a final message) count too
        return last

    def failure(self) -> PartFailure | None:
        """The first failed part in part order (not the part that failed first: the same job fails alike)."""
        for index in range(len(self.parts)):
            worker, _, error = self._outcomes[index]
            if error is not None:
                return PartFailure(index, len(self.parts), worker, error)
        return None

    def results(self) -> list[Any]:
        """The parts' results in part order (once every part ended)."""
        return [self._outcomes[index][1] for index in range(len(self.parts))]

    def _relay(self) -> None:
        """A part reported: show the parts' steps added up, their message, and the newest preview."""
        with self._lock:
            snapshots = [part.control.snapshot() for part in self._reporting]
            steps = max(1, max(snapshot.total_steps for snapshot in snapshots))
            done = sum(snapshot.batch_index * snapshot.total_steps + snapshot.step for snapshot in snapshots)
            batches = sum(snapshot.batch_count for snapshot in snapshots)
            message = self.splitter.message([snapshot.message for snapshot in snapshots])
            preview = None
            for index, snapshot in enumerate(snapshots):
                if snapshot.preview_serial != self._previews_seen[index] and snapshot.preview is not None:
                    self._previews_seen[index] = snapshot.preview_serial
                    preview = snapshot.preview
        batch_index = min(done // steps, batches - 1)
        self.whole.control.show_combined(batch_index, done - batch_index * steps, steps, batches, message)
        if preview is not None:
            self.whole.control.set_preview(preview)
