"""Training over HTTP (/sdapi/v1/train...): start a run from a TrainingConfig JSON, follow it, cancel it.

The body of POST /sdapi/v1/train is the same JSON `python -m webui.train` and the presets use, so a
config saved from the Train tab can be posted as it is. A config or dataset that cannot work is refused
with 422 and the reason before anything is queued; a second run while one is active gets 409.
`dataset_dir` must be a folder in the data folder's `datasets/` (a plain name means `datasets/<name>`;
for a plain user both mean their own `datasets/users/<user>/`) and `resume_from` a saved state in
`training/states/`; anything else is refused with 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import JSONResponse

from webui.api.common import API_PREFIX, caller, translate_errors
from webui.context import AppContext
from webui.security.identity import User
from webui.training.config import TrainingConfig, load_preset
from webui.errors import user_error
from webui.training.monitor import TrainingBusyError
from webui.training.service import (
    cancel_training,
    preset_names,
    running_training_job,
    start_training,
    training_status,
    user_presets_folder,
)


def build_train_router(ctx: AppContext) -> APIRouter:
    router = APIRouter(prefix=f"{API_PREFIX}/train")

    @router.post("", status_code=202)
    @translate_errors
    def start(body: Any = Body(...), user: User = Depends(caller)) -> JSONResponse:
        """Queue a run: 202 with the job's state, 422 with the reason for a bad config or dataset."""
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object of TrainingConfig fields")
        try:
            config = TrainingConfig.from_dict(body)
            if not config.base_checkpoint:
                config = config.replace(base_checkpoint=ctx.models.current_checkpoint_title() or "")
            job = start_training(ctx.training, config, user)
        except TrainingBusyError as error:
            raise HTTPException(409, str(error)) from None
        except (ValueError, LookupError) as error:  # config, dataset and checkpoint problems
            raise HTTPException(422, user_error(error)) from None
        status = training_status(ctx.training, user)
        return JSONResponse(status_code=202, content={
            "job": f"job-{job.job_id}", "state": status["state"], "name": config.output_name,
            "method": config.method, "config": ctx.training.monitor.config.to_dict() if ctx.training.monitor else config.to_dict(),
            "progress_url": f"{API_PREFIX}/train/progress",
        })

    @router.get("/progress")
    @translate_errors
    def progress(user: User = Depends(caller)) -> dict[str, Any]:
        """step, total, epoch, loss, eta, messages, finished, files, error (and more) of the latest run,
        for its owner or an admin; another user gets state "busy" while it runs and "idle" after."""
        return training_status(ctx.training, user)

    @router.post("/cancel")
    @translate_errors
    def cancel(user: User = Depends(caller)) -> dict[str, Any]:
        job = running_training_job(ctx.training)
        was_training = job is not None and user.may_act_on(job.owner)
        return {"cancelled": was_training, "message": cancel_training(ctx.training, user)}

    @router.get("/presets")
    @translate_errors
    def presets() -> list[dict[str, Any]]:
        """Presets for the loaded model's family and the user's own, each with the values it sets."""
        folder = user_presets_folder(ctx.training)
        user = {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()
        answer = []
        for name in preset_names(ctx.training):
            entry: dict[str, Any] = {"name": name, "user": name in user}
            try:
                entry["config"] = load_preset(name, folder).to_dict()
            except ValueError as error:  # one hand-edited broken file must not hide the others
                entry["error"] = user_error(error)
            answer.append(entry)
        return answer

    return router
