"""The denoising call every mode shares: txt2img, the hires-fix second pass, img2img and inpaint.

Each mode is a diffusers pipeline class built around the *same* loaded modules (no second copy of any
weights: the img2img/inpaint pipelines are new wrappers around the txt2img pipeline's UNet, VAE and text
encoders). Prompt embeddings, seeds, progress, previews, interrupt and per-step prompt schedules are wired
the same way for all of them, here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from webui.generation.conditioning import ConditioningSchedule, batch_repeat
from webui.generation.hooks import DenoisingHooks, JobModel, SchedulerFactory
from webui.generation.live_preview import latents_to_preview
from webui.generation.pooled_switch import PooledSwitchingDenoiser
from webui.generation.samplers import build_scheduler, sampler_table
from webui.jobs.progress import JobControl
from webui.models.families import family_named
from webui.models.manager import LoadedModel

def pipeline_for(model: LoadedModel, mode: str, denoising: DenoisingHooks | None = None,
                 unet_wrapper: Callable[[Any], Any] | None = None) -> Any:
    """A diffusers pipeline of the mode's class sharing every module with the loaded pipeline.

    When the job's denoising hooks need them, its UNet and/or VAE component is a wrapper around the
    resident module (webui.generation.hooked_modules says why); otherwise the modules themselves.
    `unet_wrapper` wraps the UNet last (txt2img's Refiner: webui.generation.refiner)."""
    import diffusers

    base = model.pipeline
    family = family_named(model.family)
    class_name = family.pipeline_class_name(mode)
    wraps = denoising is not None and ((denoising.wants_unet and "unet" in base.components) or denoising.wants_vae)
    hooks_transformer = (denoising is not None and denoising.wants_residuals
                         and family.transformer_controlnet is not None)
    switches_pooled = family.pooled_denoiser_argument is not None
    if (type(base).__name__ == class_name and not wraps and not hooks_transformer and unet_wrapper is None
            and not switches_pooled):
        return base
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    options = {"requires_safety_checker": False} if "requires_safety_checker" in accepted else {}
    if "requires_aesthetics_score" in accepted:
        options["requires_aesthetics_score"] = False
    options.update({name: value for name, value in family.pipeline_options.items() if name in accepted})
    components = {name: module for name, module in base.components.items() if name in accepted}
    if wraps:
        from webui.generation.hooked_modules import HookedUNet, HookedVAE

        assert denoising is not None
        if denoising.wants_unet and "unet" in components:  # the UNet call hooks know UNets only
            components["unet"] = HookedUNet(components["unet"], denoising)
        if denoising.wants_vae:
            components["vae"] = HookedVAE(components["vae"], denoising)
    if hooks_transformer:
        from webui.generation.hooked_modules import HookedTransformer

        assert denoising is not None
        components[family.denoiser] = HookedTransformer(components[family.denoiser], denoising)
    if unet_wrapper is not None:
        components["unet"] = unet_wrapper(components["unet"])
    if switches_pooled:
        components[family.denoiser] = PooledSwitchingDenoiser(components[family.denoiser],
                                                              family.pooled_denoiser_argument)
    pipeline = cls(**components, **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def job_model(model: LoadedModel) -> JobModel:
    """The checkpoint as a job's hooks see it (its name, family, denoiser config, device and dtype), with this
    job's encoder of control images into the denoiser's latents (families with transformer ControlNets)."""
    from webui.generation.controlnet import memoized_encoder

    family = family_named(model.family)
    vae = model.pipeline.vae

    def encode_pixels(pixels: torch.Tensor) -> torch.Tensor:
        latents = vae.encode(pixels.to(device=model.device, dtype=vae.dtype)).latent_dist.mean
        return family.pipeline_latents(to_model_latents(vae, latents))

    encoder = None
    if family.transformer_controlnet is not None:
        # Pixels per latent token: the VAE's downscale (one per level after the first) times the denoiser's patch.
        per_token = 2 ** (len(vae.config.block_out_channels) - 1) * (family.size_multiple // 8)
        encoder = memoized_encoder(encode_pixels, per_token)
    return JobModel(model.record.name, model.family, dict(denoiser_of(model).config), model.device, model.dtype,
                    dict(model.controls), encoder)


def unet_hooks_note(model: LoadedModel, denoising: DenoisingHooks | None) -> list[str]:
    """What the user should know when extensions hook UNet calls on a model whose denoiser is a transformer
    (SD3, Flux): those hooks speak the UNet's call and are left out (`pipeline_for`)."""
    family = family_named(model.family)
    if denoising is None or not denoising.wants_unet or family.denoiser == "unet":
        return []
    if family.transformer_controlnet is not None:   # residuals reach its transformer; model-call wrappers do not
        return ([f"extension model-call wrappers (UNet calls) do not apply to {family.label}'s {family.denoiser}: "
                 "not used"] if denoising.wraps_model_calls else [])
    return [f"extension hooks on the UNet's calls do not apply to {family.label}'s {family.denoiser}: not used"]


def sized(pipeline: Any, arguments: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """`arguments` plus the output size where the pipeline takes one: SD1/SDXL img2img pipelines take the
    size from the image and have no such parameters; SD3's default to the family's native size otherwise."""
    accepted = inspect.signature(pipeline.__call__).parameters
    return {**arguments, **({"width": width, "height": height} if "width" in accepted else {})}


def use_sampler(model: LoadedModel, sampler_name: str, schedule: str, seed: int,
                added: Mapping[str, SchedulerFactory] | None = None, shift: float | None = None) -> None:
    """Install the A1111-named sampler on the loaded pipeline (the mode wrappers share its scheduler slot
    only at build time, so call this before `pipeline_for`). `added` are samplers extensions added; `shift`
    is a flow model's requested "Shift" (None: the model's own, fixed or resolution-dependent)."""
    base_config = dict(model.scheduler_config)
    if shift is not None and family_named(model.family).flow_matching:
        base_config.update(shift=float(shift), use_dynamic_shifting=False)  # a fixed shift replaces the dynamic one
    if added and sampler_name in added:
        model.pipeline.scheduler = added[sampler_name](base_config)
        return
    # DPM++ SDE draws its noise from a seeded sampler of its own rather than from `generator`.
    scheduler_config = {**base_config, "noise_sampler_seed": seed}
    table = sampler_table(family_named(model.family).flow_matching)
    model.pipeline.scheduler = build_scheduler(sampler_name, schedule, scheduler_config, table)


@contextmanager
def attention_installed(model: LoadedModel, denoising: DenoisingHooks | None) -> Iterator[None]:
    """The job's attention processors on the UNet for the block, the previous ones back afterwards
    (diffusers' public `attn_processors` / `set_attn_processor`)."""
    unet = denoiser_of(model)
    wanted = denoising.attention_processors(unet.attn_processors) if denoising is not None else {}
    if not wanted:
        yield
        return
    previous = dict(unet.attn_processors)
    unet.set_attn_processor({**previous, **wanted})
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


def noise_level(scheduler: Any, step: int) -> float:
    """The sigma of the latents after `step` (0-based) of the scheduler's current run: from its sigma table
    at its step index when it keeps one (k-diffusion style samplers; img2img starts part-way in), else from
    the training schedule's alphas at the next timestep; 0 after the last step."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and index is not None and index < len(sigmas):
        return float(sigmas[index])
    timesteps = getattr(scheduler, "timesteps", None)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if timesteps is None or alphas is None or step + 1 >= len(timesteps):
        return 0.0
    alpha = float(alphas[int(timesteps[step + 1])])
    return ((1 - alpha) / alpha) ** 0.5


def model_variant(model: LoadedModel) -> str | None:
    """Which model of its family the checkpoint is (SD3.5 Medium/Large, Flux dev/schnell), None if unknown."""
    architecture = model.record.architecture
    return architecture.variant if architecture is not None else None


def denoiser_of(model: LoadedModel) -> Any:
    """The loaded pipeline's denoiser: its UNet, or the transformer of DiT families (SD3, Flux)."""
    return getattr(model.pipeline, family_named(model.family).denoiser)


def uses_inpainting_unet(model: LoadedModel) -> bool:
    """9-channel UNets (sd-v1-5-inpainting and the like) take the mask and masked image as extra input."""
    family = family_named(model.family)
    return family.denoiser == "unet" and denoiser_of(model).config.in_channels == 9


def step_callback(model: LoadedModel, conditioning: ConditioningSchedule, batch_size: int,
                  control: JobControl | None, step_offset: int = 0, total_steps: int | None = None,
                  denoising: DenoisingHooks | None = None, image_size: tuple[int, int] = (0, 0)) -> Callable:
    """diffusers callback_on_step_end: progress, preview, stop flags, per-step prompt schedule, and the
    job's per-step hook (which may hand back changed latents).

    ``step_offset``/``total_steps`` let a second pass (hires fix) continue the first pass's progress bar;
    ``image_size`` (height, width) is what families with packed latents need to unpack them for a preview.
    """
    family = family_named(model.family)

    def callback(pipeline, step: int, timestep, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        updates: dict[str, torch.Tensor] = {}
        if denoising is not None:
            denoising.step_finished(step, pipeline.num_timesteps)
            changed = denoising.on_step(tensors["latents"], step_offset + step, total_steps or step_offset
                                        + pipeline.num_timesteps, noise_level(pipeline.scheduler, step))
            if changed is not None:
                updates["latents"] = changed
        if control is not None:
            control.report_step(step_offset + step + 1, total=total_steps or step_offset + pipeline.num_timesteps)
            if control.wants_preview(step + 1):
                control.set_preview(latents_to_preview(family.vae_latents(tensors["latents"], *image_size),
                                                       model.family))
            if control.should_stop_batch:
                pipeline._interrupt = True  # diffusers' documented way to end the denoising loop early
        scheduled_step = min(step, len(conditioning.positive) - 1)
        if conditioning.changes_after(scheduled_step):
            positive = conditioning.positive[scheduled_step + 1]
            negative = conditioning.negative[scheduled_step + 1]
            hidden = batch_repeat(positive.embeds, batch_size)
            guided = getattr(pipeline, "do_classifier_free_guidance", False)  # (Flux: distilled, one pass)
            if guided:
                hidden = torch.cat([batch_repeat(negative.embeds, batch_size), hidden])
            updates["prompt_embeds"] = hidden
            if positive.pooled is not None:
                pooled = batch_repeat(positive.pooled, batch_size)
                if guided:
                    pooled = torch.cat([batch_repeat(negative.pooled, batch_size), pooled])
                if family.pooled_step_input is not None:
                    updates[family.pooled_step_input] = pooled
                denoiser = getattr(pipeline, family.denoiser, None)
                if isinstance(denoiser, PooledSwitchingDenoiser):
                    denoiser.switch_pooled(pooled)
        return updates

    return callback


def common_arguments(model: LoadedModel, conditioning: ConditioningSchedule, *, batch_size: int, steps: int,
                     cfg_scale: float, seeds: list[int], control: JobControl | None, step_offset: int = 0,
                     total_steps: int | None = None, denoising: DenoisingHooks | None = None,
                     image_size: tuple[int, int] = (0, 0), distilled_cfg: float | None = None) -> dict[str, Any]:
    """Keyword arguments every pipeline call takes: embeddings, guidance, seeded generators, callbacks (what
    the pipeline takes for the prompt and the guidance is the family's decision)."""
    first_positive, first_negative = conditioning.positive[0], conditioning.negative[0]
    family = family_named(model.family)
    arguments: dict[str, Any] = family.prompt_arguments(first_positive.embeds, first_negative.embeds,
                                                        first_positive.pooled, first_negative.pooled, cfg_scale,
                                                        batch_size)
    # Guidance-distilled families (Flux.1 dev) take Forge's "Distilled CFG Scale" as a model input.
    guidance = distilled_cfg if family.distilled_guidance and distilled_cfg is not None else cfg_scale
    arguments.update(family.pipeline_arguments(model_variant(model), guidance))
    arguments.update(
        num_inference_steps=steps,
        # One CPU generator per image keeps sampler noise tied to the image's own seed (A1111 semantics).
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        callback_on_step_end=step_callback(model, conditioning, batch_size, control, step_offset, total_steps,
                                           denoising, image_size),
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]
        + ([family.pooled_step_input] if family.pooled_step_input else []),
    )
    return arguments


def pipeline_strength(steps: int, strength: float) -> float:
    """The strength handed to diffusers: enough for at least one step when any is asked for.

    With steps x strength < 1 diffusers would schedule no step at all and fail on an empty timestep list;
    A1111 runs one step at the smallest noise level there, which a strength of just over 1/steps gives."""
    if strength <= 0 or executed_steps(steps, strength) >= 1:
        return strength
    return min(1.0, 1.000001 / steps)


def executed_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass really runs: diffusers (like A1111) skips the first (1 - strength) of them."""
    return min(int(steps * strength), steps)


@torch.no_grad()
def encode_images(model: LoadedModel, images: list[Image.Image], denoising: DenoisingHooks | None = None) -> torch.Tensor:
    """Pixel images -> scaled latents (the distribution's mean: deterministic, as A1111's img2img)."""
    vae = job_vae(model, denoising)
    pixels = torch.stack([
        torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        for image in images
    ]).to(device=model.device, dtype=vae.dtype)
    return to_model_latents(vae, vae.encode(pixels).latent_dist.mean)


def to_model_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the denoiser's latent space: `(z - shift_factor) * scaling_factor`, both from the VAE's
    config (SD3/Flux VAEs have a shift; SD1/SDXL's have none)."""
    return (latents - vae_shift(vae)) * vae.config.scaling_factor


def to_vae_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_model_latents`: what `vae.decode` takes."""
    return latents / vae.config.scaling_factor + vae_shift(vae)


def vae_shift(vae: Any) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def job_vae(model: LoadedModel, denoising: DenoisingHooks | None) -> Any:
    """The VAE a job's own encode/decode calls use: the hooked wrapper when its hooks want one."""
    if denoising is not None and denoising.wants_vae:
        from webui.generation.hooked_modules import HookedVAE

        return HookedVAE(model.pipeline.vae, denoising)
    return model.pipeline.vae
