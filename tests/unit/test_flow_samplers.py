"""The flow-matching sampler table (SD3, Flux): which A1111 names map to which diffusers scheduler, with the
model's shift, and which are refused with the list of those that work."""

from __future__ import annotations

import pytest

from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest, check_samplers_for_family
from webui.generation.samplers import (
    FLOW_SAMPLERS,
    UnknownSamplerError,
    build_scheduler,
    check_flow_sampler,
    sampler_table,
    scheduler_config,
)
from webui.models.families import family_named

SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def test_flow_families_use_the_flow_table_and_the_others_keep_theirs():
    assert family_named("sd3").flow_matching and sampler_table(True) is FLOW_SAMPLERS
    assert not any(family_named(name).flow_matching for name in ("sd1", "sd2", "sdxl"))
    assert family_named("sd3").default_sampler == "Euler"


@pytest.mark.parametrize(("sampler", "schedule", "class_name", "options"), [
    ("Euler", "Automatic", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_karras_sigmas": False}),
    ("Euler", "Karras", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_karras_sigmas": True}),
    ("k_euler", "beta", "FlowMatchEulerDiscreteScheduler", {"use_beta_sigmas": True}),
    ("Heun", "Simple", "FlowMatchHeunDiscreteScheduler", {"shift": 3.0}),
    ("DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler",
     {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0,
      "algorithm_type": "dpmsolver++"}),
    ("DPM++ 2M SDE", "Automatic", "DPMSolverMultistepScheduler",
     {"algorithm_type": "sde-dpmsolver++", "flow_shift": 3.0}),
    ("UniPC", "Automatic", "UniPCMultistepScheduler",
     {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0, "final_sigmas_type": "zero"}),
])
def test_flow_samplers_build_their_diffusers_scheduler_with_the_models_shift(sampler, schedule, class_name, options):
    name, config = scheduler_config(sampler, schedule, SD3_SCHEDULER, FLOW_SAMPLERS)
    assert name == class_name
    assert {key: config[key] for key in options} == options
    scheduler = build_scheduler(sampler, schedule, SD3_SCHEDULER, FLOW_SAMPLERS)
    scheduler.set_timesteps(4)
    assert type(scheduler).__name__ == class_name and len(scheduler.timesteps) >= 4


def test_a_flow_schedule_a_scheduler_cannot_do_is_refused():
    with pytest.raises(UnknownSamplerError, match="Schedule types for 'Heun': Automatic, Simple"):
        build_scheduler("Heun", "Karras", SD3_SCHEDULER, FLOW_SAMPLERS)


def test_check_flow_sampler_names_the_samplers_that_work():
    assert check_flow_sampler("k_dpmpp_2m", "Automatic", from_image=False) == "DPM++ 2M"
    with pytest.raises(UnknownSamplerError) as caught:
        check_flow_sampler("Euler a", "Automatic", from_image=False, family_label="SD3.5")
    message = str(caught.value)
    assert "SD3.5" in message and "Samplers that work: Euler, Heun, DPM++ 2M, DPM++ 2M SDE, UniPC" in message
    with pytest.raises(UnknownSamplerError, match="cannot start from a noised image. Samplers that work: Euler, Heun$"):
        check_flow_sampler("UniPC", "Automatic", from_image=True)


def test_requests_are_checked_against_the_checkpoints_family():
    sd3, sd1 = family_named("sd3"), family_named("sd1")
    ddim = Txt2ImgRequest(sampler_name="DDIM").validate()
    check_samplers_for_family(ddim, sd1.flow_matching, sd1.label)  # SD1 keeps every sampler
    with pytest.raises(RequestError, match="DDIM"):
        check_samplers_for_family(ddim, sd3.flow_matching, sd3.label)
    check_samplers_for_family(ddim, sd3.flow_matching, sd3.label, added_samplers=("DDIM",))  # an extension's own
    dpm = Txt2ImgRequest(sampler_name="DPM++ 2M").validate()
    check_samplers_for_family(dpm, sd3.flow_matching, sd3.label)
    with pytest.raises(RequestError, match="^hires fix: "):
        check_samplers_for_family(Txt2ImgRequest(sampler_name="DPM++ 2M", enable_hr=True).validate(),
                                  sd3.flow_matching, sd3.label)
    check_samplers_for_family(Txt2ImgRequest(sampler_name="DPM++ 2M", enable_hr=True, hr_sampler_name="Euler")
                              .validate(), sd3.flow_matching, sd3.label)
    from PIL import Image

    image_request = Img2ImgRequest(sampler_name="DPM++ 2M", init_images=(Image.new("RGB", (64, 64)),)).validate()
    with pytest.raises(RequestError, match="Samplers that work: Euler, Heun"):
        check_samplers_for_family(image_request, sd3.flow_matching, sd3.label)
