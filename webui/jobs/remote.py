"""What a job kind needs to run on a worker in another process or on another machine, without Ray itself.

A local worker hands its handler the request object and gets the result object back. A remote worker
(webui.jobs.ray_workers) must send the request as data and get the result back as data: images as PNG
bytes, the rest as plain values. Each kind that may run remotely says how (`RemoteKind`); every other kind
runs only on the head's own workers. Saving stays on the head: the remote side generates with saving off
and `result_from_wire` saves where a local run would have saved, so outputs, the job history and the
owners' folders are one place whichever worker ran the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.jobs.scheduler import Scheduler


@dataclass(frozen=True)
class RemoteKind:
    """How one job kind travels: `request_to_wire` (head) and `request_from_wire` (remote) turn a request
    into builtins and bytes and back; `result_to_wire` (remote) and `result_from_wire(request, wire)`
    (head: also saves the images as the local run would have) do the same for its result."""

    name: str
    request_to_wire: Callable[[Any], dict[str, Any]]
    request_from_wire: Callable[[dict[str, Any]], Any]
    result_to_wire: Callable[[Any], dict[str, Any]]
    result_from_wire: Callable[[Any, dict[str, Any]], Any]


@dataclass
class WorkerEngine:
    """The engine a remote worker process builds for itself (webui.context.build_worker_engine): a
    scheduler with one local worker on the remote device, the kinds that may be sent to it, and which
    checkpoint (title) its model manager holds."""

    scheduler: Scheduler
    remote_kinds: dict[str, RemoteKind]
    held_checkpoint: Callable[[], str | None]
    close: Callable[[], None]
