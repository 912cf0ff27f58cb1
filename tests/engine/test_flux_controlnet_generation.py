"""Flux ControlNet units in real generations on a tiny Flux.1 dev checkpoint, through the app's queue and the
shipped controlnet extension: the residuals reach the transformer exactly as diffusers' own Flux ControlNet call
adds them, weight 0 is bitwise no unit, the step window is honoured, union models take their control type, each
download layout changes the picture, img2img runs with a unit, and units that cannot work fail the job with the
reason while the next job runs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.support.controlnet_jobs import pixels, run_with_units
from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm
from tests.support.flux_controlnet_files import tiny_flux_controlnet, write_folder, write_weights_file
from tests.support.flux_files import DEV, tiny_flux_modules, write_all_in_one
from webui.context import build_context
from webui.extensions.host import announce_app_started
from webui.generation.controlnet import memoized_encoder, transformer_unit_residuals
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest

SIZE = 64
SMALL = dict(prompt="a white square", width=SIZE, height=SIZE, steps=2, seed=5, sampler_name="Euler",
             save_images=False, checkpoint="flux1-dev-aio")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from webui.settings import settings_from_args

    data = tmp_path_factory.mktemp("flux-cn-data")
    write_all_in_one(data / "models" / "Stable-diffusion" / "flux1-dev-aio.safetensors", tiny_flux_modules(DEV, seed=1))
    folder = data / "models" / "ControlNet"
    write_folder(folder / "FLUX.1-dev-Controlnet-Canny", tiny_flux_controlnet(seed=3))
    write_weights_file(folder / "flux-union-pro.safetensors", tiny_flux_controlnet(seed=4, union=True))
    write_folder(folder / "flux-controlnet-canny-diffusers", tiny_flux_controlnet(seed=5, xlabs=True))
    write_ldm(folder / "control_v11p_sd15_canny.safetensors", tiny_controlnet(sd1_unet_config(), seed=3, scale=8))
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    announce_app_started(context.extensions, "http://127.0.0.1:0", context, data / "extension-data")
    yield context
    context.close()


@pytest.fixture(scope="module")
def control_image() -> str:
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(image: str, **changes):
    return {"enabled": True, "image": image, "module": "none", "model": "FLUX.1-dev-Controlnet-Canny", "weight": 1.0,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", **changes}


def generate(ctx, units=None, kind=Txt2ImgRequest, **fields):
    return run_with_units(ctx, {**SMALL, **fields}, units, kind)


def test_residuals_reach_the_transformer_as_diffusers_own_flux_controlnet_call_adds_them():
    """Our per-block residuals (each ControlNet output spread over the transformer's blocks) give the prediction
    diffusers' Flux transformer gives for the ControlNet's raw outputs, for latent-input (InstantX) and
    pixel-input (XLabs-style, cycled over the blocks) ControlNets."""
    torch.manual_seed(0)
    transformer = tiny_flux_modules(DEV, seed=1)["transformer"]
    rows = columns = 4
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(rows * 1.0), torch.arange(columns * 1.0),
                                     indexing="ij"), -1).reshape(-1, 3)
    call = dict(hidden_states=torch.randn(2, rows * columns, 64), timestep=torch.full((2,), 0.7),
                encoder_hidden_states=torch.randn(2, 5, 32), pooled_projections=torch.randn(2, 32),
                guidance=torch.full((2,), 3.5), img_ids=ids, txt_ids=torch.zeros(5, 3))
    image = torch.rand(1, 3, 64, 64)
    latents = torch.randn(1, rows * columns, 64)
    encode = memoized_encoder(lambda pixels: latents, 16)
    extra = {key: call[key] for key in ("pooled_projections", "guidance", "img_ids", "txt_ids")}
    for controlnet, control in ((tiny_flux_controlnet(seed=3), latents.expand(2, -1, -1)),
                                (tiny_flux_controlnet(seed=5, xlabs=True), image.expand(2, -1, -1, -1) * 2 - 1)):
        double, single = transformer_unit_residuals(
            controlnet, image, call["hidden_states"], call["timestep"], call["encoder_hidden_states"], extra,
            weight=0.7, union_mode=None, blocks=(2, 2), encode=encode)
        assert len(double) == 2 and len(single) == 2
        ours = transformer(**call, controlnet_block_samples=double, controlnet_single_block_samples=single).sample
        raw_double, raw_single = controlnet(controlnet_cond=control, conditioning_scale=0.7, return_dict=False, **call)
        theirs = transformer(**call, controlnet_block_samples=raw_double, controlnet_single_block_samples=raw_single,
                             controlnet_blocks_repeat=controlnet.input_hint_block is not None).sample
        plain = transformer(**call).sample
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert (ours - plain).abs().mean() > 1e-3


def test_weight_zero_is_bitwise_no_unit_and_every_layout_changes_the_image(ctx, control_image):
    plain = pixels(generate(ctx))
    assert np.array_equal(pixels(generate(ctx, [unit(control_image, weight=0.0)])), plain)
    controlled = generate(ctx, [unit(control_image)])
    assert np.abs(pixels(controlled) - plain).mean() > 1.0
    half = pixels(generate(ctx, [unit(control_image, weight=0.5)]))
    assert not np.array_equal(half, plain) and not np.array_equal(half, pixels(controlled))
    line = parse_infotext(controlled.infotexts[0])["ControlNet 0"]
    assert line.startswith("Module: none, Model: FLUX.1-dev-Controlnet-Canny, Weight: 1,")
    xlabs = pixels(generate(ctx, [unit(control_image, model="flux-controlnet-canny-diffusers")]))
    assert np.abs(xlabs - plain).mean() > 1.0
    assert not any("do not apply" in warning for warning in controlled.warnings)


def test_a_union_controlnet_takes_the_units_control_type(ctx, control_image):
    union = dict(model="flux-union-pro")
    canny = generate(ctx, [unit(control_image, **union, union_control_type="canny")])
    depth = pixels(generate(ctx, [unit(control_image, **union, union_control_type="depth")]))
    assert not np.array_equal(pixels(canny), depth)
    assert np.array_equal(pixels(generate(ctx, [unit(control_image, **union, union_control_type=2)])), depth)
    assert "Union Control Type: canny" in parse_infotext(canny.infotexts[0])["ControlNet 0"]
    with pytest.raises(ValueError, match=r"union ControlNet: choose its control type.*canny \(0\), tile \(1\)"):
        generate(ctx, [unit(control_image, **union)])
    with pytest.raises(ValueError, match="not a union ControlNet"):
        generate(ctx, [unit(control_image, union_control_type="depth")])


def test_start_and_end_select_the_steps_in_their_window(ctx, control_image):
    # 2 steps sit at 0 and 0.5 of the pass.
    plain = pixels(generate(ctx))
    assert np.array_equal(pixels(generate(ctx, [unit(control_image, guidance_start=0.6, guidance_end=0.7)])), plain)
    first = pixels(generate(ctx, [unit(control_image, guidance_end=0.0)]))
    both = pixels(generate(ctx, [unit(control_image)]))
    assert not np.array_equal(first, plain) and not np.array_equal(first, both)


def test_img2img_runs_with_a_unit_and_bad_units_fail_the_job_with_the_reason(ctx, control_image):
    source = Image.new("RGB", (SIZE, SIZE), "gray")
    plain = generate(ctx, kind=Img2ImgRequest, init_images=(source,), denoising_strength=0.8)
    controlled = generate(ctx, [unit(control_image)], kind=Img2ImgRequest, init_images=(source,),
                          denoising_strength=0.8)
    assert not np.array_equal(pixels(controlled), pixels(plain))
    hires = dict(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, denoising_strength=0.6, hr_upscaler="Latent")
    hires_plain, hires_controlled = generate(ctx, **hires), generate(ctx, [unit(control_image)], **hires)
    assert hires_controlled.images[0].size == (2 * SIZE, 2 * SIZE)
    assert not np.array_equal(pixels(hires_controlled), pixels(hires_plain))
    with pytest.raises(ValueError) as refused:
        generate(ctx, [unit(control_image, model="control_v11p_sd15_canny")])
    assert all(name in str(refused.value) for name in ("control_v11p_sd15_canny", "SD1.x", "Flux.1", "flux1-dev-aio"))
    with pytest.raises(ValueError, match="use 'Balanced'"):
        generate(ctx, [unit(control_image, control_mode="My prompt is more important")])
    assert ctx.extensions.records["controlnet"].active
    assert generate(ctx).images   # the next job runs


def test_model_call_wrappers_are_reported_as_not_applying_to_the_transformer(ctx):
    from webui.generation.hooks import DenoisingHooks, GenerationHooks
    from webui.generation.txt2img import run_txt2img

    class Wrapping(DenoisingHooks):
        wants_unet = wraps_model_calls = True   # e.g. tiled diffusion: it speaks the UNet's call

    class Hooks(GenerationHooks):
        def denoising(self, job):
            return Wrapping()

    request = ctx.generation.prepare(Txt2ImgRequest(**SMALL))
    manager = ctx.models.managers[0]
    with manager.checkout(manager.state_for(request.checkpoint)) as model:
        result = run_txt2img(model, request, outputs_root=None, hooks=Hooks())
    assert result.warnings == ("extension model-call wrappers (UNet calls) do not apply to Flux.1's transformer: "
                               "not used",)
    assert result.images[0].tobytes() == generate(ctx).images[0].tobytes()
