"""The A1111 sampler / schedule-type table builds real diffusers schedulers that sample as A1111 would."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from typing import Any, Callable

import diffusers
import numpy as np
import pytest
import torch

from webui.generation.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    SamplerSpec,
    UnknownSamplerError,
    build_scheduler,
    find_sampler,
    find_schedule_type,
    resolve_sampler_and_schedule,
    sampler_names,
    schedule_type_names,
    scheduler_config,
    schedule_types_for,
)

# diffusers 0.42.1's DPM2 schedulers feed torch tensors to NumPy, which warns on every call, and torchsde warns
# when DPM++ SDE's float32 sigmas round a hair below the Brownian tree's float64 start; neither is ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
]

# An SD1.5 pipeline's scheduler config (PNDM), plus the seed the engine passes for DPM++ SDE's Brownian tree.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "trained_betas": None,
    "noise_sampler_seed": 7,
}
V_PREDICTION_CONFIG = {**SD15_CONFIG, "prediction_type": "v_prediction"}
BASE_CONFIGS = {"sd15": SD15_CONFIG, "v_prediction": V_PREDICTION_CONFIG}

# SD1.5's noise levels at t=0 and t=999, the range every A1111 schedule spans.
SD15_ALPHAS_CUMPROD = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
SD15_SIGMAS = ((1 - SD15_ALPHAS_CUMPROD) / SD15_ALPHAS_CUMPROD) ** 0.5
SIGMA_MIN, SIGMA_MAX = float(SD15_SIGMAS[0]), float(SD15_SIGMAS[-1])

# Schedule types that are the same schedule under two A1111 names.
SAME_SCHEDULE = {
    frozenset({"Uniform", "Normal"}),
    frozenset({"SGM Uniform", "Simple"}),
    frozenset({"Exponential", "Polyexponential"}),
}

SAMPLER_SCHEDULE_PAIRS = [(spec.name, schedule) for spec in SAMPLERS for schedule in schedule_types_for(spec.name)]

Builder = Callable[..., Any]


@pytest.fixture(scope="module")
def built() -> Builder:
    """build_scheduler on a named base config, each distinct scheduler built once per module.

    diffusers' DPM2 classes take about half a second to construct; pairs with the same constructor arguments
    (an alias schedule type, "Automatic" and the default) share one build, and every caller steps its own copy.
    """
    cache: dict[tuple, Any] = {}

    def build(sampler: str, schedule: str, config_name: str = "sd15", noise_seed: int = 7) -> Any:
        base = {**BASE_CONFIGS[config_name], "noise_sampler_seed": noise_seed}
        class_name, arguments = scheduler_config(sampler, schedule, base)
        key = (class_name, tuple(sorted(arguments.items())))
        if key not in cache:
            cache[key] = build_scheduler(sampler, schedule, base)
        return copy.deepcopy(cache[key])

    return build


def denoise(scheduler, steps: int = 20, seed: int = 0, max_calls: int | None = None) -> torch.Tensor:
    """Run `scheduler` like a pipeline would, with a fixed fake model output in place of a UNet."""
    scheduler.set_timesteps(steps)
    data = torch.Generator().manual_seed(1234)
    latent = torch.randn(1, 4, 8, 8, generator=data) * scheduler.init_noise_sigma
    fake_model_output = torch.randn(1, 4, 8, 8, generator=data)
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_noise = torch.Generator().manual_seed(seed)
    timesteps = scheduler.timesteps if max_calls is None else scheduler.timesteps[:max_calls]
    for timestep in timesteps:
        model_input = scheduler.scale_model_input(latent, timestep)
        model_output = fake_model_output * 0.9 + 0.01 * model_input
        extra = {"generator": step_noise} if accepts_generator else {}
        latent = scheduler.step(model_output, timestep, latent, **extra).prev_sample
    return latent


def schedule_of(scheduler) -> torch.Tensor:
    """The noise levels a scheduler will visit (timesteps for the classes without sigmas)."""
    scheduler.set_timesteps(20)
    values = getattr(scheduler, "sigmas", None)
    return (values if values is not None else scheduler.timesteps).to(torch.float64)


@pytest.mark.parametrize(("sampler", "schedule"), SAMPLER_SCHEDULE_PAIRS)
def test_every_supported_pair_samples_20_steps_to_finite_latents(sampler: str, schedule: str, built: Builder) -> None:
    spec = find_sampler(sampler)
    scheduler = built(sampler, schedule)
    assert type(scheduler).__name__ == spec.scheduler_class
    assert isinstance(scheduler, diffusers.SchedulerMixin)
    latent = denoise(scheduler)
    assert latent.shape == (1, 4, 8, 8)
    assert torch.isfinite(latent).all()
    assert latent.abs().max() > 0


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_v_prediction_models_sample_finite_latents(spec: SamplerSpec, built: Builder) -> None:
    scheduler = built(spec.name, "Automatic", "v_prediction")
    assert scheduler.config.prediction_type == "v_prediction"
    v_latent = denoise(scheduler, max_calls=4)
    assert torch.isfinite(v_latent).all()
    eps_latent = denoise(built(spec.name, "Automatic"), max_calls=4)
    assert not torch.allclose(v_latent, eps_latent), "the prediction type must change what a step computes"


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
@pytest.mark.parametrize("config_name", BASE_CONFIGS)
def test_training_parameters_of_the_base_config_are_kept(spec: SamplerSpec, config_name: str, built: Builder) -> None:
    base = BASE_CONFIGS[config_name]
    scheduler = built(spec.name, "Automatic", config_name)
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset", "prediction_type"):
        assert scheduler.config[key] == base[key], key
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), SD15_ALPHAS_CUMPROD, rtol=1e-5)


def test_base_config_keys_the_target_class_does_not_take_are_dropped() -> None:
    # skip_prk_steps belongs to PNDM; Euler would refuse it as a constructor argument.
    scheduler = build_scheduler("Euler", "Automatic", SD15_CONFIG)
    assert "skip_prk_steps" not in scheduler.config
    assert "noise_sampler_seed" not in scheduler.config


def test_a_different_beta_schedule_in_the_base_config_changes_the_noise_levels(built: Builder) -> None:
    linear = build_scheduler("Euler", "Uniform", {**SD15_CONFIG, "beta_schedule": "linear"})
    scaled = built("Euler", "Uniform")
    assert linear.config.beta_schedule == "linear"
    assert not torch.allclose(schedule_of(linear), schedule_of(scaled))


@pytest.mark.parametrize("spec", [s for s in SAMPLERS if "Karras" in s.schedule_types], ids=lambda s: s.name)
def test_karras_sigmas_differ_from_the_uniform_schedule(spec: SamplerSpec, built: Builder) -> None:
    karras = schedule_of(built(spec.name, "Karras"))
    uniform = schedule_of(built(spec.name, "Uniform"))
    assert karras.shape != uniform.shape or not torch.allclose(karras, uniform)
    assert math.isclose(float(karras[0]), SIGMA_MAX, rel_tol=1e-4)


def a1111_karras_sigmas(steps: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, steps)
    return (SIGMA_MAX ** (1 / rho) + ramp * (SIGMA_MIN ** (1 / rho) - SIGMA_MAX ** (1 / rho))) ** rho


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "LMS"])
def test_karras_schedule_matches_a1111s_karras_formula(sampler: str, built: Builder) -> None:
    sigmas = schedule_of(built(sampler, "Karras"))
    np.testing.assert_allclose(sigmas[:-1].numpy(), a1111_karras_sigmas(20), rtol=1e-4)
    assert float(sigmas[-1]) == 0.0


@pytest.mark.parametrize("schedule", ["Exponential", "Polyexponential"])
def test_exponential_and_polyexponential_follow_a1111s_formula(schedule: str, built: Builder) -> None:
    sigmas = schedule_of(built("Euler", schedule))
    expected = np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 20))
    np.testing.assert_allclose(sigmas[:-1].numpy(), expected, rtol=1e-4)


def test_sgm_uniform_and_simple_start_at_the_last_training_timestep_and_step_evenly() -> None:
    for schedule in ("SGM Uniform", "Simple", "sgm_uniform", "SGMUniform"):
        scheduler = build_scheduler("Euler", schedule, SD15_CONFIG)
        scheduler.set_timesteps(20)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), np.arange(999, 0, -50), atol=1)


def test_ddim_schedule_type_uses_a1111s_ddim_timesteps(built: Builder) -> None:
    # A1111's DDIM spacing for 20 steps: 951, 901, ..., 1 (1000 // 20 apart, offset by one).
    for sampler in ("Euler", "DDIM", "Heun"):
        scheduler = built(sampler, "DDIM")
        scheduler.set_timesteps(20)
        assert sorted(set(scheduler.timesteps.round().int().tolist()), reverse=True) == list(range(951, 0, -50))


def test_uniform_schedule_spans_the_whole_timestep_range_for_euler(built: Builder) -> None:
    scheduler = built("Euler", "Uniform")
    scheduler.set_timesteps(20)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), np.linspace(999, 0, 20), atol=1e-3)


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_each_supported_schedule_type_really_changes_the_schedule(spec: SamplerSpec, built: Builder) -> None:
    schedules = {name: schedule_of(built(spec.name, name)) for name in spec.schedule_types}
    names = list(schedules)
    for index, first in enumerate(names):
        for second in names[index + 1:]:
            same = schedules[first].shape == schedules[second].shape and torch.allclose(
                schedules[first], schedules[second]
            )
            assert same == (frozenset({first, second}) in SAME_SCHEDULE), (first, second)


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_scheduler_config_is_exactly_what_the_built_scheduler_was_given(spec: SamplerSpec, built: Builder) -> None:
    class_name, arguments = scheduler_config(spec.name, "Automatic", SD15_CONFIG)
    scheduler = built(spec.name, "Automatic")
    assert type(scheduler).__name__ == class_name == spec.scheduler_class
    for key, value in arguments.items():
        assert scheduler.config[key] == value, key


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_automatic_means_the_samplers_a1111_default_schedule(spec: SamplerSpec, built: Builder) -> None:
    automatic = built(spec.name, "Automatic")
    explicit = built(spec.name, spec.default_schedule)
    assert dict(automatic.config) == dict(explicit.config)
    assert spec.default_schedule in spec.schedule_types


def test_a1111_defaults_karras_for_dpmpp_2m_exponential_for_2m_sde_and_uniform_for_euler() -> None:
    assert build_scheduler("DPM++ 2M", "Automatic", SD15_CONFIG).config.use_karras_sigmas is True
    sde = build_scheduler("DPM++ 2M SDE", "Automatic", SD15_CONFIG).config
    assert sde.use_exponential_sigmas is True and sde.algorithm_type == "sde-dpmsolver++"
    euler = build_scheduler("Euler", "Automatic", SD15_CONFIG).config
    assert euler.use_karras_sigmas is False and euler.timestep_spacing == "linspace"
    assert build_scheduler("DDIM", "Automatic", SD15_CONFIG).config.timestep_spacing == "leading"


def test_a_sigma_flag_saved_in_the_base_config_does_not_leak_into_another_schedule() -> None:
    saved_with_karras = {**SD15_CONFIG, "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    scheduler = build_scheduler("DPM++ 2M", "Uniform", saved_with_karras)
    assert scheduler.config.use_karras_sigmas is False
    assert scheduler.config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_unsupported_schedule_types_raise_and_name_the_valid_ones(spec: SamplerSpec) -> None:
    for schedule in SCHEDULE_TYPES[1:]:
        if schedule in spec.schedule_types:
            continue
        with pytest.raises(UnknownSamplerError) as raised:
            build_scheduler(spec.name, schedule, SD15_CONFIG)
        message = str(raised.value)
        assert spec.name in message and schedule in message and "Automatic" in message


def test_euler_a_with_karras_is_refused_instead_of_silently_sampling_uniformly() -> None:
    with pytest.raises(ValueError, match="Karras"):
        build_scheduler("Euler a", "Karras", SD15_CONFIG)


def test_zero_terminal_snr_models_are_refused_by_classes_that_cannot_rescale_betas() -> None:
    zero_snr = {**V_PREDICTION_CONFIG, "rescale_betas_zero_snr": True}
    assert build_scheduler("Euler", "Automatic", zero_snr).config.rescale_betas_zero_snr is True
    with pytest.raises(UnknownSamplerError, match="rescale_betas_zero_snr"):
        build_scheduler("Heun", "Automatic", zero_snr)


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_sampler_options_are_constructor_arguments_and_reach_the_scheduler(spec: SamplerSpec, built: Builder) -> None:
    accepted = set(inspect.signature(getattr(diffusers, spec.scheduler_class).__init__).parameters)
    assert set(spec.options) <= accepted
    scheduler = built(spec.name, "Automatic")
    for key, value in spec.options.items():
        assert scheduler.config[key] == value, key


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_stochastic_flag_tells_whether_the_step_noise_changes_the_result(spec: SamplerSpec, built: Builder) -> None:
    def run(seed: int) -> torch.Tensor:
        # The seed drives the step generator, and DPM++ SDE's Brownian tree through its config.
        return denoise(built(spec.name, "Automatic", noise_seed=seed), steps=8, seed=seed)

    assert torch.equal(run(1), run(1)), "the same seed must reproduce the same latent"
    assert torch.equal(run(1), run(2)) != spec.stochastic


def test_aliases_and_names_resolve_case_insensitively() -> None:
    assert find_sampler("k_dpmpp_2m").name == "DPM++ 2M"
    assert find_sampler("K_DPMPP_2M").name == "DPM++ 2M"
    assert find_sampler("dpm++ 2m sde heun").name == "DPM++ 2M SDE Heun"
    assert find_sampler("k_euler_ancestral").name == "Euler a"
    assert find_sampler("  euler a ").name == "Euler a"
    assert find_sampler("UNIPC").name == "UniPC"
    for spec in SAMPLERS:
        for alias in spec.aliases:
            assert find_sampler(alias) is spec


def test_no_name_or_alias_points_at_two_samplers() -> None:
    keys_per_sampler = [{key.casefold() for key in (spec.name, *spec.aliases)} for spec in SAMPLERS]
    all_keys = [key for keys in keys_per_sampler for key in keys]
    assert len(all_keys) == len(set(all_keys))


def test_unknown_sampler_raises_with_the_list_of_valid_names() -> None:
    with pytest.raises(UnknownSamplerError) as raised:
        find_sampler("DPM++ 9Z")
    message = str(raised.value)
    assert "DPM++ 9Z" in message
    for name in sampler_names():
        assert name in message
    with pytest.raises(ValueError, match="DPM fast"):
        build_scheduler("DPM fast", "Automatic", SD15_CONFIG)


def test_unknown_schedule_type_raises_with_the_list_of_valid_names() -> None:
    with pytest.raises(UnknownSamplerError) as raised:
        build_scheduler("Euler", "Align Your Steps", SD15_CONFIG)
    message = str(raised.value)
    assert "Align Your Steps" in message
    for name in schedule_type_names():
        assert name in message


def test_schedule_types_resolve_by_label_or_a1111_internal_name() -> None:
    assert find_schedule_type("karras") == "Karras"
    assert find_schedule_type("sgm_uniform") == "SGM Uniform"
    assert find_schedule_type("SGMUniform") == "SGM Uniform"
    assert find_schedule_type("AUTOMATIC") == "Automatic"


def test_legacy_combined_names_split_into_sampler_and_schedule_type() -> None:
    spec, schedule = resolve_sampler_and_schedule("DPM++ 2M Karras")
    assert (spec.name, schedule) == ("DPM++ 2M", "Karras")
    spec, schedule = resolve_sampler_and_schedule("DPM++ 2M SDE Exponential", "Uniform")
    assert (spec.name, schedule) == ("DPM++ 2M SDE", "Exponential")
    spec, schedule = resolve_sampler_and_schedule("Euler SGM Uniform")
    assert (spec.name, schedule) == ("Euler", "SGM Uniform")
    assert resolve_sampler_and_schedule("DPM++ 2M SDE Heun", None) == (find_sampler("DPM++ 2M SDE Heun"), "Automatic")
    assert build_scheduler("LMS Karras", "Automatic", SD15_CONFIG).config.use_karras_sigmas is True
    with pytest.raises(UnknownSamplerError, match="Valid samplers"):
        resolve_sampler_and_schedule("Nonexistent Karras")


def test_name_lists_follow_a1111_ui_order() -> None:
    names = sampler_names()
    assert names[:4] == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun"]
    assert names.index("Euler a") < names.index("Euler") < names.index("DDIM") < names.index("LCM")
    for required in ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "Heun",
                     "LMS", "DDIM", "PLMS", "UniPC", "LCM"):
        assert required in names
    assert schedule_type_names()[0] == "Automatic"
    assert {"Karras", "Exponential", "SGM Uniform", "Uniform"} <= set(schedule_type_names())
    assert schedule_types_for("Euler a")[0] == "Automatic"


def test_the_table_cannot_be_changed_at_runtime() -> None:
    spec = find_sampler("DPM++ 2M")
    with pytest.raises(TypeError):
        spec.options["solver_order"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "Changed"  # type: ignore[misc]
    assert isinstance(SAMPLERS, tuple) and isinstance(SCHEDULE_TYPES, tuple)
    assert find_sampler("DPM++ 2M").options["solver_order"] == 2
    assert hash(spec) == hash(find_sampler("k_dpmpp_2m"))
