"""The scheduler's errors, in one module so that the UI and HTTP layers can map each to its answer.

They are distinct types (not bare RuntimeErrors) because each means something different to a caller:
a full queue is "try later" (429 or 503), an unknown kind or job id is "you asked for something that
does not exist" (4xx), a cancelled job is "it never ran".
"""

from __future__ import annotations


class QueueFullError(RuntimeError):
    """The queue holds as many jobs as it may. `per_owner` tells whether the owner's own share is full
    (they should wait for their jobs: HTTP 429) or the whole server is (everyone waits: HTTP 503)."""

    def __init__(self, message: str, per_owner: bool):
        super().__init__(message)
        self.per_owner = per_owner


class JobCancelled(RuntimeError):
    """Raised by `Job.result()` for a job that was cancelled before a worker started it."""


class UnknownJobKind(LookupError):
    """A spec names a kind that no handler is registered for; the message lists the known kinds."""


class UnknownJob(LookupError):
    """No job with this id exists (it never did, or its record was pruned by the retention limits)."""


class SchedulerClosed(RuntimeError):
    """The scheduler is shutting down and accepts no new jobs."""


class WorkerStartError(RuntimeError):
    """Workers could not be started (a Ray cluster that does not answer, a remote worker that failed to
    build, a `--device`/`--device-ids` GPU that this machine does not have): a one-line message for the
    start-up, never a traceback."""


class WorkerLost(RuntimeError):
    """The worker running a job died (its remote process or machine went away): the job fails with this."""
