"""A1111-compatible HTTP API (/sdapi/v1/...), a thin adapter over AppContext.

Field names, defaults and response shapes follow A1111's modules/api so existing clients work
unchanged. Bad input is answered with a 4xx and a reason (`{"detail": ...}`), never a traceback;
generation goes through the same queue as the UI, so overlapping calls run one after another.

JSON hygiene: fields this server does not know are ignored and never echoed; NaN, Infinity and
numbers out of range (`1e400` for an int) are refused with 422 naming the field. Images are decoded
through the request limits' checked opener, and all decoding and encoding runs on worker threads: the
event loop only awaits, so a flood of waiting requests cannot starve `progress`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from webui.api.a1111_options import OverrideSettings, check_option_values
from webui.generation.server_options import ServerOptions
from webui.api.common import API_PREFIX, ReasonedValidationRoute, admin_caller, caller, translate_errors
from webui.api.job_wait import wait_for_job
from webui.api.sdapi_scripts import ExtensionScriptCall, alwayson_args, build_scripts_router, script_call, xyz_info
from webui.extensions.scripts import ExtensionScripts
from webui.context import AppContext
from webui.generation.image_ops import ImageTooLargeError
from webui.generation.infotext import parse_infotext, read_infotext
from webui.generation.requests import DEFAULT_DISTILLED_CFG_SCALE, HIRES_UPSCALERS, Img2ImgRequest, Txt2ImgRequest
from webui.generation.samplers import SAMPLERS, schedule_type_names
from webui.security.identity import Forbidden, User
from webui.security.limits import RequestLimits

STRICT_JSON = ConfigDict(extra="ignore", allow_inf_nan=False)


class Txt2ImgBody(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI fields that this server honours; others are ignored."""

    model_config = STRICT_JSON

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    distilled_cfg_scale: float = DEFAULT_DISTILLED_CFG_SCALE  # Forge's; used by guidance-distilled models only
    shift: float | None = None  # flow-matching models' sigma shift; None = the model's scheduler config
    width: int = 512
    height: int = 512
    override_settings: OverrideSettings = Field(default_factory=OverrideSettings)
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_distilled_cfg: float = DEFAULT_DISTILLED_CFG_SCALE  # Forge's
    denoising_strength: float | None = None
    refiner_checkpoint: str | None = None   # A1111's txt2img Refiner; None/"" /"None" = none
    refiner_switch_at: float = 0.8
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("script_args")
    @classmethod
    def _finite_script_args(cls, value: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
        """Script arguments are echoed in `parameters`: a NaN or Infinity there could not be written back."""
        if not _finite_json(value):
            raise ValueError("script_args may not hold NaN or Infinity")
        return value


def _finite_json(value: Any) -> bool:
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_finite_json(item) for item in value)
    if isinstance(value, dict):
        return all(_finite_json(item) for item in value.values())
    return True


class Img2ImgBody(Txt2ImgBody):
    """A1111's StableDiffusionImg2ImgProcessingAPI: the txt2img fields plus images and inpaint options."""

    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    resize_mode: int = 0
    mask_blur: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0


class OptionsBody(OverrideSettings):
    """POST /options: the checkpoint, the options `ServerOptions` keeps and extension settings as
    `<extension>.<key>` (kept as extra fields); other A1111 options are ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    ESRGAN_tile: int | None = None           # server-wide only (not a per-request override)
    ESRGAN_tile_overlap: int | None = None


class PngInfoBody(BaseModel):
    model_config = STRICT_JSON

    image: str


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    from webui.generation.infotext import write_png_info

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=write_png_info(infotext) if infotext else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, limits: RequestLimits, field_name: str = "image") -> Image.Image:
    """A base64 image (optionally a data: URL) -> PIL image through the checked opener: 413 for too many
    bytes or pixels (judged before decoding), 422 naming the problem otherwise. Call it off the event loop."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    limits.check_upload_bytes(len(data) * 3 // 4, field_name)  # before spending time on base64
    try:
        raw = base64.b64decode(data, validate=False)
    except (ValueError, TypeError, binascii.Error):
        raise HTTPException(422, f"{field_name} is not valid base64") from None
    try:
        return limits.open_image(raw, field_name)
    except ImageTooLargeError as error:
        raise HTTPException(413, f"{field_name}: {error}") from None
    except ValueError:
        raise HTTPException(422, f"{field_name}: data is not an image Pillow can read") from None


def _common_fields(body: Txt2ImgBody, options: dict[str, Any]) -> dict[str, Any]:
    """Request fields shared by txt2img and img2img; `options` are the effective server options
    (`ServerOptions.effective`: the server's with the body's override_settings on top)."""
    overrides = body.override_settings
    return dict(
        prompt=body.prompt, negative_prompt=body.negative_prompt, styles=tuple(body.styles),
        steps=body.steps, sampler_name=body.sampler_name or body.sampler_index or "",  # "": the model's default
        scheduler=body.scheduler or "Automatic", cfg_scale=body.cfg_scale, distilled_cfg_scale=body.distilled_cfg_scale,
        shift=body.shift, width=body.width, height=body.height,
        seed=body.seed, subseed=body.subseed, subseed_strength=body.subseed_strength, batch_count=body.n_iter,
        batch_size=body.batch_size, clip_skip=options["CLIP_stop_at_last_layers"],
        checkpoint=overrides.sd_model_checkpoint or None, save_images=body.save_images and options["samples_save"],
        vae=options["sd_vae"] or "Automatic",
    )


def txt2img_request_from_body(body: Txt2ImgBody, options: dict[str, Any]) -> Txt2ImgRequest:
    hires = dict(
        enable_hr=body.enable_hr, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler,
        hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x, hr_resize_y=body.hr_resize_y,
        hr_sampler_name=body.hr_sampler_name or "", hr_scheduler=body.hr_scheduler or "", hr_prompt=body.hr_prompt,
        hr_negative_prompt=body.hr_negative_prompt, hr_distilled_cfg=body.hr_distilled_cfg,
        refiner_checkpoint=body.refiner_checkpoint or "", refiner_switch_at=body.refiner_switch_at,
    )
    if body.denoising_strength is not None:
        hires["denoising_strength"] = body.denoising_strength
    return Txt2ImgRequest(**_common_fields(body, options), **hires)


def img2img_request_from_body(body: Img2ImgBody, limits: RequestLimits, options: dict[str, Any]) -> Img2ImgRequest:
    """Decodes the images: call it off the event loop."""
    if not body.init_images:
        raise HTTPException(422, "init_images must hold at least one base64 image")
    return Img2ImgRequest(
        **_common_fields(body, options), upscaler_for_img2img=options.get("upscaler_for_img2img") or "None",
        init_images=(decode_image(body.init_images[0], limits, "init_images[0]"),),
        mask=decode_image(body.mask, limits, "mask") if body.mask else None, resize_mode=body.resize_mode,
        denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
        mask_blur=body.mask_blur, inpainting_fill=body.inpainting_fill, inpaint_full_res=body.inpaint_full_res,
        inpaint_full_res_padding=body.inpaint_full_res_padding, inpainting_mask_invert=body.inpainting_mask_invert,
    )


def generation_response(body: Txt2ImgBody, request: Txt2ImgRequest, result) -> dict[str, Any]:
    """A1111's response: base64 PNGs (grid first when there is one), the known request fields echoed, info
    as a JSON string. Encodes PNGs: call it off the event loop."""
    images = [encode_png(image, text) for image, text in zip(result.images, result.infotexts)] if body.send_images else []
    if body.send_images and result.grid is not None:
        images.insert(0, encode_png(result.grid, result.infotexts[0]))
    parameters = body.model_dump(exclude={"init_images", "mask"})
    return {"images": images, "parameters": parameters, "info": json.dumps(result.info(request))}


def xyz_response(body: Txt2ImgBody, request: Txt2ImgRequest, run) -> dict[str, Any]:
    """The X/Y/Z script's answer in the same shape: the grid (then sub grids and cells when asked for)."""
    images = [encode_png(image, text) for image, text in zip(run.images, run.infotexts)] if body.send_images else []
    parameters = body.model_dump(exclude={"init_images", "mask"})
    return {"images": images, "parameters": parameters, "info": json.dumps(xyz_info(request, run))}


def _upscaler_check(ctx: AppContext) -> Any:
    """`upscaler_for_img2img` must name a usable upscaler (None: no upscaler service, nothing to check)."""
    return ctx.upscalers.check if ctx.upscalers is not None else None


def build_api_router(ctx: AppContext, options: ServerOptions | None = None) -> APIRouter:
    """The /sdapi/v1 routes; `options` are A1111's server options (shared with the job API)."""
    from webui.api.sdapi_extras import build_extras_router  # here: it imports this module's helpers

    router = APIRouter(prefix=API_PREFIX, route_class=ReasonedValidationRoute)
    limits = ctx.request_limits
    options = options if options is not None else ServerOptions()  # in memory: a router built without a context

    async def generate(body: Txt2ImgBody, request: Txt2ImgRequest, http: Request, user: User) -> dict[str, Any]:
        """Run a txt2img/img2img request or its script; keep the overrides when the body says not to
        restore them. Validation and queueing run on a worker thread; errors raise before queueing."""
        is_img2img = isinstance(body, Img2ImgBody)
        if not body.override_settings_restore_afterwards and body.override_settings.option_changes():
            user.require_admin("keeping override_settings as everyone's options "
                               "(override_settings_restore_afterwards: false)")
        scripts = ExtensionScripts(ctx.extensions)
        script = script_call(body.script_name, body.script_args, body.alwayson_scripts, is_img2img,
                             save_grid=request.save_images, registry=ctx.xyz.registry, scripts=scripts)
        request = scripts.with_alwayson(request, alwayson_args(body.alwayson_scripts))
        if isinstance(script, ExtensionScriptCall):
            job = await run_in_threadpool(functools.partial(
                scripts.submit, ctx.scripts, script.title, request, script.args, owner=user))
            result = await wait_for_job(ctx.scheduler, job, http)
            answer = await run_in_threadpool(generation_response, body, request, result)
        elif script is not None:
            job = await run_in_threadpool(functools.partial(
                ctx.xyz.submit, request, script.x, script.y, script.z, script.options, owner=user))
            run = await wait_for_job(ctx.scheduler, job, http)
            answer = await run_in_threadpool(xyz_response, body, request, run)
        else:
            submit = ctx.generation.submit_img2img if is_img2img else ctx.generation.submit_txt2img
            job = await run_in_threadpool(submit, request, user)
            result = await wait_for_job(ctx.scheduler, job, http)
            answer = await run_in_threadpool(generation_response, body, request, result)
        # A checkpoint override is the request's own: the selected checkpoint stays, so it is current again
        # afterwards (A1111's restore). Keeping the override makes it everyone's selected checkpoint.
        if not body.override_settings_restore_afterwards:
            if request.checkpoint:
                await run_in_threadpool(ctx.models.select_checkpoint, request.checkpoint, user.name)
            options.update(body.override_settings.option_changes())
        return answer

    @router.post("/txt2img")
    @translate_errors
    async def txt2img(body: Txt2ImgBody, http: Request, user: User = Depends(caller)) -> dict[str, Any]:
        request = txt2img_request_from_body(body, options.effective(body.override_settings.option_changes()))
        return await generate(body, request, http, user)

    @router.post("/img2img")
    @translate_errors
    async def img2img(body: Img2ImgBody, http: Request, user: User = Depends(caller)) -> dict[str, Any]:
        request = await run_in_threadpool(img2img_request_from_body, body, limits,
                                          options.effective(body.override_settings.option_changes()))
        return await generate(body, request, http, user)

    @router.get("/upscalers")
    @translate_errors
    def upscalers() -> list[dict[str, Any]]:
        """A1111's UpscalerItem for every upscaler (built-ins, then model files; `model_name` is the
        architecture), plus this server's `usable` and `reason` for files that cannot be used."""
        entries = ctx.upscalers.entries() if ctx.upscalers is not None else []
        return [{"name": entry.name, "model_name": entry.architecture or None,
                 "model_path": str(entry.path) if entry.path is not None else None, "model_url": None,
                 "scale": float(entry.scale) if entry.scale is not None else None,
                 "usable": entry.usable, "reason": entry.reason} for entry in entries]

    @router.get("/latent-upscale-modes")
    @translate_errors
    def latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": name} for name in HIRES_UPSCALERS if name.startswith("Latent")]

    @router.get("/sd-models")
    @translate_errors
    def sd_models() -> list[dict[str, Any]]:
        return [
            {"title": r.title, "model_name": r.name, "hash": r.shorthash, "sha256": r.sha256,
             "filename": str(r.path), "config": None}
            for r in ctx.catalog.usable_records()
        ]

    @router.post("/refresh-checkpoints", dependencies=[Depends(admin_caller)])
    @translate_errors
    def refresh_checkpoints() -> dict[str, Any]:
        records = ctx.models.refresh_checkpoints()
        return {"checkpoints": len(records), "unusable": {r.name: r.error for r in records if not r.usable}}

    @router.get("/loras")
    @translate_errors
    def loras() -> list[dict[str, Any]]:
        return [{"name": name, "alias": name, "path": str(path)} for name, path in ctx.loras.files().items()]

    @router.post("/refresh-loras")
    @translate_errors
    def refresh_loras() -> dict[str, Any]:
        return {"loras": len(ctx.loras.files())}  # the folder is rescanned on every use

    @router.get("/sd-vae")
    @translate_errors
    def sd_vae() -> list[dict[str, Any]]:
        return [{"model_name": name, "filename": name} for name in ctx.models.vae_names()[2:]]

    @router.get("/samplers")
    @translate_errors
    def samplers() -> list[dict[str, Any]]:
        added = [{"name": name, "aliases": [], "options": {}} for name in ctx.generation.hooks.samplers()]
        return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS] + added

    @router.get("/schedulers")
    @translate_errors
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": name, "label": name} for name in schedule_type_names()]

    @router.get("/options")
    @translate_errors
    def get_options() -> dict[str, Any]:
        return {"sd_model_checkpoint": ctx.models.current_checkpoint_title(), **options.values(),
                **ctx.extensions.settings.dotted_values()}

    @router.post("/options")
    @translate_errors
    async def set_options(body: OptionsBody, user: User = Depends(caller)) -> dict[str, Any]:
        changes = body.option_changes()
        extension_changes = ctx.extensions.settings.dotted_changes(body.model_extra or {})
        if changes or extension_changes:  # everyone's; the checkpoint is shared as in A1111 (and before)
            user.require_admin(f"changing {', '.join([*changes, *(f'{e}.{k}' for e, k in extension_changes)])} "
                               "for everyone")
        await run_in_threadpool(check_option_values, changes, ctx.models.resolve_vae, _upscaler_check(ctx))
        ctx.extensions.settings.set_many(extension_changes)  # all checked before any is kept
        if body.sd_model_checkpoint:
            await run_in_threadpool(ctx.models.select_checkpoint, body.sd_model_checkpoint, user.name)
        options.update(changes)
        return get_options()

    @router.get("/progress")
    @translate_errors
    async def progress(skip_current_image: bool = False, user: User = Depends(caller)) -> dict[str, Any]:
        """A1111's progress for the caller's own running job (an admin sees any). Others learn only that
        the server is busy, how many jobs there are and where their own first job stands
        (`queue_position`: 0 running, 1 next, None when they have none). It only reads the queue's state
        on the event loop (no thread is needed while generation requests flood the pool); a preview PNG
        is encoded on a worker thread."""
        job = ctx.scheduler.current
        position = ctx.scheduler.first_position_of(user.name)
        if job is None or not user.may_act_on(job.owner):
            return {"progress": 0.0, "eta_relative": 0.0,
                    "state": {"job_count": ctx.scheduler.pending + (job is not None), "busy": job is not None,
                              "queue_position": position, "interrupted": False},
                    "current_image": None, "textinfo": None}
        snapshot = job.control.snapshot()
        current_image = None
        if snapshot.preview is not None and not skip_current_image:
            current_image = await run_in_threadpool(encode_png, snapshot.preview)
        return {
            "progress": snapshot.fraction,
            "eta_relative": snapshot.eta_seconds or 0.0,
            "state": {"job": f"job-{job.job_id}", "job_count": ctx.scheduler.pending + 1, "job_no": snapshot.batch_index,
                      "sampling_step": snapshot.step, "sampling_steps": snapshot.total_steps,
                      "interrupted": job.control.interrupted, "busy": True, "queue_position": position},
            "current_image": current_image,
            "textinfo": snapshot.message or None,
        }

    @router.post("/interrupt")
    @translate_errors
    def interrupt(user: User = Depends(caller)) -> dict[str, Any]:
        check_may_stop_current(ctx, user, "interrupt")
        return {"interrupted": ctx.scheduler.interrupt_current(user.may_act_on)}

    @router.post("/skip")
    @translate_errors
    def skip(user: User = Depends(caller)) -> dict[str, Any]:
        check_may_stop_current(ctx, user, "skip")
        return {"skipped": ctx.scheduler.skip_current(user.may_act_on)}

    @router.post("/png-info")
    @translate_errors
    def png_info(body: PngInfoBody) -> dict[str, Any]:  # a plain def: FastAPI runs it on a worker thread
        image = decode_image(body.image, limits)
        text = read_infotext(image) or ""
        parsed = parse_infotext(text) if text else {}
        return {"info": text, "items": {"parameters": text} if text else {}, "parameters": parsed}

    @router.get("/prompt-styles")
    @translate_errors
    def prompt_styles() -> list[dict[str, str]]:
        return [
            {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            for style in (ctx.styles.get(name) for name in ctx.styles.names())
        ]

    @router.get("/cmd-flags")
    @translate_errors
    def cmd_flags() -> dict[str, Any]:
        # Never echo credentials (A1111 #17411 leaked the gradio password here).
        s = ctx.settings
        return {"listen": s.listen, "port": s.port, "api": s.api, "nowebui": s.nowebui, "device": s.device,
                "precision": s.precision, "data_dir": str(s.data_dir), "auth": bool(s.auth)}

    router.include_router(build_extras_router(ctx))
    router.include_router(build_scripts_router(lambda: ExtensionScripts(ctx.extensions),
                                               lambda: ctx.xyz.registry))  # extensions' axes included
    return router


def check_may_stop_current(ctx: AppContext, user: User, action: str) -> None:
    """403 when the running job belongs to someone else and the caller is not an admin."""
    job = ctx.scheduler.current
    if job is not None and not user.may_act_on(job.owner):
        raise Forbidden(f"cannot {action}: the running job belongs to another user; only they or an admin can stop it")
