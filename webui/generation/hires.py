"""Hires fix: txt2img at the base size, upscale (in latent or pixel space), then an img2img pass at the
larger size. The second pass uses the same loaded modules through an img2img pipeline wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from webui.generation.conditioning import ConditioningSchedule, PromptEncoder, build_conditioning
from webui.generation.denoise import (
    common_arguments,
    executed_steps,
    model_variant,
    job_vae,
    pipeline_for,
    sized,
    to_vae_latents,
    use_sampler,
    uses_inpainting_unet,
)
from webui.generation.hooks import DenoisingHooks, SchedulerFactory
from webui.generation.requests import Txt2ImgRequest, hires_size
from webui.jobs.progress import JobControl
from webui.models.families import family_named
from webui.models.manager import LoadedModel
from webui.upscaling.service import UpscalerService
from webui.upscaling.tiles import UpscaleInterrupted

LATENT_MODES = {"Latent": "bilinear", "Latent (nearest-exact)": "nearest-exact", "Latent (bicubic)": "bicubic"}
PIXEL_FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


def hires_parameters(request: Txt2ImgRequest, size_multiple: int) -> dict[str, Any]:
    """The infotext fields A1111 writes for the hires pass (`size_multiple`: the family's, see `hires_size`)."""
    if not request.enable_hr:
        return {}
    width, height = hires_size(request, size_multiple)
    resized = bool(request.hr_resize_x or request.hr_resize_y)
    return {
        "Denoising strength": request.denoising_strength,
        "Hires upscale": None if resized else request.hr_scale,
        "Hires resize": f"{width}x{height}" if resized else None,
        "Hires steps": request.hr_second_pass_steps or None,
        "Hires upscaler": request.hr_upscaler,
        "Hires sampler": request.hr_sampler_name or None,
        "Hires schedule type": request.hr_scheduler or None,
        "Hires prompt": request.hr_prompt or None,
        "Hires negative prompt": request.hr_negative_prompt or None,
    }


@dataclass
class HiresPass:
    model: LoadedModel
    request: Txt2ImgRequest
    width: int
    height: int
    requested_steps: int
    conditioning: ConditioningSchedule
    samplers: Mapping[str, SchedulerFactory] = field(default_factory=dict)  # samplers extensions added
    denoising: DenoisingHooks | None = None  # the job's denoising hooks (webui.generation.hooks)
    upscalers: UpscalerService | None = None  # model upscalers (ESRGAN...) for the pixel step; None: filters only

    @classmethod
    def plan(cls, model: LoadedModel, request: Txt2ImgRequest, encoder_prompt: str, encoder_negative: str,
             samplers: Mapping[str, SchedulerFactory] | None = None,
             denoising: DenoisingHooks | None = None, upscalers: UpscalerService | None = None) -> "HiresPass":
        width, height = hires_size(request, family_named(model.family).size_multiple)
        requested = request.hr_second_pass_steps or request.steps
        encoder = PromptEncoder(model.pipeline, model.family, request.clip_skip, model_variant(model))
        conditioning = build_conditioning(encoder, encoder_prompt, encoder_negative,
                                          max(executed_steps(requested, request.denoising_strength), 1))
        return cls(model, request, width, height, requested, conditioning, dict(samplers or {}), denoising, upscalers)

    @property
    def in_latent_space(self) -> bool:
        return self.request.hr_upscaler in LATENT_MODES

    @property
    def steps(self) -> int:
        return executed_steps(self.requested_steps, self.request.denoising_strength)

    def upscale(self, first: Any, control: JobControl | None = None) -> Any:
        """The first pass's output at the hires size: latents (in the VAE's layout) interpolated, or pixels
        enlarged by a filter or an upscaler model (on the job's device; an interrupt during the model's
        tiles falls back to Lanczos so the job ends at once)."""
        if self.in_latent_space:
            factor = self.model.pipeline.vae_scale_factor
            size = (self.height // factor, self.width // factor)
            latents = self._vae_layout(first, self.request.height, self.request.width)
            return F.interpolate(latents, size=size, mode=LATENT_MODES[self.request.hr_upscaler])
        name, size = self.request.hr_upscaler, (self.width, self.height)
        if self.upscalers is None or name in PIXEL_FILTERS:
            return [image.resize(size, PIXEL_FILTERS[name]) for image in first]
        try:
            return self.upscalers.upscale_all(first, name, self.width / self.request.width, size=size,
                                              device=self.model.device, control=control)
        except UpscaleInterrupted:
            return [image.resize(size, Image.Resampling.LANCZOS) for image in first]

    def _vae_layout(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return family_named(self.model.family).vae_latents(latents, height, width)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> list[Image.Image]:
        """Latents as images: the first pass's (when the user interrupts before the second pass; `size` is
        their (height, width), the request's by default) or upscaled ones already in the VAE's layout."""
        vae = job_vae(self.model, self.denoising)
        if size is not None:
            latents = self._vae_layout(latents, *size)
        decoded = vae.decode(to_vae_latents(vae, latents.to(vae.dtype))).sample
        return self.model.pipeline.image_processor.postprocess(decoded, output_type="pil")

    @torch.no_grad()
    def run(self, first: Any, seeds: list[int], control: JobControl | None, *, step_offset: int, seed: int,
            unet_wrapper: Callable[[Any], Any] | None = None) -> list[Image.Image]:
        """The second pass over the first pass's result; `unet_wrapper` hands the UNet over to txt2img's
        Refiner part-way (webui.generation.refiner)."""
        request = self.request
        if self.steps == 0:  # denoising 0: nothing to redraw, only the upscale
            upscaled = self.upscale(first, control)
            return self.decode(upscaled) if self.in_latent_space else upscaled
        use_sampler(self.model, request.hr_sampler_name or request.sampler_name,
                    request.hr_scheduler or request.scheduler, seed, self.samplers, request.shift)
        arguments = common_arguments(self.model, self.conditioning, batch_size=len(seeds), steps=self.requested_steps,
                                     cfg_scale=request.cfg_scale, seeds=seeds, control=control,
                                     step_offset=step_offset, total_steps=step_offset + self.steps,
                                     denoising=self.denoising, image_size=(self.height, self.width),
                                     distilled_cfg=request.hr_distilled_cfg)
        arguments.update(image=self.upscale(first, control), strength=request.denoising_strength, output_type="pil",
                         width=self.width, height=self.height)
        if uses_inpainting_unet(self.model):
            pipeline = pipeline_for(self.model, "inpaint", self.denoising, unet_wrapper)
            arguments["mask_image"] = Image.new("L", (self.width, self.height), 255)
            if self.in_latent_space:
                arguments["masked_image_latents"] = arguments["image"]
        else:
            pipeline = pipeline_for(self.model, "img2img", self.denoising, unet_wrapper)
            del arguments["width"], arguments["height"]
            arguments = sized(pipeline, arguments, self.width, self.height)
        if self.denoising is None:
            return list(pipeline(**arguments).images)
        self.denoising.begin_pass(hires=True)
        try:
            return list(pipeline(**arguments).images)
        finally:
            self.denoising.begin_pass(hires=False)   # the next batch's first pass
