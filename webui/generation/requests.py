"""Typed generation requests: A1111's processing object `p`, as plain validated data.

The UI, the HTTP API, X/Y/Z cells and extensions all build the same request type and hand it to the
queue, so validation happens once, here, and produces messages a user can act on.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any

from webui.generation.samplers import (
    AUTOMATIC,
    UnknownSamplerError,
    check_flow_sampler,
    resolve_sampler_and_schedule,
    schedule_types_for,
)


# Refiner names that mean "no refiner"; A1111's API, UI and X/Y/Z axis use "None".
NO_REFINER_CHOICE = "None"
NO_REFINER = ("", NO_REFINER_CHOICE, "none")
DEFAULT_DISTILLED_CFG_SCALE = 3.5  # Forge's default and range for "Distilled CFG Scale"
MAX_DISTILLED_CFG_SCALE = 30.0
VAE_SIZE_MULTIPLE = 8  # every family's VAE halves the image 3 times; families may need more (`size_multiple`)
MIN_SHIFT, MAX_SHIFT = 0.1, 20.0  # flow shift: 0 would collapse the schedule; published models use 1..6


class RequestError(ValueError):
    """A request value that cannot work; the message names the field and the allowed range."""


@dataclass(frozen=True)
class GenerationLimits:
    """Server-side caps so a single request cannot exhaust memory or run forever.

    `max_total_steps` bounds the whole request's work: images x (steps + hires steps), so a batch of
    64 images at 150 steps cannot hold the GPU for an hour while others wait. `max_prompt_chars`
    applies to each prompt field; real prompts, LoRA tags included, stay far below it.
    """

    max_side: int = 2048
    max_steps: int = 150
    max_images: int = 64
    max_total_steps: int = 4000
    max_prompt_chars: int = 20000


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    steps: int = 20
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    # Forge's guidance-distilled models' guidance and flow-matching models' sigma shift; only the families
    # that use them read them (webui.generation.family_fields). shift None = the model's scheduler config.
    distilled_cfg_scale: float = DEFAULT_DISTILLED_CFG_SCALE
    shift: float | None = None
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_count: int = 1          # A1111 n_iter
    batch_size: int = 1
    clip_skip: int = 1
    checkpoint: str | None = None  # None = the currently loaded one
    vae: str = "Automatic"         # "Automatic", "None" (the checkpoint's own) or a file name in models/VAE
    save_images: bool = True
    save_grid: bool = True
    # Hires fix (A1111's txt2img second pass); field names as in A1111's API.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0   # 0 = as many as the first pass
    hr_resize_x: int = 0            # non-zero width/height = "resize to" instead of "upscale by"
    hr_resize_y: int = 0
    hr_sampler_name: str = ""       # "" = the first pass's sampler
    hr_scheduler: str = ""
    hr_prompt: str = ""             # "" = the first pass's prompt
    hr_negative_prompt: str = ""
    hr_distilled_cfg: float = DEFAULT_DISTILLED_CFG_SCALE  # Forge's name: the hires pass's distilled guidance
    denoising_strength: float = 0.7
    # A1111's Refiner (txt2img): another checkpoint takes over once `refiner_switch_at` of the denoising is done.
    refiner_checkpoint: str = ""    # "" = no refiner
    refiner_switch_at: float = 0.8
    extra: dict[str, Any] = field(default_factory=dict)
    # Where saved images go, below outputs/ ("" = outputs/ itself, A1111's layout): the owner's own folder,
    # set by GenerationService from the caller's identity at submit (webui.security.paths), never by a client.
    outputs_subfolder: str = ""
    # Always-on scripts' values by script title ({field name: value}, JSON-able): hooks read their script's.
    script_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Extra `Key: value` pairs for every image's infotext (scripts record their values here for PNG Info).
    infotext_fields: dict[str, Any] = field(default_factory=dict)

    def with_changes(self, **changes: Any) -> "Txt2ImgRequest":
        return replace(self, **changes)

    @property
    def uses_refiner(self) -> bool:
        """Whether a refiner takes part (at switch 1.0 it never would: A1111 then runs the checkpoint alone)."""
        return self.refiner_checkpoint not in NO_REFINER and self.refiner_switch_at < 1.0

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size

    def validate(self, limits: GenerationLimits = GenerationLimits(),
                 added_samplers: Collection[str] = (), model_upscalers: Collection[str] = ()) -> "Txt2ImgRequest":
        """The request with canonical sampler names if every field is usable, else RequestError naming the field.
        `added_samplers` are sampler names extensions added (used with the "Automatic" schedule type);
        `model_upscalers` the usable upscaler model names hires fix may use besides HIRES_UPSCALERS."""
        _check_int("steps", self.steps, 1, limits.max_steps)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, 64, limits.max_side)
            _check_multiple(name, value, VAE_SIZE_MULTIPLE)
        _check_int("batch_count", self.batch_count, 1, limits.max_images)
        _check_int("batch_size", self.batch_size, 1, limits.max_images)
        if self.image_count > limits.max_images:
            raise RequestError(f"batch_count x batch_size = {self.image_count} exceeds the limit of {limits.max_images} images")
        _check_int("clip_skip", self.clip_skip, 1, 12)
        _check_float("cfg_scale", self.cfg_scale, 0.0, 30.0)
        _check_float("distilled_cfg_scale", self.distilled_cfg_scale, 0.0, MAX_DISTILLED_CFG_SCALE)
        if self.shift is not None:
            _check_float("shift", self.shift, MIN_SHIFT, MAX_SHIFT)
        _check_float("subseed_strength", self.subseed_strength, 0.0, 1.0)
        for name in ("seed", "subseed"):
            _check_int(name, getattr(self, name), -1, 2**32 - 1)
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise RequestError(f"{name} must be text")
            if len(text) > limits.max_prompt_chars:
                raise RequestError(f"{name} is {len(text):,} characters long; the limit is {limits.max_prompt_chars:,}")
        sampler_name, schedule = _check_sampler(self.sampler_name, self.scheduler, added_samplers)
        _check_float("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_hires(self, limits, added_samplers, model_upscalers)
        if not isinstance(self.refiner_checkpoint, str):
            raise RequestError("refiner_checkpoint must be a checkpoint name")
        if self.refiner_checkpoint not in NO_REFINER:
            _check_float("refiner_switch_at", self.refiner_switch_at, 0.01, 1.0)
        total_steps = self.image_count * (self.steps + (self.hr_second_pass_steps or self.steps if self.enable_hr else 0))
        if total_steps > limits.max_total_steps:
            raise RequestError(
                f"batch_count x batch_size x steps (hires steps included) = {total_steps} exceeds the limit of "
                f"{limits.max_total_steps} steps per request; split it into smaller requests"
            )
        refiner = "" if self.refiner_checkpoint in NO_REFINER else self.refiner_checkpoint
        return replace(self, sampler_name=sampler_name, scheduler=schedule, refiner_checkpoint=refiner)


def check_samplers_for_family(request: "Txt2ImgRequest", flow_matching: bool, family_label: str,
                              added_samplers: Collection[str] = (), allowed: Collection[str] | None = None) -> None:
    """Refuse samplers the checkpoint's family cannot use (flow-matching families: SD3, Flux; `allowed`: the
    flow samplers its pipelines can drive, None for all), naming those that work; the request's first pass
    is from an image for img2img/inpaint, its hires pass always is."""
    if not flow_matching:
        return
    from_image = isinstance(request, Img2ImgRequest)
    passes = [(request.sampler_name, request.scheduler, from_image)]
    if request.enable_hr and not from_image:
        passes.append((request.hr_sampler_name or request.sampler_name, request.hr_scheduler or request.scheduler,
                       True))
    for sampler, schedule, noised in passes:
        if sampler in added_samplers:
            continue
        try:
            check_flow_sampler(sampler, schedule, from_image=noised, family_label=family_label, allowed=allowed)
        except UnknownSamplerError as error:
            raise RequestError(f"{'hires fix: ' if noised and not from_image else ''}{error}") from None


def check_size_for_family(request: "Txt2ImgRequest", size_multiple: int, family_label: str) -> None:
    """Refuse image sides the checkpoint's denoiser cannot take (SD3/Flux read 2x2 latent patches: multiples of
    16), up front, naming the multiple and the nearest sides that work. The hires target is not refused: it is
    derived from a scale the user chose, so `hires_size` rounds it down to the multiple, as A1111 floors it."""
    for name in ("width", "height"):
        _check_multiple(name, getattr(request, name), size_multiple, family_label)


def _check_multiple(name: str, value: int, multiple: int, family_label: str = "") -> None:
    if value % multiple:
        lower = value - value % multiple
        for_family = f" for {family_label}" if family_label else ""
        raise RequestError(f"{name} {value} is not a multiple of {multiple}{for_family} "
                           f"(try {lower} or {lower + multiple})")


def _check_sampler(name: str, schedule: str, added_samplers: Collection[str]) -> tuple[str, str]:
    """Canonical (sampler, schedule type); accepts A1111 aliases and legacy names ("DPM++ 2M Karras")."""
    if name in added_samplers:
        if schedule not in ("", AUTOMATIC):
            raise RequestError(f"sampler {name!r} (added by an extension) takes no schedule type; use {AUTOMATIC!r}")
        return name, AUTOMATIC
    sampler, schedule = resolve_sampler_and_schedule(name, schedule)
    if schedule not in schedule_types_for(sampler.name):
        raise RequestError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule!r}; "
            f"valid for it: {', '.join(schedule_types_for(sampler.name))}"
        )
    return sampler.name, schedule


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name} {value} is outside {low}..{high}")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name} {value} is outside {low}..{high}")


def request_field_names() -> list[str]:
    return [f.name for f in fields(Txt2ImgRequest)]


HIRES_UPSCALERS = ("Latent", "Latent (nearest-exact)", "Latent (bicubic)", "Lanczos", "Nearest")
MAX_OUTPAINT_PIXELS = 1024


def _check_hires(request: Txt2ImgRequest, limits: GenerationLimits, added_samplers: Collection[str] = (),
                 model_upscalers: Collection[str] = ()) -> None:
    if not request.enable_hr:
        return
    if request.hr_upscaler not in HIRES_UPSCALERS and request.hr_upscaler not in model_upscalers:
        valid = ", ".join((*HIRES_UPSCALERS, *model_upscalers))
        raise RequestError(f"hires upscaler {request.hr_upscaler!r} is unknown; valid: {valid}")
    _check_float("hr_scale", request.hr_scale, 1.0, 4.0)
    _check_float("hr_distilled_cfg", request.hr_distilled_cfg, 0.0, MAX_DISTILLED_CFG_SCALE)
    _check_int("hr_second_pass_steps", request.hr_second_pass_steps, 0, limits.max_steps)
    for name in ("hr_resize_x", "hr_resize_y"):
        _check_int(name, getattr(request, name), 0, limits.max_side)
    width, height = hires_size(request)
    for name, value in (("hires width", width), ("hires height", height)):
        if value > limits.max_side:
            raise RequestError(f"{name} {value} exceeds the limit of {limits.max_side} pixels")
    if request.hr_sampler_name:
        _check_sampler(request.hr_sampler_name, request.hr_scheduler or AUTOMATIC, added_samplers)


def hires_size(request: Txt2ImgRequest, size_multiple: int = VAE_SIZE_MULTIPLE) -> tuple[int, int]:
    """Second-pass size: "resize to" when given (a zero side keeps the aspect ratio), else "upscale by";
    rounded down to a multiple of the family's `size_multiple` (8 as the VAE needs; 16 for SD3/Flux)."""
    if request.hr_resize_x or request.hr_resize_y:
        width = request.hr_resize_x or round(request.width * request.hr_resize_y / request.height)
        height = request.hr_resize_y or round(request.height * request.hr_resize_x / request.width)
    else:
        width, height = round(request.width * request.hr_scale), round(request.height * request.hr_scale)
    return width - width % size_multiple, height - height % size_multiple


@dataclass(frozen=True)
class Img2ImgRequest(Txt2ImgRequest):
    """img2img / inpaint / outpaint: the txt2img fields plus the source image, mask and A1111's inpaint options.

    Integer codes match A1111's API: resize_mode 0 Just resize, 1 Crop and resize, 2 Resize and fill,
    3 Just resize (latent upscale); inpainting_fill 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    """

    init_images: tuple[Any, ...] = ()   # PIL images; the first is used (A1111 does the same)
    mask: Any | None = None             # PIL image; white = change, or transparent strokes over alpha
    resize_mode: int = 0
    denoising_strength: float = 0.75
    mask_blur: int = 4
    inpainting_mask_invert: int = 0     # 1 = inpaint the area NOT painted
    inpainting_fill: int = 1
    inpaint_full_res: bool = False      # "Only masked": work on a crop around the mask at full resolution
    inpaint_full_res_padding: int = 32
    outpaint_left: int = 0              # the Outpainting script: extend the canvas by these many pixels
    outpaint_right: int = 0
    outpaint_up: int = 0
    outpaint_down: int = 0
    # A1111's `upscaler_for_img2img` option: what enlarges the source in the resize modes ("None": Lanczos)
    upscaler_for_img2img: str = "None"

    def validate(self, limits: GenerationLimits = GenerationLimits(),
                 added_samplers: Collection[str] = (), model_upscalers: Collection[str] = ()) -> "Img2ImgRequest":
        if not self.init_images:
            raise RequestError("img2img needs an input image")
        if self.refiner_checkpoint not in NO_REFINER:
            raise RequestError("the Refiner works in txt2img only; img2img runs one checkpoint")
        request = super().validate(limits, added_samplers, model_upscalers)
        if self.upscaler_for_img2img not in ("None", "Lanczos", "Nearest", *model_upscalers):
            raise RequestError(f"upscaler_for_img2img {self.upscaler_for_img2img!r} is unknown; valid: "
                               f"{', '.join(('None', 'Lanczos', 'Nearest', *model_upscalers))}")
        _check_float("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_int("mask_blur", self.mask_blur, 0, 64)
        _check_int("resize_mode", self.resize_mode, 0, 3)
        _check_int("inpainting_fill", self.inpainting_fill, 0, 3)
        _check_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 256)
        for side in ("left", "right", "up", "down"):
            _check_int(f"outpaint_{side}", getattr(self, f"outpaint_{side}"), 0, MAX_OUTPAINT_PIXELS)
        return request

    @property
    def outpaints(self) -> bool:
        return any((self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down))
