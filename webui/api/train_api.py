"""Training over HTTP (/sdapi/v1/train...): start a run from a TrainingConfig JSON, follow it, cancel it.

The body of POST /sdapi/v1/train is the same JSON `python -m webui.train` and the presets use, so a
config saved from the Train tab can be posted as it is. A config or dataset that cannot work is refused
with 422 and the reason before anything is queued; a second run while one is active gets 409.
`dataset_dir` must be a folder in the data folder's `datasets/` (a plain name means `datasets/<name>`;
for a plain user both mean their own `datasets/users/<user>/`) and `resume_from` a saved state in
`training/states/` (a plain user's: `training/users/<user>/states/`, listed by GET /train/states); anything
else is refused with 422. Exports and presets are the caller's own in the same way: GET /train/exports lists
theirs, GET /train/exports/<name>/<file> downloads one file, POST /train/export exports the latest run,
GET and POST /train/presets list and save presets.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import FileResponse, JSONResponse

from webui.api.common import API_PREFIX, caller, translate_errors
from webui.context import AppContext
from webui.security.identity import User
from webui.training.config import TrainingConfig, load_preset, save_user_preset
from webui.errors import user_error
from webui.training.monitor import TrainingBusyError
from webui.training.service import (
    cancel_training,
    export_file,
    export_run,
    exported_runs,
    preset_names,
    saved_states,
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

    @router.get("/states")
    @translate_errors
    def states(user: User = Depends(caller)) -> dict[str, Any]:
        """The saved states the caller may name in `resume_from` (their own), newest first."""
        return {"states": saved_states(ctx.training, user)}

    @router.post("/export")
    @translate_errors
    def export(body: Any = Body(default=None), user: User = Depends(caller)) -> dict[str, Any]:
        """Export the latest run (the caller's, or any for an admin) with a model card: its name and files."""
        body = body if isinstance(body, dict) else {}
        license_name = body.get("license") or "creativeml-openrail-m"
        if not isinstance(license_name, str):
            raise HTTPException(422, "license must be a string")
        folder, _ = export_run(ctx.training, license_name, bool(body.get("include_epochs")), user)
        return {"name": folder.name, "files": sorted(path.relative_to(folder).as_posix()
                                                     for path in folder.rglob("*") if path.is_file())}

    @router.get("/exports")
    @translate_errors
    def exports(user: User = Depends(caller)) -> dict[str, Any]:
        """The caller's exports: {name: [files]}; download one with GET /exports/<name>/<file>."""
        return {"exports": exported_runs(ctx.training, user)}

    @router.get("/exports/{name}/{file:path}")
    @translate_errors
    def download(name: str, file: str, user: User = Depends(caller)) -> FileResponse:
        """One file of one of the caller's exports; anything else answers the same 404."""
        return FileResponse(export_file(ctx.training, user, name, file))

    @router.post("/presets")
    @translate_errors
    def save_preset(body: Any = Body(...), user: User = Depends(caller)) -> dict[str, Any]:
        """Save {"name", "config"} as one of the caller's presets (job fields such as folders are left out)."""
        if not isinstance(body, dict) or not isinstance(body.get("config", {}), dict):
            raise HTTPException(422, 'the body must be {"name": "...", "config": {TrainingConfig fields}}')
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HTTPException(422, "name: enter a preset name")
        config = TrainingConfig.from_dict(body.get("config", {}))
        path = save_user_preset(config, user_presets_folder(ctx.training, user), name.strip())
        return {"name": path.stem}

    @router.get("/presets")
    @translate_errors
    def presets(base_checkpoint: str | None = None, user: User = Depends(caller)) -> list[dict[str, Any]]:
        """Presets for the family of `base_checkpoint` (default: the loaded model) and the caller's own, each
        with the values it sets."""
        folder = user_presets_folder(ctx.training, user)
        own = {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()
        answer = []
        for name in preset_names(ctx.training, user, base_checkpoint):
            entry: dict[str, Any] = {"name": name, "user": name in own}
            try:
                entry["config"] = load_preset(name, folder).to_dict()
            except ValueError as error:  # one hand-edited broken file must not hide the others
                entry["error"] = user_error(error)
            answer.append(entry)
        return answer

    return router
