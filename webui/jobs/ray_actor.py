"""The remote side of a Ray worker: one actor per GPU (or CPU worker) of the cluster.

The actor builds the same engine the app builds (its own scheduler with one `Worker` on its device, its own
model manager reading the models folder of its machine) and runs each job it is handed through that
scheduler, so a job runs the very handler code it runs on a local worker. It is a threaded actor: `run`
blocks for the whole job while `progress`, `interrupt` and `skip` arrive on other threads, which is how the
head mirrors progress and passes a cancel on. Ray is not imported here: the head applies `ray.remote`.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from webui.jobs.job import Job
from webui.jobs.remote import WorkerEngine
from webui.jobs.spec import JobSpec


class RemoteWorker:
    """Runs one job at a time on this machine's engine; `build_engine(settings)` is called once, here."""

    def __init__(self, build_engine: Callable[[Any], WorkerEngine], settings: Any, label: str):
        self._host = socket.gethostname()
        self._label = label
        self._engine = build_engine(settings)
        self._lock = threading.Lock()
        self._job: Job | None = None

    def describe(self) -> dict[str, Any]:
        """Where this worker runs and what it holds (asked once at start, as the readiness check)."""
        worker = self._engine.scheduler.workers[0]
        return {"host": self._host, "pid": os.getpid(), "device": str(worker.device),
                "kinds": sorted(self._engine.remote_kinds), "checkpoint": self._engine.held_checkpoint()}

    def device_fault(self) -> str | None:
        """What this machine's GPU failed with while its worker waits for it to answer again; None while it
        serves (the head's RayWorker asks this instead of probing a device of its own machine)."""
        return self._engine.scheduler.workers[0].fault

    def run(self, kind: str, wire: dict[str, Any]) -> dict[str, Any]:
        """Run one job of `kind`; the answer is {"result": ...} or {"error": text}, plus what is held now.
        Errors come back as text (not as exceptions), so the head can name this machine in the message."""
        try:
            codec = self._engine.remote_kinds[kind]
            request = codec.request_from_wire(wire)
            job = self._engine.scheduler.submit(JobSpec(kind, request))
            with self._lock:
                self._job = job
            result = job.result()
            answer: dict[str, Any] = {"result": codec.result_to_wire(result)}
        except Exception as error:  # the head turns it into the job's failure, naming this machine
            answer = {"error": f"{type(error).__name__}: {error}"}
        answer["checkpoint"] = self._engine.held_checkpoint()
        return answer

    def progress(self, after_preview: int) -> dict[str, Any] | None:
        """The running job's progress (None before it started); the preview as PNG bytes only when newer
        than `after_preview`, so a poll costs a few numbers most of the time."""
        with self._lock:
            job = self._job
        if job is None:
            return None
        snapshot = job.control.snapshot()
        preview = None
        if snapshot.preview is not None and snapshot.preview_serial > after_preview:
            buffer = io.BytesIO()
            snapshot.preview.save(buffer, format="PNG")
            preview = buffer.getvalue()
        return {"state": snapshot.state, "step": snapshot.step, "total_steps": snapshot.total_steps,
                "batch_index": snapshot.batch_index, "batch_count": snapshot.batch_count,
                "message": snapshot.message, "preview_serial": snapshot.preview_serial, "preview": preview}

    def interrupt(self) -> None:
        with self._lock:
            job = self._job
        if job is not None:
            job.control.interrupt()

    def skip(self) -> None:
        with self._lock:
            job = self._job
        if job is not None:
            job.control.skip()

    def finish(self) -> None:
        """Forget the finished job (the head calls this after it has read the result)."""
        with self._lock:
            self._job = None

    def close(self) -> None:
        self._engine.close()
