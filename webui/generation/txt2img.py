"""txt2img: one request -> images, run on a checked-out model inside a queue job.

Seeds follow A1111 so a seed means the same noise everywhere: image i of a request uses seed + i,
noise is drawn on the CPU generator (device independent, bitwise reproducible), and a variation seed
is slerped in at the given strength. Progress, previews, interrupt and skip go through `JobControl`
from diffusers' `callback_on_step_end`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from webui import __version__
from webui.generation.conditioning import ConditioningSchedule, PromptEncoder, batch_repeat, build_conditioning
from webui.generation.infotext import create_infotext
from webui.generation.live_preview import latents_to_preview
from webui.generation.outputs import dated_folder, image_grid, save_grid, save_image
from webui.generation.prompt_syntax import extract_network_tags
from webui.generation.requests import Txt2ImgRequest
from webui.generation.samplers import build_scheduler
from webui.generation.styles import StyleDatabase
from webui.jobs.progress import JobControl
from webui.models.hashing import sha256_of_file
from webui.models.manager import LoadedModel

MAX_SEED = 2**32 - 1


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

    def info(self, request: Txt2ImgRequest) -> dict[str, Any]:
        """A1111's `info` JSON (returned as a string by /sdapi/v1/txt2img)."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "all_prompts": [self.prompt] * len(self.images),
            "all_negative_prompts": [self.negative_prompt] * len(self.images),
            "seed": self.seeds[0] if self.seeds else request.seed, "all_seeds": self.seeds,
            "subseed": self.subseeds[0] if self.subseeds else request.subseed, "all_subseeds": self.subseeds,
            "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
            "sampler_name": request.sampler_name, "scheduler": request.scheduler, "cfg_scale": request.cfg_scale,
            "steps": request.steps, "batch_size": request.batch_size, "clip_skip": request.clip_skip,
            "styles": list(request.styles), "infotexts": self.infotexts, "interrupted": self.interrupted,
            "saved_paths": [str(p) for p in self.saved_paths], "warnings": list(self.warnings),
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
    pipeline = model.pipeline
    factor = pipeline.vae_scale_factor
    return (pipeline.unet.config.in_channels, request.height // factor, request.width // factor)


def _step_callback(model: LoadedModel, conditioning: ConditioningSchedule, batch_size: int,
                   control: JobControl | None) -> Callable:
    """diffusers callback_on_step_end: progress, preview, stop flags, per-step prompt schedule."""

    def callback(pipeline, step: int, timestep, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        updates: dict[str, torch.Tensor] = {}
        if control is not None:
            control.report_step(step + 1, total=pipeline.num_timesteps)
            if control.wants_preview(step + 1):
                control.set_preview(latents_to_preview(tensors["latents"], model.family))
            if control.should_stop_batch:
                pipeline._interrupt = True  # diffusers' documented way to end the denoising loop early
        scheduled_step = min(step, len(conditioning.positive) - 1)
        if conditioning.changes_after(scheduled_step):
            positive = conditioning.positive[scheduled_step + 1]
            negative = conditioning.negative[scheduled_step + 1]
            hidden = batch_repeat(positive.hidden, batch_size)
            if pipeline.do_classifier_free_guidance:
                hidden = torch.cat([batch_repeat(negative.hidden, batch_size), hidden])
            updates["prompt_embeds"] = hidden
            if positive.pooled is not None:
                pooled = batch_repeat(positive.pooled, batch_size)
                if pipeline.do_classifier_free_guidance:
                    pooled = torch.cat([batch_repeat(negative.pooled, batch_size), pooled])
                updates["add_text_embeds"] = pooled
        return updates

    return callback


def generation_parameters(request: Txt2ImgRequest, model: LoadedModel, seed: int, subseed: int,
                          ti_hashes: str | None = None, model_extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The infotext's key/value line, in A1111's order."""
    return {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": None if request.scheduler == "Automatic" else request.scheduler,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.record.shorthash,
        "Model": model.record.name,
        **(model_extras or {}),
        "Variation seed": subseed if request.subseed_strength > 0 else None,
        "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "Lora hashes": ", ".join(f"{use.name}: {use.shorthash}" for use in model.loras) or None,
        "TI hashes": ti_hashes,
        "Version": f"SD Studio {__version__}",
    }


def _sha256(model: LoadedModel, path: Path) -> str:
    """File hash for the infotext, from the shared on-disk cache so large VAEs are not re-read per request."""
    return model.hashes.sha256(path) if model.hashes is not None else sha256_of_file(path)


def run_txt2img(model: LoadedModel, request: Txt2ImgRequest, *, outputs_root: Path | None,
                styles: StyleDatabase | None = None, control: JobControl | None = None) -> GenerationResult:
    """Generate every image of the request; saves them (and a grid) under outputs_root when asked."""
    prompt, negative_prompt = request.prompt, request.negative_prompt
    if request.styles and styles is not None:
        prompt, negative_prompt = styles.apply(prompt, negative_prompt, request.styles)
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

    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    pipeline = model.pipeline
    # DPM++ SDE draws its noise from a seeded sampler of its own rather than from `generator`.
    scheduler_config = {**model.scheduler_config, "noise_sampler_seed": seed}
    pipeline.scheduler = build_scheduler(request.sampler_name, request.scheduler, scheduler_config)
    encoder = PromptEncoder(pipeline, model.family, request.clip_skip)
    conditioning = build_conditioning(encoder, encoder_prompt, encoder_negative, request.steps)
    shape = _latent_shape(model, request)

    result = GenerationResult([], [], [], [], prompt, negative_prompt, warnings=model.warnings)
    if control is not None:
        control.start(request.batch_count, request.steps)
    for batch_index in range(request.batch_count):
        if control is not None:
            if control.interrupted:
                break
            control.begin_batch(batch_index)
        offset = batch_index * request.batch_size
        seeds = [(seed + offset + i) % MAX_SEED for i in range(request.batch_size)]
        subseeds = [(subseed + offset + i) % MAX_SEED for i in range(request.batch_size)]
        noise = torch.stack([initial_noise(shape, s, v, request.subseed_strength) for s, v in zip(seeds, subseeds)])
        images = _denoise_batch(model, request, conditioning, noise, seeds, control)
        for image, image_seed, image_subseed in zip(images, seeds, subseeds):
            infotext = create_infotext(prompt, negative_prompt, generation_parameters(request, model, image_seed, image_subseed, ti_hashes, vae_extras))
            result.images.append(image)
            result.infotexts.append(infotext)
            result.seeds.append(image_seed)
            result.subseeds.append(image_subseed)
            if request.save_images and outputs_root is not None:
                folder = dated_folder(outputs_root, "txt2img-images")
                result.saved_paths.append(save_image(image, folder, image_seed, infotext))
    result.interrupted = control is not None and control.interrupted
    if len(result.images) > 1 and request.save_grid:
        result.grid = image_grid(result.images)
        if request.save_images and outputs_root is not None:
            result.grid_path = save_grid(result.images, dated_folder(outputs_root, "txt2img-grids"),
                                         result.seeds[0], result.infotexts[0])
    return result


@torch.no_grad()
def _denoise_batch(model: LoadedModel, request: Txt2ImgRequest, conditioning: ConditioningSchedule,
                   noise: torch.Tensor, seeds: list[int], control: JobControl | None) -> list[Image.Image]:
    pipeline = model.pipeline
    batch_size = noise.shape[0]
    first_positive, first_negative = conditioning.positive[0], conditioning.negative[0]
    arguments: dict[str, Any] = dict(
        prompt_embeds=first_positive.hidden,
        negative_prompt_embeds=first_negative.hidden,
        num_images_per_prompt=batch_size,
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        width=request.width,
        height=request.height,
        latents=noise.to(device=model.device, dtype=model.dtype),
        # One CPU generator per image keeps ancestral/SDE noise tied to the image's own seed.
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        callback_on_step_end=_step_callback(model, conditioning, batch_size, control),
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]
        + (["add_text_embeds"] if model.family == "sdxl" else []),
        output_type="pil",
    )
    if model.family == "sdxl":
        arguments["pooled_prompt_embeds"] = first_positive.pooled
        arguments["negative_pooled_prompt_embeds"] = first_negative.pooled
    return list(pipeline(**arguments).images)
