"""SD3.5 generation through the app's own engine: catalog -> manager -> GenerationService -> txt2img/img2img.

Tiny seeded SD3.5 Medium and Large models of the exact architecture (tests/support/sd3_files.py) are written as
the single files people download (Medium with CLIP-L/G + T5 bundled; Large transformer-only with the separate
clip_l/clip_g files and no T5 file, so it runs CLIP-only) and generated from by the same code SD1/SDXL use;
the reference for correctness is diffusers' own `StableDiffusion3Pipeline` with text prompts.
"""

from __future__ import annotations


import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.sd3_files import LARGE, MEDIUM, tiny_sd3_modules, write_single_file, write_text_encoder_files
from webui.context import build_context
from webui.generation.conditioning import PromptEncoder
from webui.generation.denoise import encode_images, to_vae_latents
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.jobs.progress import JobControl
from webui.settings import settings_from_args

MEDIUM_FILE, LARGE_FILE = "sd3.5_medium_incl_clips_t5xxl", "sd3.5_large"  # Large: no T5 file
SMALL = dict(width=64, height=64, steps=2, cfg_scale=4.5, sampler_name="Euler", save_images=False, save_grid=False)
FLOW_SAMPLERS = [("Euler", "Automatic"), ("Euler", "Karras"), ("Euler", "Beta"), ("Heun", "Automatic"),
                 ("DPM++ 2M", "Automatic"), ("DPM++ 2M SDE", "Automatic"), ("UniPC", "Automatic")]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("sd3-data")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    medium, large = tiny_sd3_modules(MEDIUM, seed=1), tiny_sd3_modules(LARGE, seed=2)
    # A trained VAE's encoder is nearly deterministic; a random one's log-variance is not (diffusers' img2img
    # samples the latent distribution), so Medium's gets a tiny fixed variance.
    log_variance = medium["vae"].encoder.conv_out
    log_variance.weight.data[16:] = 0
    log_variance.bias.data[16:] = -20
    write_single_file(checkpoints / f"{MEDIUM_FILE}.safetensors", medium, dtype=torch.float32)
    write_single_file(checkpoints / f"{LARGE_FILE}.safetensors", large, bundle=(), dtype=torch.float32)
    write_text_encoder_files(data / "models" / "text_encoder", large, t5=False, dtype=torch.float32)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context
    context.close()


def txt2img(ctx, checkpoint: str = MEDIUM_FILE, control: JobControl | None = None, **fields):
    request = Txt2ImgRequest(**{**SMALL, "prompt": "a red car", "negative_prompt": "blurry", "seed": 7,
                                "checkpoint": checkpoint, **fields})
    if control is None:
        return ctx.generation.submit_txt2img(request).result(timeout=300)
    request = ctx.generation.prepare(request)
    with checkout(ctx, request.checkpoint) as model:
        from webui.generation.txt2img import run_txt2img

        return run_txt2img(model, request, outputs_root=None, control=control)


def img2img(ctx, image: Image.Image, **fields):
    request = Img2ImgRequest(**{**SMALL, "prompt": "a red car", "seed": 7, "checkpoint": MEDIUM_FILE,
                                "init_images": (image,), **fields})
    return ctx.generation.submit_img2img(request).result(timeout=300)


def checkout(ctx, checkpoint: str):
    """The first worker's model, checked out as the generation service does (no LoRAs, its own VAE)."""
    manager = ctx.models.managers[0]
    return manager.checkout(manager.state_for(checkpoint))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def source_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


def test_prompt_embeddings_are_diffusers_sd3_encoding(ctx):
    """CLIP-L/G in a 77-token chunk, then T5 over the prompt at 256 tokens: what `encode_prompt` makes."""
    with checkout(ctx, MEDIUM_FILE) as model:
        encoder = PromptEncoder(model.pipeline, model.family)
        ours = encoder.encode("a photo of a cat on a sofa")
        expected, _, expected_pooled, _ = model.pipeline.encode_prompt(
            "a photo of a cat on a sofa", None, None, do_classifier_free_guidance=False, max_sequence_length=256)
    assert ours.embeds.shape == (1, 77 + 256, 128)
    torch.testing.assert_close(ours.embeds, expected)
    torch.testing.assert_close(ours.pooled, expected_pooled)


@pytest.mark.parametrize("checkpoint", [MEDIUM_FILE, LARGE_FILE])
def test_txt2img_draws_what_diffusers_sd3_pipeline_draws_and_is_deterministic(ctx, checkpoint):
    result = txt2img(ctx, checkpoint)
    again = txt2img(ctx, checkpoint)
    other_seed = txt2img(ctx, checkpoint, seed=8)
    other_prompt = txt2img(ctx, checkpoint, prompt="a blue boat")
    image = result.images[0]
    assert image.size == (64, 64)
    assert image.tobytes() == again.images[0].tobytes()
    assert np.abs(pixels(image) - pixels(other_seed.images[0])).mean() > 1
    assert np.abs(pixels(image) - pixels(other_prompt.images[0])).mean() > 0.1
    with checkout(ctx, checkpoint) as model:
        modules = {name: module for name, module in model.pipeline.components.items() if name != "scheduler"}
        reference = diffusers.StableDiffusion3Pipeline(
            **modules, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config))
        expected = reference("a red car", negative_prompt="blurry", num_inference_steps=2, width=64, height=64,
                             guidance_scale=4.5, generator=torch.Generator().manual_seed(7)).images[0]
    assert np.abs(pixels(image) - pixels(expected)).max() <= 1  # PNG rounding only
    parameters = result.parameters
    assert (parameters["Sampler"], parameters["Model"], parameters["Seed"]) == ("Euler", checkpoint, 7)
    if checkpoint == MEDIUM_FILE:
        assert "T5" not in result.infotexts[0] and result.warnings == ()


def test_a_checkpoint_without_t5_generates_from_clip_and_says_so(ctx):
    result = txt2img(ctx, LARGE_FILE)
    assert result.images[0].size == (64, 64) and pixels(result.images[0]).std() > 1
    assert len(result.warnings) == 1 and "t5xxl_fp16.safetensors" in result.warnings[0], result.warnings
    assert result.parameters["T5"] == "absent" and ", T5: absent," in result.infotexts[0]
    redrawn = img2img(ctx, source_image(), checkpoint=LARGE_FILE, denoising_strength=0.5)
    assert redrawn.parameters["T5"] == "absent" and "t5xxl_fp16.safetensors" in redrawn.warnings[0]


def test_a_prompt_over_t5s_limit_is_truncated_with_a_warning(ctx):
    long_prompt = ", ".join(f"word{i}" for i in range(200))  # ~600 T5 tokens
    result = txt2img(ctx, prompt=long_prompt)
    assert result.parameters["T5"] == "truncated at 255 tokens"
    assert len(result.warnings) == 1 and "T5 reads 255 tokens" in result.warnings[0]
    # T5 saw only the first 255 tokens: what follows them changes the CLIP chunks, not the T5 part.
    with checkout(ctx, MEDIUM_FILE) as model:
        encoder = PromptEncoder(model.pipeline, model.family)
        first, second = encoder.encode(long_prompt), encoder.encode(long_prompt + ", a green tree")
        shorter = encoder.encode(", ".join(f"word{i}" for i in range(20)))
    torch.testing.assert_close(first.sequence, second.sequence)
    assert first.sequence.shape == shorter.sequence.shape == (1, 256, 128)
    assert not torch.allclose(first.sequence, shorter.sequence)
    assert not torch.equal(first.hidden, second.hidden)  # the CLIP chunks read every word
    short = txt2img(ctx, prompt="word0, word1")
    assert "T5" not in short.parameters or short.parameters["T5"] is None
    assert short.warnings == ()


def test_emphasis_weights_the_clip_and_t5_parts(ctx):
    with checkout(ctx, MEDIUM_FILE) as model:
        encoder = PromptEncoder(model.pipeline, model.family)
        plain, weighted = encoder.encode("a red car"), encoder.encode("a (red:1.4) car")
    assert not torch.allclose(plain.hidden, weighted.hidden)
    assert not torch.allclose(plain.sequence, weighted.sequence)
    assert plain.pooled is not None and torch.equal(plain.pooled, weighted.pooled)  # pooled is unweighted


@pytest.mark.parametrize(("sampler", "schedule"), FLOW_SAMPLERS)
def test_each_flow_sampler_draws_an_image(ctx, sampler, schedule):
    result = txt2img(ctx, sampler_name=sampler, scheduler=schedule)
    image = pixels(result.images[0])
    assert np.isfinite(image).all() and image.std() > 5  # a NaN latent decodes to a flat black image
    assert result.parameters["Sampler"] == sampler
    assert result.parameters["Schedule type"] == (None if schedule == "Automatic" else schedule)


def test_unsupported_samplers_are_refused_with_those_that_work(ctx):
    with pytest.raises(RequestError) as caught:
        txt2img(ctx, sampler_name="DDIM")
    assert "flow-matching" in str(caught.value)
    assert "Euler, Heun, DPM++ 2M, DPM++ 2M SDE, UniPC" in str(caught.value)
    with pytest.raises(RequestError, match="Schedule types for it: Automatic, Simple"):
        txt2img(ctx, sampler_name="Heun", scheduler="Karras")
    with pytest.raises(RequestError) as caught:
        img2img(ctx, source_image(), sampler_name="DPM++ 2M", denoising_strength=0.5)
    assert "Samplers that work: Euler, Heun" in str(caught.value) and "UniPC" not in str(caught.value)
    with pytest.raises(RequestError, match="hires fix: .*Samplers that work: Euler, Heun"):
        txt2img(ctx, sampler_name="UniPC", enable_hr=True, hr_scale=1.5, denoising_strength=0.5)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_redraws_at_the_larger_size(ctx, upscaler):
    result = txt2img(ctx, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, denoising_strength=0.6)
    image = pixels(result.images[0])
    assert image.shape == (96, 96, 3) and image.std() > 5
    assert result.parameters["Hires upscaler"] == upscaler


def test_img2img_keeps_the_image_at_low_strength_and_redraws_it_at_full_strength(ctx):
    source = source_image()
    with checkout(ctx, MEDIUM_FILE) as model:
        # The tiny VAE is random, so "the image" is what the VAE reconstructs of it (shift/scale applied).
        vae = model.pipeline.vae
        decoded = vae.decode(to_vae_latents(vae, encode_images(model, [source]))).sample
        reconstructed = pixels(model.pipeline.image_processor.postprocess(decoded, output_type="pil")[0])
    light = pixels(img2img(ctx, source, denoising_strength=0.05, steps=20).images[0])
    full = pixels(img2img(ctx, source, denoising_strength=1.0).images[0])
    assert np.abs(light - reconstructed).mean() < 3
    assert np.abs(full - reconstructed).mean() > 3 * np.abs(light - reconstructed).mean()


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_changes_only_the_masked_area(ctx, only_masked):
    source = source_image()
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (16, 16, 40, 40))
    result = img2img(ctx, source, mask=mask, mask_blur=0, denoising_strength=1.0, inpaint_full_res=only_masked)
    changed = np.abs(pixels(result.images[0]) - pixels(source)).sum(axis=-1) > 0
    inside = np.asarray(mask) > 0
    assert not changed[~inside].any()
    assert changed[inside].mean() > 0.9
    assert result.parameters["Denoising strength"] == 1.0


def test_live_previews_are_rgb_at_the_latent_size(ctx):
    control = JobControl(preview_every_n_steps=1)
    previews = []
    control.listen(lambda: previews.append(control.snapshot().preview))
    txt2img(ctx, control=control, steps=2)
    shown = [preview for preview in previews if preview is not None]
    assert shown, "no preview was made"
    with checkout(ctx, MEDIUM_FILE) as model:
        factor = model.pipeline.vae_scale_factor  # 2 for the tiny two-block VAE (8 for SD3's)
    assert shown[-1].mode == "RGB" and shown[-1].size == (64 // factor, 64 // factor)
    assert pixels(shown[-1]).std() > 0


def test_the_infotext_pastes_back_into_the_same_image(ctx):
    from webui.ui.infotext_fields import txt2img_values_from_infotext

    first = txt2img(ctx, sampler_name="Euler", scheduler="Karras", seed=11, cfg_scale=3.0)
    infotext = first.infotexts[0]
    assert "Sampler: Euler, Schedule type: Karras" in infotext and f"Model: {MEDIUM_FILE}" in infotext
    values = txt2img_values_from_infotext(infotext)
    assert (values["sampler_name"], values["scheduler"], values["seed"], values["cfg_scale"]) == \
        ("Euler", "Karras", 11, 3.0)
    fields = {name: values[name] for name in ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler",
                                              "seed", "cfg_scale", "width", "height")}
    again = txt2img(ctx, **fields)
    assert again.images[0].tobytes() == first.images[0].tobytes()


def test_a_batch_draws_each_image_as_its_own_seed_would(ctx):
    scheduled = "[a red car:a blue boat:1]"  # a prompt schedule too: the T5 part changes after step 2 of 4
    batch = txt2img(ctx, batch_size=2, prompt=scheduled, steps=4)
    assert batch.seeds == [7, 8] and len(batch.images) == 2
    for image, seed in zip(batch.images, (7, 8)):
        alone = txt2img(ctx, seed=seed, prompt=scheduled, steps=4).images[0]
        assert np.abs(pixels(image) - pixels(alone)).max() <= 1
    unscheduled = txt2img(ctx, seed=7, prompt="a red car", steps=4).images[0]
    assert np.abs(pixels(batch.images[0]) - pixels(unscheduled)).mean() > 0.02  # (a tiny random model: small)


def test_clip_skip_moves_the_clip_layers_and_is_written(ctx):
    plain = txt2img(ctx)
    skipped = txt2img(ctx, clip_skip=2)
    assert skipped.parameters["Clip skip"] == 2 and "Clip skip" not in plain.infotexts[0]
    assert np.abs(pixels(plain.images[0]) - pixels(skipped.images[0])).mean() > 0.02


def test_progress_is_reported_and_interrupt_stops_after_the_current_step(ctx):
    control = JobControl()
    steps_seen: list[int] = []

    def on_change() -> None:
        step = control.snapshot().step
        if step and (not steps_seen or steps_seen[-1] != step):
            steps_seen.append(step)
            if step == 2:
                control.interrupt()

    control.listen(on_change)
    result = txt2img(ctx, control=control, steps=6, batch_count=2)
    assert steps_seen == [1, 2]  # the denoising loop ended right after the step that asked to stop
    assert result.interrupted and len(result.images) == 1  # the second batch never started


def test_per_step_hooks_run_and_unet_call_hooks_are_reported_as_not_applying(ctx):
    from webui.generation.hooks import DenoisingHooks, GenerationHooks
    from webui.generation.txt2img import run_txt2img

    class StepCounter(DenoisingHooks):
        wants_unet = True  # e.g. an extension's UNet residuals: they speak the UNet's call, not the MMDiT's
        steps: list[int] = []

        def on_step(self, latents, step, total_steps, sigma):
            self.steps.append(step)
            return None

    hooks_for_job = StepCounter()

    class Hooks(GenerationHooks):
        def denoising(self, job):
            return hooks_for_job

    request = ctx.generation.prepare(Txt2ImgRequest(**{**SMALL, "prompt": "a red car", "negative_prompt": "blurry",
                                                       "seed": 7, "checkpoint": MEDIUM_FILE, "steps": 3}))
    with checkout(ctx, request.checkpoint) as model:
        result = run_txt2img(model, request, outputs_root=None, hooks=Hooks())
    assert hooks_for_job.steps == [0, 1, 2]
    assert result.warnings == ("extension hooks on the UNet's calls do not apply to SD3.5's transformer: not used",)
    plain = txt2img(ctx, steps=3)
    assert result.images[0].tobytes() == plain.images[0].tobytes()


def test_the_shift_comes_from_the_model_unless_the_request_sets_one(ctx):
    own, shifted = txt2img(ctx), txt2img(ctx, shift=6.0)
    assert own.parameters["Shift"] == 3.0 and shifted.parameters["Shift"] == 6.0  # SD3's scheduler config: 3.0
    assert txt2img(ctx, shift=3.0).images[0].tobytes() == own.images[0].tobytes()
    assert np.abs(pixels(own.images[0]) - pixels(shifted.images[0])).mean() > 0.02
    dpm = txt2img(ctx, sampler_name="DPM++ 2M", shift=6.0)  # the multistep solvers take it as flow_shift
    assert np.abs(pixels(dpm.images[0]) - pixels(txt2img(ctx, sampler_name="DPM++ 2M").images[0])).mean() > 0.02


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_a_prompt_schedule_switches_the_pooled_vector_with_the_text_at_its_step(ctx, mode):
    """`[a red car:a blue boat:1]`: the transformer's pooled input (the CLIP projections) changes at the same
    call as its text tokens, in txt2img and in img2img (whose diffusers pipeline reads no pooled vector back
    from the step callback), under CFG: rows [negative; positive]."""
    from tests.support.denoiser_calls import first_call_with, record_denoiser_calls
    from webui.generation.img2img import run_img2img
    from webui.generation.txt2img import run_txt2img

    fields = {**SMALL, "prompt": "[a red car:a blue boat:1]", "negative_prompt": "blurry", "steps": 4, "seed": 7,
              "checkpoint": MEDIUM_FILE}
    with checkout(ctx, MEDIUM_FILE) as model:
        if mode == "txt2img":
            request = ctx.generation.prepare(Txt2ImgRequest(**fields))
            run = lambda: run_txt2img(model, request, outputs_root=None)  # noqa: E731
        else:
            request = ctx.generation.prepare(Img2ImgRequest(**fields, init_images=(source_image(),),
                                                            denoising_strength=1.0))
            run = lambda: run_img2img(model, request, outputs_root=None)  # noqa: E731
        calls = record_denoiser_calls(model.pipeline.transformer, run)
        encoder = PromptEncoder(model.pipeline, model.family)
        car, boat, negative = (encoder.encode(text) for text in ("a red car", "a blue boat", "blurry"))
    assert len(calls) == 4
    positive_pooled = [call.pooled[1:] for call in calls]
    assert torch.equal(calls[0].pooled, torch.cat([negative.pooled, car.pooled]).to(calls[0].pooled))
    assert torch.equal(positive_pooled[-1], boat.pooled.to(positive_pooled[-1]))
    switch = first_call_with(calls, lambda call: call.text[1:], boat.embeds)
    assert 0 < switch < 4
    assert first_call_with(calls, lambda call: call.pooled[1:], boat.pooled) == switch
    assert all(torch.equal(call.pooled[:1], negative.pooled.to(call.pooled)) for call in calls)


def test_outpainting_grows_the_canvas_to_the_familys_multiple_of_16(ctx):
    """8 more pixels on the right of a 64 px image would be 72, which SD3's 2x2 patches cannot take: the new area
    grows to 80 (the original pixels stay where they were)."""
    result = img2img(ctx, source_image(), outpaint_right=8, denoising_strength=1.0)
    assert result.images[0].size == (80, 64)
