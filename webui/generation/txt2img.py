"""txt2img: one request -> images, run on a checked-out model inside a queue job.

Seeds follow A1111 so a seed means the same noise everywhere: image i of a request uses seed + i,
noise is drawn on the CPU generator (device independent, bitwise reproducible), and a variation seed
is slerped in at the given strength. Progress, previews, interrupt and skip go through `JobControl`
from diffusers' `callback_on_step_end`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from webui import __version__
from webui.generation.conditioning import ConditioningSchedule, PromptEncoder, build_conditioning
from webui.generation.denoise import (
    attention_installed,
    common_arguments,
    executed_steps,
    job_model,
    model_variant,
    pipeline_for,
    unet_hooks_note,
    use_sampler,
    uses_inpainting_unet,
)
from webui.generation.family_fields import family_uses, sampling_shift
from webui.generation.hires import HiresPass, hires_parameters
from webui.generation.hooks import DenoisingHooks, GenerationHooks, JobInfo
from webui.generation.outputs import image_grid, mode_folders, save_grid
from webui.generation.processing import MAX_SEED, SubBatch, prompt_preparer, run_batches
from webui.generation.prompt_syntax import extract_network_tags
from webui.generation.refiner import refiner_parameters, refiner_switch
from webui.generation.requests import Txt2ImgRequest
from webui.generation.styles import StyleDatabase
from webui.jobs.progress import JobControl
from webui.models.families import ModelFamily, family_named
from webui.models.hashing import sha256_of_file
from webui.models.manager import LoadedModel
from webui.upscaling.service import UpscalerService


# Infotext keys A1111's `create_infotext` writes from the processing object itself; every other key of an
# image's parameters is what A1111 keeps in `extra_generation_params` (hires, LoRA and TI hashes, masks...).
CORE_INFOTEXT_KEYS = frozenset({
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Seed resize from",
    "Distilled CFG Scale", "Denoising strength", "Conditional mask weight", "Clip skip", "ENSD", "Tiling", "Init image hash", "RNG",
    "Version",
})


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompt: str
    negative_prompt: str
    saved_paths: list[Path] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: Path | None = None
    interrupted: bool = False
    warnings: tuple[str, ...] = ()
    # What the images were made with, for A1111's `info` JSON (filled by `describe_model`).
    model_name: str | None = None
    model_hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    inpainting_conditioning: bool = False
    job_timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    parameters: dict[str, Any] = field(default_factory=dict)  # the first image's infotext pairs
    prompts: list[str] = field(default_factory=list)  # each image's own prompt (prompt expansion may vary it)

    def describe_model(self, model: LoadedModel, prompts: "PreparedPrompts") -> "GenerationResult":
        """Record the checkpoint and VAE the images come from (A1111's sd_model_* and sd_vae_* fields)."""
        self.model_name, self.model_hash = model.record.name, model.record.shorthash
        self.vae_name, self.vae_hash = prompts.model_extras.get("VAE"), prompts.model_extras.get("VAE hash")
        self.inpainting_conditioning = uses_inpainting_unet(model)
        return self

    def info(self, request: Txt2ImgRequest) -> dict[str, Any]:
        """A1111's `info` JSON (returned as a string by /sdapi/v1/txt2img), field for field as A1111's
        `Processed.js()`, plus this server's `scheduler`, `interrupted`, `saved_paths` and `warnings`.

        `infotexts` lines up with the images a client receives: the grid, when there is one, comes first
        and carries the first image's infotext (A1111 does the same); `index_of_first_image` says where
        the single images start."""
        count = len(self.images)
        hires_or_img2img = request.enable_hr or hasattr(request, "init_images")
        infotexts = ([self.infotexts[0]] if self.grid is not None and self.infotexts else []) + self.infotexts
        return {
            "prompt": self.prompt, "all_prompts": list(self.prompts) or [self.prompt] * count,
            "negative_prompt": self.negative_prompt, "all_negative_prompts": [self.negative_prompt] * count,
            "seed": self.seeds[0] if self.seeds else request.seed, "all_seeds": list(self.seeds),
            "subseed": self.subseeds[0] if self.subseeds else request.subseed, "all_subseeds": list(self.subseeds),
            "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
            "sampler_name": request.sampler_name, "scheduler": request.scheduler, "cfg_scale": request.cfg_scale,
            "steps": request.steps, "batch_size": request.batch_size,
            "restore_faces": False, "face_restoration_model": None,  # no face restorers exist here
            "sd_model_name": self.model_name, "sd_model_hash": self.model_hash,
            "sd_vae_name": self.vae_name, "sd_vae_hash": self.vae_hash,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1,  # seed resizing is not implemented: never used
            "denoising_strength": request.denoising_strength if hires_or_img2img else None,
            "extra_generation_params": {key: value for key, value in self.parameters.items()
                                        if key not in CORE_INFOTEXT_KEYS and value is not None},
            "index_of_first_image": 1 if self.grid is not None else 0,
            "infotexts": infotexts, "styles": list(request.styles), "job_timestamp": self.job_timestamp,
            "clip_skip": request.clip_skip, "is_using_inpainting_conditioning": self.inpainting_conditioning,
            "version": f"SD Studio {__version__}",
            "interrupted": self.interrupted, "saved_paths": [str(p) for p in self.saved_paths],
            "warnings": list(self.warnings),
        }


def resolve_seed(seed: int) -> int:
    return random.randrange(MAX_SEED) if seed is None or seed < 0 else int(seed)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (keeps the noise's norm, unlike lerp)."""
    low_flat, high_flat = low.flatten(), high.flatten()
    dot = torch.dot(low_flat / low_flat.norm(), high_flat / high_flat.norm()).clamp(-1, 1)
    if dot.abs() > 0.9995:
        return low * (1 - strength) + high * strength
    omega = torch.acos(dot)
    return (torch.sin((1 - strength) * omega) * low + torch.sin(strength * omega) * high) / torch.sin(omega)


def initial_noise(shape: tuple[int, ...], seed: int, subseed: int, subseed_strength: float) -> torch.Tensor:
    """A1111's per-image noise: CPU generator, optional variation seed."""
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    if subseed_strength > 0:
        variation = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(subseed))
        noise = slerp(subseed_strength, noise, variation)
    return noise


def _latent_shape(model: LoadedModel, request: Txt2ImgRequest) -> tuple[int, int, int]:
    return family_named(model.family).latent_shape(request.height, request.width, model.pipeline.vae_scale_factor)


def generation_parameters(request: Txt2ImgRequest, model: LoadedModel, seed: int, subseed: int,
                          ti_hashes: str | None = None, model_extras: dict[str, Any] | None = None,
                          t5: str | None = None) -> dict[str, Any]:
    """The infotext's key/value line, in A1111's order (Forge's per-family keys where the family has them);
    `t5` notes a whole-prompt encoder that was absent or cut the prompt (`PromptEncoder.sequence_infotext`)."""
    family = family_named(model.family)
    return {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": None if request.scheduler == "Automatic" else request.scheduler,
        "CFG scale": request.cfg_scale,
        **family_parameters(request, family, model.scheduler_config),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.record.shorthash,
        "Model": model.record.name,
        **(model_extras or {}),
        "Variation seed": subseed if request.subseed_strength > 0 else None,
        "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 and family_uses(family, "clip_skip") else None,
        "T5": t5,
        **hires_parameters(request, family.size_multiple),
        **refiner_parameters(request, model),
        **hires_family_parameters(request, family),
        "Lora hashes": ", ".join(f"{use.name}: {use.shorthash}" for use in model.loras) or None,
        "TI hashes": ti_hashes,
        **request.infotext_fields,
        "Version": f"SD Studio {__version__}",
    }


def family_parameters(request: Txt2ImgRequest, family: ModelFamily, scheduler_config: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """Forge's per-family keys, written only for the families that use them: "Distilled CFG Scale" for
    guidance-distilled models, "Shift" (the request's, else the model's scheduler config's) for flow-matching
    ones."""
    return {
        "Distilled CFG Scale": request.distilled_cfg_scale if family_uses(family, "distilled_cfg_scale") else None,
        "Shift": sampling_shift(family, request.shift, scheduler_config),
    }


def hires_family_parameters(request: Txt2ImgRequest, family: ModelFamily) -> dict[str, Any]:
    """Forge's "Hires Distilled CFG Scale", after the other hires keys, for guidance-distilled models."""
    used = request.enable_hr and family_uses(family, "hr_distilled_cfg")
    return {"Hires Distilled CFG Scale": request.hr_distilled_cfg if used else None}


def _sha256(model: LoadedModel, path: Path) -> str:
    """File hash for the infotext, from the shared on-disk cache so large VAEs are not re-read per request."""
    return model.hashes.sha256(path) if model.hashes is not None else sha256_of_file(path)


@dataclass(frozen=True)
class PreparedPrompts:
    """Styled prompts as shown in the infotext, and what the text encoder gets (tags out, embeddings in)."""

    prompt: str
    negative_prompt: str
    encoder_prompt: str
    encoder_negative: str
    ti_hashes: str | None
    model_extras: dict[str, Any]


def prepare_prompts(model: LoadedModel, prompt: str, negative_prompt: str, style_names: tuple[str, ...],
                    styles: StyleDatabase | None) -> PreparedPrompts:
    if style_names and styles is not None:
        prompt, negative_prompt = styles.apply(prompt, negative_prompt, style_names)
    # Network tags (<lora:...>) are resolved by the model manager; the text encoder never sees them.
    encoder_prompt, _tags = extract_network_tags(prompt)
    encoder_negative, _ = extract_network_tags(negative_prompt)
    ti_hashes = None
    if model.embeddings is not None:
        used = model.embeddings.names_in_prompt(encoder_prompt + "\n" + encoder_negative)
        # A1111's "TI hashes": name and the first 12 hex digits of the file's sha256.
        ti_hashes = ", ".join(
            f"{name}: {_sha256(model, model.embeddings.active_embedding(name).path)[:12]}" for name in used
        ) or None
        encoder_prompt = model.embeddings.expand_prompt(encoder_prompt)
        encoder_negative = model.embeddings.expand_prompt(encoder_negative)
    # Hashed once per request: A1111's 10-digit VAE short hash and the file name.
    vae_extras = {"VAE hash": _sha256(model, model.vae_path)[:10], "VAE": model.vae_path.name} if model.vae_path else {}
    return PreparedPrompts(prompt, negative_prompt, encoder_prompt, encoder_negative, ti_hashes, vae_extras)


def note_job(job: JobInfo, encoder: PromptEncoder) -> None:
    """The prompt encoder's notes (a prompt cut at T5's limit) among the job's warnings, once each."""
    job.warnings.extend(note for note in encoder.notes if note not in job.warnings)


def finish_grid(result: GenerationResult, save_grid_wanted: bool, grids_folder: Path | None) -> None:
    if len(result.images) > 1 and save_grid_wanted:
        result.grid = image_grid(result.images)
        if grids_folder is not None:
            result.grid_path = save_grid(result.images, grids_folder, result.seeds[0], result.infotexts[0])


def run_txt2img(model: LoadedModel, request: Txt2ImgRequest, *, outputs_root: Path | None,
                styles: StyleDatabase | None = None, control: JobControl | None = None,
                hooks: GenerationHooks | None = None, upscalers: UpscalerService | None = None,
                images: tuple[int, int | None] | None = None) -> GenerationResult:
    """Generate every image of the request (with the hires-fix pass when enabled); saves them (and a grid)
    under outputs_root when asked. `hooks` are the extensions' (webui.generation.hooks; none by default);
    `upscalers` enlarge hires fix's pixels with a model upscaler (None: the filters only)."""
    hooks = hooks or GenerationHooks()
    prompts = prepare_prompts(model, request.prompt, request.negative_prompt, request.styles, styles)
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    job = JobInfo(request, list(model.warnings), job_model(model))
    denoising = hooks.denoising(job)
    job.warnings.extend(unet_hooks_note(model, denoising))
    encoder = PromptEncoder(model.pipeline, model.family, request.clip_skip, model_variant(model))
    hires_prompts = None
    if request.enable_hr and (request.hr_prompt or request.hr_negative_prompt):
        hires_prompts = prepare_prompts(model, request.hr_prompt or request.prompt,
                                        request.hr_negative_prompt or request.negative_prompt, request.styles, styles)
    shape = _latent_shape(model, request)
    saving = request.save_images and outputs_root is not None
    conditionings: dict[tuple[str, str], ConditioningSchedule] = {}
    hires_passes: dict[tuple[str, str], HiresPass] = {}
    prepare = prompt_preparer(prompts, lambda text, negative: prepare_prompts(model, text, negative, (), None))

    def draw(batch: SubBatch) -> list[Image.Image]:
        key = (batch.prompts.encoder_prompt, batch.prompts.encoder_negative)
        if key not in conditionings:
            conditionings[key] = build_conditioning(encoder, *key, request.steps)
        noise = torch.stack([initial_noise(shape, s, v, request.subseed_strength)
                             for s, v in zip(batch.seeds, batch.subseeds)])
        use_sampler(model, request.sampler_name, request.scheduler, seed, hooks.samplers(), request.shift)
        if not request.enable_hr:
            refined = refiner_switch(model, request, batch.prompts.prompt, batch.prompts.negative_prompt,
                                     request.steps, request.width, request.height, len(batch.seeds))
            return _denoise_batch(model, request, conditionings[key], noise, batch.seeds, control, "pil", denoising,
                                  refined)
        if key not in hires_passes:
            source = hires_prompts or batch.prompts
            hires_passes[key] = HiresPass.plan(model, request, source.encoder_prompt, source.encoder_negative,
                                               hooks.samplers(), denoising, upscalers)
        hires = hires_passes[key]
        first = _denoise_batch(model, request, conditionings[key], noise, batch.seeds, control,
                               "latent" if hires.in_latent_space else "pil", denoising)
        if control is not None and control.should_stop_batch:
            return first if not hires.in_latent_space else hires.decode(first, (request.height, request.width))
        # A1111's default: with hires fix the refiner takes over in the second pass.
        source = hires_prompts or batch.prompts
        refined = refiner_switch(model, request, source.prompt, source.negative_prompt,
                                 request.hr_second_pass_steps or request.steps, hires.width, hires.height,
                                 len(batch.seeds))
        return hires.run(first, batch.seeds, control, step_offset=request.steps, seed=seed, unet_wrapper=refined)

    def parameters_for(image_prompts: PreparedPrompts, image_seed: int, image_subseed: int) -> dict[str, Any]:
        note_job(job, encoder)
        return generation_parameters(request, model, image_seed, image_subseed, image_prompts.ti_hashes,
                                     image_prompts.model_extras,
                                     encoder.sequence_infotext(image_prompts.encoder_prompt, request.steps))

    images_folder, grids_folder = mode_folders(outputs_root, False) if saving and outputs_root else (None, None)
    result = GenerationResult([], [], [], [], prompts.prompt, prompts.negative_prompt).describe_model(model, prompts)
    hires_steps = executed_steps(request.hr_second_pass_steps or request.steps, request.denoising_strength)
    with attention_installed(model, denoising):
        run_batches(model, request, result, hooks=hooks, job=job, seed=seed, subseed=subseed, prepare=prepare,
                    draw=draw, parameters_for=parameters_for,
                    steps_per_batch=request.steps + (hires_steps if request.enable_hr else 0),
                    images_folder=images_folder, control=control, images=images)
    result.interrupted = control is not None and control.interrupted
    finish_grid(result, request.save_grid, grids_folder)
    return result


@torch.no_grad()
def _denoise_batch(model: LoadedModel, request: Txt2ImgRequest, conditioning: ConditioningSchedule,
                   noise: torch.Tensor, seeds: list[int], control: JobControl | None, output_type: str,
                   denoising: DenoisingHooks | None = None, unet_wrapper: Callable[[Any], Any] | None = None) -> Any:
    batch_size = noise.shape[0]
    arguments = common_arguments(model, conditioning, batch_size=batch_size, steps=request.steps,
                                 cfg_scale=request.cfg_scale, seeds=seeds, control=control, denoising=denoising,
                                 image_size=(request.height, request.width), distilled_cfg=request.distilled_cfg_scale)
    latents = family_named(model.family).pipeline_latents(noise.to(device=model.device, dtype=model.dtype))
    arguments.update(width=request.width, height=request.height, output_type=output_type)
    if uses_inpainting_unet(model):
        # An inpainting checkpoint in txt2img: everything is "masked", the masked image is blank (A1111 does the same).
        pipeline = pipeline_for(model, "inpaint", denoising, unet_wrapper)
        blank = Image.new("RGB", (request.width, request.height), (127, 127, 127))
        arguments.update(image=blank, mask_image=Image.new("L", blank.size, 255), strength=1.0, latents=latents)
        output = pipeline(**arguments)
    else:
        arguments.update(latents=latents)
        output = pipeline_for(model, "txt2img", denoising, unet_wrapper)(**arguments)
    return output.images if output_type == "latent" else list(output.images)
