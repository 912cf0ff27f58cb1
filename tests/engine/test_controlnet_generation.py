"""ControlNet units in real generations on the embedded default model, through the app's queue and the
shipped controlnet extension: weight 0 is bitwise no unit, the step window is honoured at its edges,
hires fix and img2img run with a unit, a ControlNet of another family fails the job naming both."""

from __future__ import annotations

import numpy as np
import pytest

from sdstudio_eval.toy_world import render, scene_from_attributes
from tests.conftest import with_default_model
from tests.support.sdxl_files import BASE, write_single_file
from tests.support.controlnet_jobs import pixels, run_with_units
from tests.support.controlnet_files import sd1_unet_config, sdxl_unet_config, tiny_controlnet, write_ldm
from webui.context import build_context
from webui.extensions.host import announce_app_started
from webui.extensions.scripts import ExtensionScripts
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.settings import settings_from_args

SIZE = 64
SMALL = dict(prompt="a red circle on a blue background", width=SIZE, height=SIZE, steps=4, seed=5, save_images=False)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("cn-data"), default_model_folder)
    folder = data / "models" / "ControlNet"
    write_ldm(folder / "control_v11p_sd15_canny.safetensors", tiny_controlnet(sd1_unet_config(), seed=3, scale=8))
    write_ldm(folder / "controlnet_sdxl_canny.safetensors", tiny_controlnet(sdxl_unet_config(), seed=4, scale=8))
    write_single_file(data / "models" / "Stable-diffusion" / "sd_xl_base_tiny.safetensors", BASE, seed=1)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    announce_app_started(context.extensions, "http://127.0.0.1:0", context, data / "extension-data")
    yield context
    context.close()


@pytest.fixture(scope="module")
def control_image():
    import base64
    import io

    scene = scene_from_attributes(shape="square", color="white", background="black", size="large")
    buffer = io.BytesIO()
    render(scene, size=SIZE).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(image: str, **changes):
    return {"enabled": True, "image": image, "module": "canny", "model": "control_v11p_sd15_canny", "weight": 1.0,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", **changes}


def generate(ctx, units=None, kind=Txt2ImgRequest, **fields):
    return run_with_units(ctx, {**SMALL, **fields}, units, kind)


def test_weight_zero_is_bitwise_no_unit_and_weight_one_changes_the_image(ctx, control_image):
    plain = pixels(generate(ctx))
    assert np.array_equal(pixels(generate(ctx, [unit(control_image, weight=0.0)])), plain)
    controlled = generate(ctx, [unit(control_image)])
    assert np.abs(pixels(controlled) - plain).mean() > 1.0
    line = parse_infotext(controlled.infotexts[0])["ControlNet 0"]
    assert line.startswith("Module: canny, Model: control_v11p_sd15_canny, Weight: 1,") and "Control Mode: Balanced" in line
    assert ctx.extensions.records["controlnet"].active


def test_start_and_end_select_exactly_the_steps_in_their_window(ctx, control_image):
    # 4 steps sit at 0, 0.25, 0.5 and 0.75 of the pass.
    plain = pixels(generate(ctx))
    empty_window = pixels(generate(ctx, [unit(control_image, guidance_start=0.6, guidance_end=0.7)]))
    assert np.array_equal(empty_window, plain)
    only_first = pixels(generate(ctx, [unit(control_image, guidance_start=0.0, guidance_end=0.0)]))
    only_third = pixels(generate(ctx, [unit(control_image, guidance_start=0.5, guidance_end=0.5)]))
    first_half = pixels(generate(ctx, [unit(control_image, guidance_end=0.25)]))
    for image in (only_first, only_third, first_half):
        assert not np.array_equal(image, plain)
    assert not np.array_equal(only_first, only_third) and not np.array_equal(only_first, first_half)


def test_three_units_hires_fix_and_img2img_run(ctx, control_image):
    three = [unit(control_image, weight=0.5), unit(control_image, module="invert", control_mode="My prompt is more important"),
             unit(control_image, module="threshold", control_mode="ControlNet is more important")]
    assert generate(ctx, three).images[0].size == (SIZE, SIZE)
    hires = generate(ctx, [unit(control_image)], enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2,
                     denoising_strength=0.5)
    assert hires.images[0].size == (2 * SIZE, 2 * SIZE)
    source = render(scene_from_attributes(shape="circle", color="red", background="yellow", size="large"), size=SIZE)
    without_image = {key: value for key, value in unit(control_image).items() if key != "image"}
    plain = generate(ctx, kind=Img2ImgRequest, init_images=(source,), denoising_strength=0.6)
    controlled = generate(ctx, [without_image], kind=Img2ImgRequest, init_images=(source,), denoising_strength=0.6)
    assert not np.array_equal(pixels(controlled), pixels(plain))


def test_a_controlnet_of_another_family_fails_the_job_naming_both(ctx, control_image):
    with pytest.raises(ValueError) as refused:
        generate(ctx, [unit(control_image, model="controlnet_sdxl_canny")])
    assert "controlnet_sdxl_canny" in str(refused.value) and "SDXL" in str(refused.value)
    assert "SD1.x" in str(refused.value)
    assert ctx.extensions.records["controlnet"].active
    no_model = {"unit0_enabled": True, "unit0_image": control_image, "unit0_module": "canny"}  # as the UI sends it
    with pytest.raises(ValueError, match="unit 0 is enabled but no model is chosen.*control_v11p_sd15_canny"):
        generate(ctx, no_model)
    assert generate(ctx).images   # the next job runs


def test_xyz_weight_axis_changes_unit_zero_per_cell_and_records_it(ctx, control_image):
    from webui.xyz.plot import AxisSpec
    from webui.xyz.service import XyzOptions

    base = ExtensionScripts(ctx.extensions).with_alwayson(Txt2ImgRequest(**SMALL), {"controlnet": [unit(control_image)]})
    plot = ctx.xyz.submit(base, AxisSpec("ControlNet weight", "0, 1"), None, None,
                          XyzOptions(include_sub_images=True)).result(timeout=300)
    cells = [np.asarray(image.convert("RGB"), dtype=np.int16) for image in plot.result.cell_images]
    assert np.array_equal(cells[0], pixels(generate(ctx)))                       # weight 0: as without a unit
    assert np.array_equal(cells[1], pixels(generate(ctx, [unit(control_image)])))  # weight 1: as the unit
    lines = [parse_infotext(text).get("ControlNet 0", "") for text in plot.infotexts]
    assert any("Weight: 0," in line for line in lines) and any("Weight: 1," in line for line in lines)


def test_an_sdxl_controlnet_steers_an_sdxl_checkpoint_and_weight_zero_is_no_unit(ctx, control_image):
    sdxl = dict(checkpoint="sd_xl_base_tiny", cfg_scale=5.0)
    plain = pixels(generate(ctx, **sdxl))
    sdxl_unit = unit(control_image, model="controlnet_sdxl_canny")
    assert np.array_equal(pixels(generate(ctx, [{**sdxl_unit, "weight": 0.0}], **sdxl)), plain)
    controlled = pixels(generate(ctx, [sdxl_unit], **sdxl))
    assert np.abs(controlled - plain).mean() > 0.5


def test_a_job_without_units_gets_no_unet_wrapper(ctx, control_image):
    from webui.extensions.generation_hooks import ExtensionGenerationHooks
    from webui.generation.hooks import JobInfo

    hooks = ExtensionGenerationHooks(ctx.extensions, 64)
    plain = Txt2ImgRequest(**SMALL)
    disabled = ExtensionScripts(ctx.extensions).with_alwayson(plain, {"controlnet": [unit(control_image, weight=0.0)]})
    with_unit = ExtensionScripts(ctx.extensions).with_alwayson(plain, {"controlnet": [unit(control_image)]})
    assert not hooks.denoising(JobInfo(plain, [])).wants_unet
    assert not hooks.denoising(JobInfo(disabled, [])).wants_unet
    assert hooks.denoising(JobInfo(with_unit, [])).wants_unet


def test_hr_option_picks_the_hires_pass_a_unit_acts_in_and_the_infotext_records_it(ctx, control_image,
                                                                                   default_model_folder):
    import torch

    from webui.extensions.generation_hooks import ExtensionGenerationHooks
    from webui.generation.denoise import job_model
    from webui.generation.hooks import JobInfo, UNetInput

    hires = dict(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, steps=2, denoising_strength=0.5)
    # Which UNet calls get residuals, asked of the job's hooks for a first-pass and a hires-pass call.
    hooks = ExtensionGenerationHooks(ctx.extensions, 64)
    with ctx.manager.checkout(ctx.manager.state_for(default_model_folder.name)) as model:
        config = job_model(model)
    sample = torch.zeros(2, config.unet_config["in_channels"], 8, 8, dtype=config.dtype)
    hidden = torch.zeros(2, 77, config.unet_config["cross_attention_dim"], dtype=config.dtype)

    def acts(option: str, in_hires: bool, **fields) -> bool:
        request = ExtensionScripts(ctx.extensions).with_alwayson(
            Txt2ImgRequest(**{**SMALL, **hires, **fields}), {"controlnet": [unit(control_image, hr_option=option)]})
        denoising = hooks.denoising(JobInfo(request, [], config))
        down, _ = denoising.residuals(UNetInput(sample, torch.tensor(500), hidden, {}, 0, 2, in_hires))
        return down is not None

    assert [acts("Both", False), acts("Both", True)] == [True, True]
    assert [acts("Low res only", False), acts("Low res only", True)] == [True, False]
    assert [acts(2, False), acts(2, True)] == [False, True]   # sd-webui-controlnet's index for "High res only"
    assert acts("High res only", False, enable_hr=False)       # without hires fix the one pass is the unit's

    images = {option: generate(ctx, [unit(control_image, hr_option=option)], **hires)
              for option in ("Both", "Low res only", "High res only")}
    plain = pixels(generate(ctx, **hires))
    found = {option: pixels(result) for option, result in images.items()}
    for option, image in found.items():
        assert not np.array_equal(image, plain), option
    assert len({image.tobytes() for image in found.values()}) == 3
    lines = {option: parse_infotext(result.infotexts[0])["ControlNet 0"] for option, result in images.items()}
    assert "Hr Option" not in lines["Both"] and lines["Low res only"].endswith("Hr Option: Low res only")


def test_a_units_controlnet_is_part_of_the_model_state_built_once_and_reused(ctx, control_image):
    write_ldm(ctx.settings.controlnet_folder / "control_v11p_sd15_fresh.safetensors",
              tiny_controlnet(sd1_unet_config(), seed=9, scale=8))
    fresh = unit(control_image, model="control_v11p_sd15_fresh")
    plain = pixels(generate(ctx))
    without_unit = ctx.manager.held_state_key
    before = ctx.controlnets.builds
    # A window holding no step: the unit never adds residuals, yet its model is part of the job's state and
    # the worker builds it when it takes the job.
    idle = pixels(generate(ctx, [{**fresh, "guidance_start": 0.6, "guidance_end": 0.7}]))
    with_unit = ctx.manager.held_state_key
    assert np.array_equal(idle, plain) and ctx.controlnets.builds == before + 1
    first = pixels(generate(ctx, [fresh]))
    second = pixels(generate(ctx, [fresh]))
    assert ctx.controlnets.builds == before + 1              # the next jobs reuse it
    assert np.array_equal(first, second) and not np.array_equal(first, plain)
    assert with_unit != without_unit and ctx.manager.held_state_key == with_unit
    generate(ctx, [{**fresh, "weight": 0.5}])                # another weight: the same state
    assert ctx.manager.held_state_key == with_unit and ctx.controlnets.builds == before + 1
    generate(ctx)
    assert ctx.manager.held_state_key == without_unit


def test_a_job_names_its_controlnet_files_and_the_worker_that_built_them_holds_them(ctx, control_image):
    """What the scheduler's ControlNet affinity compares: the files a queued job's units use (units that act
    only) and the files built on each worker's device."""
    path = str(ctx.controlnets.find("control_v11p_sd15_canny").path)
    scripts = ExtensionScripts(ctx.extensions)
    job = ctx.generation.submit_txt2img(
        scripts.with_alwayson(Txt2ImgRequest(**SMALL), {"controlnet": [unit(control_image)]}))
    assert job.control_keys == {path}
    job.result(timeout=300)
    assert path in ctx.scheduler.workers[0].current_control_keys()
    idle_unit = ctx.generation.submit_txt2img(
        scripts.with_alwayson(Txt2ImgRequest(**SMALL), {"controlnet": [unit(control_image, weight=0.0)]}))
    assert idle_unit.control_keys == frozenset()
    idle_unit.result(timeout=300)
