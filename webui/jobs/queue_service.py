"""What a user may see and do in the queue: the rule shared by the job API and the Queue tab.

Everyone sees and stops only their own jobs; admins see and stop all. A job of someone else is
reported exactly like a missing one (UnknownJob), so ids cannot be probed. A job's view joins the
live handle (position, ETA, progress) and the stored record (result files, infotexts, webhook).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.jobs.errors import UnknownJob
from webui.jobs.job import FINAL_STATES, Job
from webui.jobs.scheduler import Scheduler
from webui.jobs.store import JobRecord
from webui.security.identity import User
from webui.security.paths import is_within


@dataclass
class QueueService:
    scheduler: Scheduler
    outputs_folder: Path  # result images are served only from here

    def find(self, user: User, job_id: str) -> tuple[Job | None, JobRecord | None]:
        """The live job and/or its record when `user` may see it; UnknownJob otherwise."""
        job, record = self.scheduler.get(job_id), self.scheduler.record(job_id)
        owner = job.owner if job is not None else record.owner if record is not None else None
        if (job is None and record is None) or not user.may_act_on(owner):
            raise UnknownJob(f"no job with id {job_id!r}")
        return job, record

    def list(self, user: User, owner: str | None = None, states: tuple[str, ...] | None = None,
             kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Views of the caller's jobs (an admin's: everyone's, or `owner`'s), newest first."""
        if owner is not None and not user.is_admin and owner != user.name:
            raise PermissionError("only an admin may list another user's jobs")
        wanted = owner if owner is not None else (None if user.is_admin else user.name)
        records = self.scheduler.history(wanted, states, limit=limit, kind=kind)
        return [self.view(self.scheduler.get(record.job_id), record) for record in records]

    def stop(self, user: User, job_id: str) -> str | None:
        """Cancel the job if it waits, interrupt it if it runs: "cancelled"/"interrupted", None if finished."""
        self.find(user, job_id)
        return self.scheduler.stop(job_id)

    def skip(self, user: User, job_id: str) -> bool:
        """End the running job's current batch; False when it is not running."""
        self.find(user, job_id)
        return self.scheduler.skip(job_id)

    def image_path(self, user: User, job_id: str, index: int) -> Path:
        """A result image's file; LookupError when there is no such image (any more)."""
        _, record = self.find(user, job_id)
        images = _result_list(record, "images")
        if not 0 <= index < len(images):
            raise UnknownJob(f"job {job_id} has {len(images)} image(s); there is no image {index}")
        path = Path(images[index])
        if not (is_within(path, self.outputs_folder) and path.is_file()):
            raise UnknownJob(f"image {index} of job {job_id} is no longer on the server")
        return path

    def view(self, job: Job | None, record: JobRecord | None) -> dict[str, Any]:
        """A job as plain data: identity, state, timings, place in the queue, progress and outcome."""
        if job is not None:
            state, kind, owner, job_id, summary = job.state, job.kind, job.owner, job.job_id, job.summary
            created, started, finished = job.created_at, job.started_at, job.finished_at
            worker, error = job.worker_name, job.error_text
        elif record is not None:
            state, kind, owner, job_id, summary = record.state, record.kind, record.owner, record.job_id, record.summary
            created, started, finished = record.created_at, record.started_at, record.finished_at
            worker, error = record.worker, record.error
        else:
            raise ValueError("a job view needs the job or its record")
        live = job is not None and state not in FINAL_STATES
        finished_record = record if record is not None and state in FINAL_STATES else None
        view: dict[str, Any] = {
            "id": job_id, "kind": kind, "owner": owner, "state": state, "summary": summary,
            "created_at": created, "started_at": started, "finished_at": finished, "worker": worker,
            "position": self.scheduler.position(job_id) if live else None,
            "eta": self.scheduler.eta(job_id) if live else None,
            "progress": None, "preview_serial": None, "error": error,
            "image_files": _result_list(finished_record, "images"),
            "infotexts": _result_list(finished_record, "infotexts"),
            "result": finished_record.result if finished_record is not None else None,
            "webhook": record.webhook if record is not None else None,
            "resumed_as": record.resumed_as if record is not None else None,
        }
        if job is not None and state == "running":
            snapshot = job.control.snapshot()
            view["progress"] = {"step": snapshot.step, "total": snapshot.total_steps,
                                "batch": snapshot.batch_index, "batch_count": snapshot.batch_count,
                                "fraction": snapshot.fraction, "message": snapshot.message}
            view["preview_serial"] = snapshot.preview_serial if snapshot.preview is not None else None
        return view


def _result_list(record: JobRecord | None, key: str) -> list[Any]:
    """The record's list under `key`; [] for anything else (an older extras record kept a count there)."""
    result = record.result if record is not None else None
    value = result.get(key) if isinstance(result, dict) else None
    return list(value) if isinstance(value, list) else []
