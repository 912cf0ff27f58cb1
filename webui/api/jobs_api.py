"""The job API (/api/v1/jobs): submit any kind of job, list the queue and history, watch one job as
server-sent events, cancel it, resume a stopped training run, download its images.

The A1111 routes wait for their job inside one request; this API returns at once with the job's id,
so a client (or a bot) can queue work, go away and come back, or follow it live. Bodies are the ones
clients already know: A1111's txt2img/img2img JSON, A1111's extras body (`image`, or `imageList` as
extra-batch-images takes it; the results are saved in the caller's outputs/extras-images like the Extras
tab's, so they can be downloaded here), the training config of `python -m webui.train`.
Everyone sees and stops only their own jobs (admins see all); a job of someone else answers 404, as a
missing one does, so ids cannot be probed (the rule lives in `webui.jobs.queue_service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from webui.generation.server_options import ServerOptions
from webui.api.common import ReasonedValidationRoute, caller, translate_errors, validation_reason
from webui.api.sdapi import STRICT_JSON, Img2ImgBody, Txt2ImgBody, img2img_request_from_body, txt2img_request_from_body
from webui.api.sdapi import decode_image
from webui.api.sdapi_extras import ExtrasBatchBody
from webui.context import AppContext
from webui.generation.extras_jobs import EXTRAS
from webui.generation.extras_outputs import extras_folder
from webui.jobs.events import FINISHED
from webui.jobs.job import Job
from webui.security.identity import User
from webui.training.config import TrainingConfig
from webui.training.monitor import TrainingBusyError
from webui.training.resume import NotResumable, resume_job
from webui.training.service import start_training
from webui.xyz.plot import AxisSpec
from webui.xyz.service import JOB_KIND as XYZ_KIND
from webui.xyz.service import XyzOptions

JOBS_PREFIX = "/api/v1/jobs"
SUBMITTABLE_KINDS = ("txt2img", "img2img", XYZ_KIND, EXTRAS, "train")
KEEP_ALIVE_S = 15.0


class JobBody(BaseModel):
    """`kind` and its request: A1111's txt2img/img2img body, A1111's extras body with `image` (or an
    `imageList`), a training config, or for `xyz-plot` a txt2img body plus `x`/`y`/`z` axes
    (`{"type": "CFG Scale", "values": "5, 7, 9"}`) and `options`."""

    model_config = STRICT_JSON

    kind: str
    request: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None


class AxisBody(BaseModel):
    model_config = STRICT_JSON

    type: str
    values: str = ""


class ExtrasJobBody(ExtrasBatchBody):
    """extra-single-image's body (`image`) or extra-batch-images' (`imageList`), not both."""

    image: str = ""


class XyzBody(Txt2ImgBody):
    x: AxisBody | None = None
    y: AxisBody | None = None
    z: AxisBody | None = None
    options: dict[str, Any] = Field(default_factory=dict)


def build_jobs_router(ctx: AppContext, options: ServerOptions) -> APIRouter:
    router = APIRouter(prefix=JOBS_PREFIX, route_class=ReasonedValidationRoute, tags=["jobs"])

    def submit(body: JobBody, user: User) -> Job:
        """Runs on a worker thread: images are decoded and folders read while checking."""
        webhook = ctx.webhooks.check_url(body.webhook) if body.webhook else None
        owner = user
        if body.kind == "txt2img":
            parsed = _parse(Txt2ImgBody, body.request)
            request = txt2img_request_from_body(parsed, options.effective(parsed.override_settings.option_changes()))
            request = request.with_changes(save_images=True)  # a job's images are served from their files
            return ctx.generation.submit_txt2img(request, owner, webhook_url=webhook)
        if body.kind == "img2img":
            parsed = _parse(Img2ImgBody, body.request)
            request = img2img_request_from_body(parsed, ctx.request_limits, options.effective(parsed.override_settings.option_changes()))
            return ctx.generation.submit_img2img(request.with_changes(save_images=True), owner, webhook_url=webhook)
        if body.kind == XYZ_KIND:
            plot = _parse(XyzBody, body.request)
            axes = [AxisSpec(axis.type, axis.values) if axis is not None else None for axis in (plot.x, plot.y, plot.z)]
            plot_options = XyzOptions(**plot.options)
            base = txt2img_request_from_body(plot, options.effective(plot.override_settings.option_changes()))
            return ctx.xyz.submit(base, *axes, plot_options, owner=owner, webhook_url=webhook)
        if body.kind == EXTRAS:
            return submit_extras(_parse(ExtrasJobBody, body.request), user, webhook)
        if body.kind == "train":
            config = TrainingConfig.from_dict(body.request)
            if not config.base_checkpoint:
                config = config.replace(base_checkpoint=ctx.models.current_checkpoint_title() or "")
            return start_training(ctx.training, config, user, webhook_url=webhook)
        raise HTTPException(422, f"kind {body.kind!r} cannot be submitted here; use one of "
                                 f"{', '.join(SUBMITTABLE_KINDS)}")

    def submit_extras(extras: ExtrasJobBody, user: User, webhook: str | None) -> Job:
        if ctx.extras is None:
            raise HTTPException(503, "upscaling is not available on this server")
        if bool(extras.image) == bool(extras.imageList):
            raise HTTPException(422, "an extras request needs `image` (a base64 image) or `imageList` "
                                     "(items {\"data\": base64, \"name\": ...}), not both")
        if len(extras.imageList) > ctx.extras.max_images:
            raise HTTPException(422, f"imageList holds {len(extras.imageList)} images; the limit is "
                                     f"{ctx.extras.max_images}")
        request = ctx.extras.validate(extras.extras_request())  # before decoding any image
        sources = ([(extras.image, "request.image", "")] if extras.image else
                   [(item.data, f"request.imageList[{index}]", item.name)
                    for index, item in enumerate(extras.imageList)])
        images = [decode_image(data, ctx.request_limits, field_name) for data, field_name, _ in sources]
        return ctx.extras.submit(images, request, user, [name for _, _, name in sources],
                                 save_folder=extras_folder(ctx.files, user), webhook_url=webhook)

    def describe(view: dict[str, Any]) -> dict[str, Any]:
        """A job view with URLs instead of file names."""
        job_id = view["id"]
        answer = {key: value for key, value in view.items() if key not in ("image_files", "preview_serial")}
        answer["images"] = [f"{JOBS_PREFIX}/{job_id}/images/{index}" for index in range(len(view["image_files"]))]
        answer["events_url"] = f"{JOBS_PREFIX}/{job_id}/events"
        answer["preview_url"] = (f"{JOBS_PREFIX}/{job_id}/preview?serial={view['preview_serial']}"
                                 if view["preview_serial"] is not None else None)
        return answer

    def job_view(user: User, job_id: str) -> dict[str, Any]:
        return describe(ctx.jobs.view(*ctx.jobs.find(user, job_id)))

    @router.post("", status_code=202)
    @translate_errors
    async def create(body: JobBody, user: User = Depends(caller)) -> dict[str, Any]:
        try:
            job = await run_in_threadpool(submit, body, user)
        except TrainingBusyError as error:  # another training run holds the trainer
            raise HTTPException(409, str(error)) from None
        return await run_in_threadpool(job_view, user, job.job_id)  # reads the store: not on the event loop

    @router.get("")
    @translate_errors
    def list_jobs(state: str | None = None, kind: str | None = None, owner: str | None = None, limit: int = 50,
                  user: User = Depends(caller)) -> dict[str, Any]:
        """Newest first: the caller's jobs (an admin's: everyone's, or `owner`'s), queued, running and
        finished; `state` (comma-separated) and `kind` filter."""
        if not 1 <= limit <= 500:
            raise HTTPException(422, "limit must be between 1 and 500")
        states = tuple(part.strip() for part in state.split(",") if part.strip()) if state else None
        return {"jobs": [describe(view) for view in ctx.jobs.list(user, owner, states, kind, limit)]}

    @router.get("/{job_id}")
    @translate_errors
    def get_job(job_id: str, user: User = Depends(caller)) -> dict[str, Any]:
        return job_view(user, job_id)

    @router.delete("/{job_id}")
    @translate_errors
    def delete_job(job_id: str, user: User = Depends(caller)) -> dict[str, Any]:
        """Cancel a waiting job or interrupt a running one; a finished job answers 409."""
        outcome = ctx.jobs.stop(user, job_id)
        if outcome is None:
            raise HTTPException(409, f"job {job_id} has already finished")
        return {"id": job_id, "stopped": outcome}

    @router.post("/{job_id}/skip")
    @translate_errors
    def skip_job(job_id: str, user: User = Depends(caller)) -> dict[str, Any]:
        """End the running job's current image batch and go on with the next (A1111's Skip)."""
        if not ctx.jobs.skip(user, job_id):
            raise HTTPException(409, f"job {job_id} is not running")
        return {"id": job_id, "skipped": True}

    @router.post("/{job_id}/resume", status_code=202)
    @translate_errors
    def resume(job_id: str, user: User = Depends(caller)) -> dict[str, Any]:
        """Queue a cancelled or failed training job again from its last saved state (the job's owner or an
        admin): 202 with the new job, whose id the old job's record keeps as `resumed_as`; 409 with the
        reason when it cannot be resumed (not a training job, not ended, no saved state, trainer busy)."""
        try:
            new, state = resume_job(ctx.training, ctx.jobs, user, job_id)
        except (NotResumable, TrainingBusyError) as error:
            raise HTTPException(409, str(error)) from None
        return {**job_view(user, new.job_id), "resumed_from": job_id, "state_name": state.name}

    @router.get("/{job_id}/images/{index}")
    @translate_errors
    def image(job_id: str, index: int, user: User = Depends(caller)) -> FileResponse:
        return FileResponse(ctx.jobs.image_path(user, job_id, index), media_type="image/png")

    @router.get("/{job_id}/preview")
    @translate_errors
    async def preview(job_id: str, user: User = Depends(caller)) -> Response:
        job, _ = await run_in_threadpool(ctx.jobs.find, user, job_id)
        snapshot = job.control.snapshot() if job is not None else None
        if snapshot is None or snapshot.preview is None:
            raise HTTPException(404, f"job {job_id} has no preview (yet)")
        png = await run_in_threadpool(_png_bytes, snapshot.preview)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.get("/{job_id}/events")
    @translate_errors
    async def events(job_id: str, request: Request, after: int = 0, user: User = Depends(caller)) -> StreamingResponse:
        """Server-sent events: `queued`, `started`, `progress` (step/total), `preview` (with its URL) and
        `finished` (state, error, and the job as GET returns it); the stream ends after `finished`.
        A reconnecting client sends `Last-Event-ID` (or `?after=`) and gets only what it missed."""
        await run_in_threadpool(ctx.jobs.find, user, job_id)  # 404 before the stream starts
        last_seen = request.headers.get("last-event-id", "")
        after = int(last_seen) if last_seen.isdigit() else after
        return StreamingResponse(_event_stream(job_id, after, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _event_stream(job_id: str, after: int, request: Request):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def nudge() -> None:  # on the worker's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
                loop.call_soon_threadsafe(wake.set)

        unsubscribe = ctx.scheduler.subscribe(job_id, nudge)
        try:
            while True:
                wake.clear()
                for event in await run_in_threadpool(ctx.scheduler.events, job_id, after):
                    after = event.seq
                    data: dict[str, Any] = {**event.data, "time": event.time}
                    if event.type == "preview":
                        data["preview_url"] = f"{JOBS_PREFIX}/{job_id}/preview?serial={event.data.get('serial', 0)}"
                    if event.type == FINISHED:
                        view = await run_in_threadpool(lambda: ctx.jobs.view(ctx.scheduler.get(job_id),
                                                                             ctx.scheduler.record(job_id)))
                        data["job"] = describe(view)
                    yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(data)}\n\n"
                    if event.type == FINISHED:
                        return
                try:
                    await asyncio.wait_for(wake.wait(), KEEP_ALIVE_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
        finally:
            unsubscribe()

    return router


def _parse(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """A request body of the given shape; a 422 naming the fields (never echoing values) otherwise."""
    try:
        return model(**values)
    except ValidationError as error:
        raise HTTPException(422, "request: " + validation_reason(error)) from None


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
