"""img2img, inpaint and outpaint on the loaded model (A1111's img2img tab, one request at a time).

Inpainting works with both kinds of checkpoint: 9-channel inpainting UNets get the mask and masked image
as input, ordinary ones inpaint by latent masking (diffusers' inpaint pipeline blends the original latents
back outside the mask at every step). Either way the result is composited onto the source through the
blurred mask, so pixels outside it are the source's pixels, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from webui.generation.conditioning import PromptEncoder, build_conditioning
from webui.generation.denoise import (
    attention_installed,
    common_arguments,
    encode_images,
    executed_steps,
    job_model,
    model_variant,
    pipeline_strength,
    pipeline_for,
    sized,
    unet_hooks_note,
    use_sampler,
    uses_inpainting_unet,
)
from webui.generation.image_ops import ResizeMode, outpaint_canvas, resize_image, to_rgb
from webui.generation.hooks import DenoisingHooks, GenerationHooks, JobInfo
from webui.generation.masks import (
    MaskedContent,
    blur_mask,
    composite,
    crop_region,
    expand_to_aspect,
    fill_masked_area,
    latent_mask,
    mask_is_empty,
    prepare_mask,
)
from webui.generation.outputs import mode_folders
from webui.generation.processing import SubBatch, prompt_preparer, run_batches
from webui.generation.requests import Img2ImgRequest
from webui.generation.styles import StyleDatabase
from webui.generation.txt2img import (
    GenerationResult,
    PreparedPrompts,
    finish_grid,
    generation_parameters,
    initial_noise,
    note_job,
    prepare_prompts,
    resolve_seed,
)
from webui.jobs.progress import JobControl
from webui.models.families import family_named
from webui.models.manager import LoadedModel
from webui.upscaling.service import UpscalerService
from webui.upscaling.tiles import UpscaleInterrupted


@dataclass
class PreparedSource:
    """The source image and mask at the size the model works on, plus how to put the result back."""

    canvas: Image.Image            # the full source at output size (what the result is composited onto)
    mask: Image.Image | None       # binary "L" mask at canvas size; None = plain img2img
    work_image: Image.Image        # what the model sees (a crop for "only masked")
    work_mask: Image.Image | None
    region: tuple[int, int, int, int] | None  # the crop in canvas coordinates, for "only masked"
    notes: list[str]


def _binarise(mask: Image.Image) -> Image.Image:
    return mask.convert("L").point(lambda value: 255 if value >= 128 else 0)


def prepare_source(request: Img2ImgRequest, seed: int, size_multiple: int = 8,
                   enlarge: Callable[[Image.Image, float], Image.Image] | None = None) -> PreparedSource:
    """Apply the resize mode, mask options and the outpainting canvas (its sides multiples of the model family's
    `size_multiple`); collect notes for the user. `enlarge(image, factor)` is the upscaler of A1111's
    `upscaler_for_img2img` option: when the resize mode makes the source larger, it enlarges it first and the
    resize mode only fits the result (None, or the "None" upscaler: Lanczos does it all)."""
    notes: list[str] = []
    source, alpha_note = to_rgb(request.init_images[0])
    if alpha_note:
        notes.append(alpha_note)
    mask = None
    if request.mask is not None and not request.outpaints:
        mask, mask_notes = prepare_mask(request.mask, source.size, invert=bool(request.inpainting_mask_invert))
        notes += mask_notes
        if mask_is_empty(mask):
            notes.append("the mask is empty: ran plain img2img")
            mask = None
    if request.outpaints:
        if request.mask is not None:
            notes.append("outpainting makes its own mask: the painted mask was not used")
        canvas, mask = outpaint_canvas(source, request.outpaint_left, request.outpaint_right,
                                       request.outpaint_up, request.outpaint_down, seed=seed,
                                       size_multiple=size_multiple)
    else:
        mode = ResizeMode.from_value(request.resize_mode)
        factor = max(request.width / source.width, request.height / source.height)
        if enlarge is not None and mode is not ResizeMode.LATENT_UPSCALE and factor > 1:
            source = enlarge(source, factor)
        canvas = resize_image(source, request.width, request.height, mode)
        if mask is not None:
            mask = _binarise(resize_image(mask, request.width, request.height, mode))
    work_image, work_mask, region = canvas, mask, None
    if mask is not None and request.inpaint_full_res:
        box = crop_region(mask, request.inpaint_full_res_padding)
        if box is not None:
            region = expand_to_aspect(box, request.width, request.height, canvas.size)
            size = (request.width, request.height) if not request.outpaints else canvas.size
            work_image = canvas.crop(region).resize(size, Image.Resampling.LANCZOS)
            work_mask = _binarise(mask.crop(region).resize(size, Image.Resampling.BILINEAR))
    if work_mask is not None and MaskedContent.from_value(request.inpainting_fill) is MaskedContent.FILL:
        work_image = fill_masked_area(work_image, work_mask)
    return PreparedSource(canvas, mask, work_image, work_mask, region, notes)


def img2img_parameters(request: Img2ImgRequest, prepared: PreparedSource) -> dict[str, Any]:
    """The infotext fields A1111 adds for img2img and inpainting."""
    fields: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    if prepared.mask is not None:
        fields["Mask blur"] = request.mask_blur
        fields["Masked content"] = MaskedContent.from_value(request.inpainting_fill).label
        if request.inpainting_mask_invert:
            fields["Mask mode"] = "Inpaint not masked"
        if request.inpaint_full_res:
            fields["Inpaint area"] = "Only masked"
            fields["Masked area padding"] = request.inpaint_full_res_padding
    if request.outpaints:
        fields["Outpaint"] = (f"left {request.outpaint_left}, right {request.outpaint_right}, "
                              f"up {request.outpaint_up}, down {request.outpaint_down}")
    if request.resize_mode and not request.outpaints:
        fields["Resize mode"] = ResizeMode.from_value(request.resize_mode).label
    return fields


def _latent_start(model: LoadedModel, request: Img2ImgRequest, prepared: PreparedSource, seeds: list[int],
                  subseeds: list[int], denoising: DenoisingHooks | None = None) -> torch.Tensor | None:
    """Start latents when pixels are not enough: "latent noise"/"latent nothing" masked content, and the
    latent-upscale resize mode (A1111 encodes at the source size and resizes the latents)."""
    fill = MaskedContent.from_value(request.inpainting_fill)
    latent_modes = (MaskedContent.LATENT_NOISE, MaskedContent.LATENT_NOTHING)
    latent_resize = ResizeMode.from_value(request.resize_mode) is ResizeMode.LATENT_UPSCALE and not request.outpaints
    if not (prepared.work_mask is not None and fill in latent_modes) and not latent_resize:
        return None
    if latent_resize and prepared.region is None:
        source, _ = to_rgb(request.init_images[0])
        width, height = source.width - source.width % 8, source.height - source.height % 8
        latents = encode_images(model, [source.resize((max(width, 8), max(height, 8)), Image.Resampling.LANCZOS)],
                                denoising)
        size = (prepared.work_image.height // model.pipeline.vae_scale_factor,
                prepared.work_image.width // model.pipeline.vae_scale_factor)
        latents = torch.nn.functional.interpolate(latents, size=size, mode="bilinear")
    else:
        latents = encode_images(model, [prepared.work_image], denoising)
    latents = latents.repeat(len(seeds), 1, 1, 1)
    if prepared.work_mask is not None and fill in latent_modes:
        height, width = latents.shape[-2:]
        cells = torch.from_numpy(latent_mask(prepared.work_mask, width, height)).to(latents)
        if fill is MaskedContent.LATENT_NOISE:
            noise = torch.stack([initial_noise(tuple(latents.shape[1:]), s, v, request.subseed_strength)
                                 for s, v in zip(seeds, subseeds)]).to(latents)
            latents = latents * (1 - cells) + noise * cells
        else:
            latents = latents * (1 - cells)
    return latents


@torch.no_grad()
def _denoise(model: LoadedModel, request: Img2ImgRequest, prepared: PreparedSource, conditioning, seeds: list[int],
             subseeds: list[int], control: JobControl | None, denoising: DenoisingHooks | None = None) -> list[Image.Image]:
    arguments = common_arguments(model, conditioning, batch_size=len(seeds), steps=request.steps,
                                 cfg_scale=request.cfg_scale, seeds=seeds, control=control, denoising=denoising,
                                 image_size=(prepared.work_image.height, prepared.work_image.width),
                                 distilled_cfg=request.distilled_cfg_scale)
    start = _latent_start(model, request, prepared, seeds, subseeds, denoising)
    image: Any = start if start is not None else prepared.work_image
    arguments.update(image=image, strength=pipeline_strength(request.steps, request.denoising_strength),
                     output_type="pil")
    if prepared.work_mask is None and not uses_inpainting_unet(model):
        pipeline = pipeline_for(model, "img2img", denoising)
        width, height = prepared.work_image.size
        return list(pipeline(**sized(pipeline, arguments, width, height)).images)
    mask = prepared.work_mask or Image.new("L", prepared.work_image.size, 255)
    width, height = prepared.work_image.size
    arguments.update(mask_image=mask, width=width, height=height)
    if start is not None:
        # Pixels cannot describe these latents, so the masked-image input is computed here: the source with
        # the masked area blanked (diffusers' convention) for 9-channel UNets; unused by ordinary ones.
        if uses_inpainting_unet(model):
            blank = Image.composite(Image.new("RGB", (width, height), (127, 127, 127)), prepared.work_image, mask)
            arguments["masked_image_latents"] = encode_images(model, [blank], denoising).repeat(len(seeds), 1, 1, 1)
        else:
            arguments["masked_image_latents"] = start
    return list(pipeline_for(model, "inpaint", denoising)(**arguments).images)


def _put_back(prepared: PreparedSource, generated: Image.Image, mask_blur: int) -> Image.Image:
    """Paste an "only masked" crop back and composite through the blurred mask (unmasked pixels unchanged)."""
    if prepared.mask is None:
        return generated
    full = generated
    if prepared.region is not None:
        x0, y0, x1, y1 = prepared.region
        full = prepared.canvas.copy()
        full.paste(generated.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    elif generated.size != prepared.canvas.size:
        full = generated.resize(prepared.canvas.size, Image.Resampling.LANCZOS)
    return composite(prepared.canvas, full, blur_mask(prepared.mask, mask_blur))


def run_img2img(model: LoadedModel, request: Img2ImgRequest, *, outputs_root: Path | None,
                styles: StyleDatabase | None = None, control: JobControl | None = None,
                hooks: GenerationHooks | None = None, upscalers: UpscalerService | None = None,
                images: tuple[int, int | None] | None = None) -> GenerationResult:
    """Generate every image of an img2img/inpaint/outpaint request; saves under outputs_root when asked.
    `hooks` are the extensions' (webui.generation.hooks; none by default); `upscalers` run the request's
    `upscaler_for_img2img` on the job's device (None: Lanczos)."""
    hooks = hooks or GenerationHooks()
    prompts = prepare_prompts(model, request.prompt, request.negative_prompt, request.styles, styles)
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    enlarge = None
    if upscalers is not None and request.upscaler_for_img2img not in ("", "None"):
        def enlarge(image: Image.Image, factor: float) -> Image.Image:
            try:
                return upscalers.upscale(image, request.upscaler_for_img2img, factor, device=model.device,
                                         control=control)
            except UpscaleInterrupted:  # the job was interrupted: finish the resize the quick way
                return image

    prepared = prepare_source(request, seed, family_named(model.family).size_multiple, enlarge)
    job = JobInfo(request, list(model.warnings) + list(prepared.notes), job_model(model))
    denoising = hooks.denoising(job)
    job.warnings.extend(unet_hooks_note(model, denoising))
    encoder = PromptEncoder(model.pipeline, model.family, request.clip_skip, model_variant(model))
    steps = max(executed_steps(request.steps, request.denoising_strength), 1)
    saving = request.save_images and outputs_root is not None
    size = prepared.canvas.size
    conditionings: dict[tuple[str, str], Any] = {}
    prepare = prompt_preparer(prompts, lambda text, negative: prepare_prompts(model, text, negative, (), None))

    def draw(batch: SubBatch) -> list[Image.Image]:
        use_sampler(model, request.sampler_name, request.scheduler, batch.seeds[0], hooks.samplers(), request.shift)
        if request.denoising_strength == 0:
            return [prepared.canvas.copy() for _ in batch.seeds]  # nothing to redraw
        key = (batch.prompts.encoder_prompt, batch.prompts.encoder_negative)
        if key not in conditionings:
            conditionings[key] = build_conditioning(encoder, *key, steps)
        return [_put_back(prepared, image, request.mask_blur)
                for image in _denoise(model, request, prepared, conditionings[key], batch.seeds, batch.subseeds,
                                      control, denoising)]

    def parameters_for(image_prompts: PreparedPrompts, image_seed: int, image_subseed: int) -> dict[str, Any]:
        note_job(job, encoder)
        parameters = generation_parameters(request, model, image_seed, image_subseed, image_prompts.ti_hashes,
                                           image_prompts.model_extras,
                                           encoder.sequence_infotext(image_prompts.encoder_prompt, steps))
        parameters.update(img2img_parameters(request, prepared))
        parameters["Size"] = f"{size[0]}x{size[1]}"
        return parameters

    images_folder, grids_folder = mode_folders(outputs_root, True) if saving and outputs_root else (None, None)
    result = GenerationResult([], [], [], [], prompts.prompt, prompts.negative_prompt).describe_model(model, prompts)
    with attention_installed(model, denoising):
        run_batches(model, request, result, hooks=hooks, job=job, seed=seed, subseed=subseed, prepare=prepare,
                    draw=draw, parameters_for=parameters_for, steps_per_batch=steps,
                    images_folder=images_folder, control=control, images=images)
    result.interrupted = control is not None and control.interrupted
    finish_grid(result, request.save_grid, grids_folder)
    return result
