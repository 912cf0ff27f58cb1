"""Resume a stopped training job from its record: one call queues the same run again, starting from the
last state it saved.

A cancelled or failed run keeps its saved states in its owner's training folder and its job record keeps
its config, so the user should not have to find the state folder and type the config again. The Queue
tab's Resume button and `POST /api/v1/jobs/{id}/resume` both come here. The rules: only a training job that
ended without finishing (interrupted, failed, or cancelled while it waited) and was not resumed already,
with a saved state of its own; the new run is the same user's, writes into the same folders, and the old
record links to it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from webui.jobs.job import CANCELLED, DONE, FAILED, INTERRUPTED, Job
from webui.jobs.queue_service import QueueService
from webui.security.identity import User
from webui.security.paths import is_within
from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.loop import read_state_info
from webui.training.service import TRAIN_JOB_KIND, TrainingJob, TrainingService

log = logging.getLogger(__name__)

RESUMABLE_STATES = (INTERRUPTED, FAILED, CANCELLED)


class NotResumable(ValueError):
    """The job exists and the caller may see it, but it cannot be resumed; the message says why."""


def last_saved_state(folder: Path, config: TrainingConfig, started_at: float | None) -> Path | None:
    """The state a run of `config` that started at `started_at` saved last: among `<output>-state` and
    `<output>-NNNNNN-state` in `folder` (its owner's states folder) written since then, the one at the
    highest step. A run that saved none starts again from the state it was itself started from (a resumed
    run cancelled early), if any."""
    name = re.compile(rf"^{re.escape(config.output_name)}(-\d{{6}})?-state$")
    best: tuple[int, Path] | None = None
    if started_at is not None and folder.is_dir():
        for entry in folder.iterdir():
            if not (entry.is_dir() and name.match(entry.name) and is_within(entry, folder)):
                continue
            try:
                info = read_state_info(entry)
                written = (entry / "state.json").stat().st_mtime
            except (TrainingConfigError, OSError):
                continue
            if written < started_at or info.get("method") != config.method:
                continue  # an earlier run's state under the same name, or another method's
            step = int(info.get("step") or 0)
            if best is None or step > best[0]:
                best = (step, entry)
    if best is not None:
        return best[1]
    own = config.resume_from.strip()
    return Path(own) if own and Path(own).is_dir() else None


def resume_job(service: TrainingService, queue: QueueService, user: User, job_id: str) -> tuple[Job, Path]:
    """Queue the run of training job `job_id` again from its last saved state: (the new job, that state).

    `user` must be the job's owner or an admin (anyone else gets UnknownJob, as for a missing job); the new
    run belongs to the job's owner. NotResumable says why a job cannot be resumed; TrainingBusyError that
    another run holds the trainer. The config was confined to the owner's folders when the job was first
    queued and goes to `TrainingService.submit` as stored; `start_training`'s refusal of an output name that
    names existing models is not repeated, because the files under that name are this run's own epochs.
    """
    _, record = queue.find(user, job_id)
    short = job_id[:8]
    if record is not None and record.kind != TRAIN_JOB_KIND:
        raise NotResumable(f"job {short} is a {record.kind} job; only training jobs can be resumed")
    if record is None or record.state not in (*RESUMABLE_STATES, DONE):
        state = record.state if record is not None else "running"
        raise NotResumable(f"job {short} is still {state}; cancel it or wait until it ends, then resume it")
    if record.state == DONE:
        raise NotResumable(f"job {short} finished all its steps; there is nothing left to train")
    if record.resumed_as:
        raise NotResumable(f"job {short} was resumed already as job {record.resumed_as[:8]}; resume that one")
    job = TrainingJob.decode(record.request)
    state = last_saved_state(service.work_paths(job.user).states_dir, job.config, record.started_at)
    if state is None:
        when = "never started" if record.started_at is None else "stopped before it saved a state"
        raise NotResumable(f"job {short} has no saved state to resume from (it {when}); runs save states "
                           "when save_state is on, at the end of every save_every_n_epochs epochs")
    new = service.submit(job.config.replace(resume_from=str(state)), job.user)
    if not service.scheduler.link_resumed(job_id, new.job_id):  # two resumes at once: the first link stays
        log.warning("job %s was resumed twice; its record links to the first resumed job only", job_id)
    return new, state
