"""Flux.1 txt2img (and its img2img / hires passes) through the same engine as SD1/SDXL/SD3: catalog -> manager
-> GenerationService -> txt2img, the family deciding what differs (T5-only text tokens with CLIP-L's pooled
vector, distilled guidance, 2x2-packed latents, the flow samplers its pipeline can drive).

Tiny seeded Flux.1 dev and schnell models of the exact architecture (tests/support/flux_files.py) are written as
"all in one" single files; the reference is diffusers' own `FluxPipeline` with a text prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.flux_files import DEV, SCHNELL, reference_pipeline, tiny_flux_modules, write_all_in_one
from webui.context import build_context
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.generation.txt2img import run_txt2img
from webui.jobs.progress import JobControl
from webui.settings import settings_from_args

NAMES = {DEV: "flux1-dev-aio", SCHNELL: "flux1-schnell-aio"}
SMALL = dict(width=64, height=64, steps=2, sampler_name="Euler", save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    data = tmp_path_factory.mktemp("flux-data")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    modules = {DEV: tiny_flux_modules(DEV, seed=1), SCHNELL: tiny_flux_modules(SCHNELL, seed=2)}
    for variant, name in NAMES.items():
        write_all_in_one(checkpoints / f"{name}.safetensors", modules[variant])
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context, modules
    context.close()


def txt2img(ctx, variant: str = DEV, **fields):
    request = Txt2ImgRequest(**{**SMALL, "prompt": "a photo of a cat", "seed": 7, "checkpoint": NAMES[variant],
                                **fields})
    return ctx.generation.submit_txt2img(request).result(timeout=300)


def checkout(ctx, checkpoint: str):
    """The first worker's model, checked out as the generation service does (no LoRAs, its own VAE)."""
    manager = ctx.models.managers[0]
    return manager.checkout(manager.state_for(checkpoint))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("variant", [DEV, SCHNELL])
def test_txt2img_draws_what_diffusers_flux_pipeline_draws(flux, variant):
    ctx, modules = flux
    result = txt2img(ctx, variant)
    assert txt2img(ctx, variant).images[0].tobytes() == result.images[0].tobytes()
    assert np.abs(pixels(result.images[0]) - pixels(txt2img(ctx, variant, seed=8).images[0])).mean() > 1
    length = 512 if variant == DEV else 256  # BFL's T5 lengths
    expected = reference_pipeline(modules[variant], schnell=variant == SCHNELL)(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, guidance_scale=3.5, max_sequence_length=length,
        generator=torch.Generator().manual_seed(7)).images[0]
    assert np.abs(pixels(result.images[0]) - pixels(expected)).max() <= 1
    assert (result.parameters["Sampler"], result.parameters["Model"]) == ("Euler", NAMES[variant])


def test_dev_takes_the_distilled_cfg_scale_as_its_guidance_input(flux):
    ctx, modules = flux
    low, high = txt2img(ctx, distilled_cfg_scale=1.0), txt2img(ctx, distilled_cfg_scale=6.0)
    assert np.abs(pixels(low.images[0]) - pixels(high.images[0])).mean() > 0.02
    assert high.parameters["Distilled CFG Scale"] == 6.0
    expected = reference_pipeline(modules[DEV])(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, guidance_scale=6.0, max_sequence_length=512,
        generator=torch.Generator().manual_seed(7)).images[0]
    assert np.abs(pixels(high.images[0]) - pixels(expected)).max() <= 1
    # The CFG scale itself is not what dev reads (no true-CFG pass).
    assert txt2img(ctx, distilled_cfg_scale=6.0, cfg_scale=9.0).images[0].tobytes() == high.images[0].tobytes()


def test_a_requested_shift_replaces_dev_s_resolution_dependent_one(flux):
    ctx, _ = flux
    own, shifted = txt2img(ctx), txt2img(ctx, shift=6.0)
    assert "Shift" not in own.parameters or own.parameters["Shift"] is None
    assert shifted.parameters["Shift"] == 6.0
    assert np.abs(pixels(own.images[0]) - pixels(shifted.images[0])).mean() > 0.02


@pytest.mark.parametrize(("variant", "sampler"), [(DEV, "DPM++ 2M"), (DEV, "DPM++ 2M SDE"), (DEV, "UniPC"),
                                                  (SCHNELL, "UniPC")])
def test_the_flow_samplers_its_pipeline_can_drive_draw_images(flux, variant, sampler):
    ctx, _ = flux
    image = pixels(txt2img(ctx, variant, sampler_name=sampler).images[0])
    assert np.isfinite(image).all() and image.std() > 5


def test_samplers_its_pipeline_cannot_drive_are_refused_with_those_that_work(flux):
    ctx, _ = flux
    with pytest.raises(RequestError, match="Flux.1 schnell .*Samplers that work: Euler, UniPC$"):
        txt2img(ctx, SCHNELL, sampler_name="DPM++ 2M")
    with pytest.raises(RequestError, match="Samplers that work: Euler, DPM\\+\\+ 2M, DPM\\+\\+ 2M SDE, UniPC$"):
        txt2img(ctx, DEV, sampler_name="Heun")
    with pytest.raises(RequestError, match="Flux.1 dev .*Samplers that work: Euler, UniPC$"):
        txt2img(ctx, DEV, sampler_name="DPM++ 2M", shift=2.0)  # a fixed shift: no resolution shift to hand over
    with pytest.raises(RequestError, match="hires fix: .*Samplers that work: Euler$"):
        txt2img(ctx, DEV, sampler_name="UniPC", enable_hr=True, hr_scale=1.5, denoising_strength=0.5)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_and_img2img_run_on_the_packed_latents(flux, upscaler):
    ctx, _ = flux
    hires = txt2img(ctx, enable_hr=True, hr_scale=2, hr_upscaler=upscaler, denoising_strength=0.5)
    assert pixels(hires.images[0]).shape == (128, 128, 3) and pixels(hires.images[0]).std() > 5
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    request = Img2ImgRequest(**{**SMALL, "prompt": "a cat", "seed": 3, "checkpoint": NAMES[DEV],
                                "init_images": (source,), "denoising_strength": 0.6})
    redrawn = ctx.generation.submit_img2img(request).result(timeout=300)
    assert redrawn.images[0].size == (64, 64) and pixels(redrawn.images[0]).std() > 1


def test_live_previews_unpack_the_latents_and_a_long_prompt_is_cut_at_t5s_length(flux):
    ctx, _ = flux
    control = JobControl(preview_every_n_steps=1)
    previews = []
    control.listen(lambda: previews.append(control.snapshot().preview))
    long_prompt = ", ".join(f"word{i}" for i in range(120))  # over schnell's 256 T5 tokens
    request = ctx.generation.prepare(Txt2ImgRequest(**{**SMALL, "prompt": long_prompt, "seed": 7,
                                                       "checkpoint": NAMES[SCHNELL]}))
    with checkout(ctx, request.checkpoint) as model:
        factor = model.pipeline.vae_scale_factor
        result = run_txt2img(model, request, outputs_root=None, control=control)
    shown = [preview for preview in previews if preview is not None]
    assert shown and shown[-1].mode == "RGB" and shown[-1].size == (64 // factor, 64 // factor)
    assert result.parameters["T5"] == "truncated at 255 tokens" and "T5 reads 255 tokens" in result.warnings[0]


def test_inpaint_changes_only_the_masked_area(flux):
    ctx, _ = flux
    source = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (16, 16, 40, 40))
    request = Img2ImgRequest(**{**SMALL, "prompt": "a cat", "seed": 3, "checkpoint": NAMES[DEV],
                                "init_images": (source,), "mask": mask, "mask_blur": 0, "denoising_strength": 0.9})
    result = ctx.generation.submit_img2img(request).result(timeout=300)
    changed = np.abs(pixels(result.images[0]) - pixels(source)).sum(axis=-1) > 0
    inside = np.asarray(mask) > 0
    assert not changed[~inside].any() and changed[inside].mean() > 0.9


def test_a_prompt_schedule_switches_the_pooled_vector_with_the_text_at_its_step(flux):
    """`[a photo of a cat:a photo of a dog:1]`: CLIP-L's pooled vector reaches the transformer switched at the
    same call as the T5 tokens (FluxPipeline reads no pooled vector back from the step callback)."""
    from tests.support.denoiser_calls import first_call_with, record_denoiser_calls
    from webui.generation.conditioning import PromptEncoder
    from webui.generation.denoise import model_variant

    ctx, _ = flux
    request = ctx.generation.prepare(Txt2ImgRequest(**{**SMALL, "prompt": "[a photo of a cat:a photo of a dog:1]",
                                                       "steps": 4, "seed": 7, "checkpoint": NAMES[DEV]}))
    with checkout(ctx, NAMES[DEV]) as model:
        calls = record_denoiser_calls(model.pipeline.transformer,
                                      lambda: run_txt2img(model, request, outputs_root=None))
        encoder = PromptEncoder(model.pipeline, model.family, 1, model_variant(model))
        cat, dog = (encoder.encode(text) for text in ("a photo of a cat", "a photo of a dog"))
    assert len(calls) == 4
    assert torch.equal(calls[0].pooled, cat.pooled.to(calls[0].pooled))
    assert torch.equal(calls[-1].pooled, dog.pooled.to(calls[-1].pooled))
    switch = first_call_with(calls, lambda call: call.text, dog.embeds)
    assert 0 < switch < 4 and first_call_with(calls, lambda call: call.pooled, dog.pooled) == switch
