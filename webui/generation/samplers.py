"""A1111 sampler and schedule-type names, mapped onto diffusers scheduler classes.

A1111 1.10 splits the old "DPM++ 2M Karras" style names into a *sampler* (the solver) and a *schedule type*
(how the noise levels are spaced). diffusers folds both into one scheduler object configured by constructor
options, so this module keeps a data table of samplers and a table of schedule-type options, and builds the
scheduler for one (sampler, schedule type) pair on top of the loaded pipeline's scheduler config.

Only what diffusers 0.42.1 can really do is listed; nothing is approximated silently:

* Left out samplers, with no diffusers equivalent: "DPM++ 2S a" (diffusers' single-step DPM-Solver is not
  ancestral), "DPM++ 3M SDE" (diffusers' third-order SDE update uses a different D2 coefficient than
  k-diffusion's and cannot drop the penultimate sigma), "DPM fast", "DPM adaptive", "Restart" and
  "DDIM CFG++" (a guidance change, not a scheduler).
* Left out schedule types: "KL Optimal" and "Align Your Steps" (no scheduler option produces them).
* A schedule type a class has no option for (e.g. Karras for "Euler a", whose diffusers class has no
  `use_karras_sigmas`) raises `UnknownSamplerError` instead of being dropped.

Known small differences that remain: A1111 drops the penultimate sigma for DPM2 / DPM2 a; "DPM++ 2M SDE" and
"DPM++ 2M SDE Heun" draw Gaussian noise per step where A1111 uses a Brownian tree (same distribution,
different numbers); diffusers' multistep solvers (DPM++ 2M family, UniPC) space "Uniform" / "Normal" over
steps + 1 points and so make their last model call one interval above t=0, and space "DDIM" by
1000 // (steps + 1).
"DPM++ SDE" (`DPMSolverSDEScheduler`, needs `torchsde`) draws its noise from a Brownian tree seeded by the
`noise_sampler_seed` config value rather than from a `generator`: put the seed in `base_config` to make it
reproducible.

Flow-matching families (SD3, Flux: `ModelFamily.flow_matching`) sample with `FLOW_SAMPLERS`: the A1111 names
whose diffusers scheduler can take a velocity-predicting model. "Euler" and "Heun" are the FlowMatch
schedulers; "DPM++ 2M", "DPM++ 2M SDE" and "UniPC" are the multistep solvers with `use_flow_sigmas` and
`prediction_type="flow_prediction"` (the model's `shift` becomes their `flow_shift`; UniPC in its bh2 variant,
as bh1 cannot take the last step to sigma 0 and a flow schedule's sigma_min leaves noise). Those solvers have no
`scale_noise`, which diffusers' SD3/Flux img2img and inpaint pipelines call, so they draw txt2img only (no
img2img, inpaint or hires fix). A family may narrow the table further (`ModelFamily.flow_sampler_names`:
FluxPipeline passes its own sigmas and shift, which not every scheduler takes). Every flow schedule starts
from the model's own shifted sigmas: "Simple" (the default; "Normal", "SGM Uniform" and "Uniform" are the
same even spacing in t for a flow model), and "Karras", "Exponential" and "Beta" re-spaced by diffusers'
FlowMatch Euler scheduler.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Collection, Mapping

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


class UnknownSamplerError(ValueError):
    """A sampler or schedule-type name, or a combination of both, that this app cannot build."""


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the sampler table: an A1111 sampler and the diffusers scheduler that implements it."""

    name: str
    scheduler_class: str
    options: Mapping[str, Any] = field(hash=False)
    aliases: tuple[str, ...]
    default_schedule: str
    stochastic: bool
    # Concrete schedule types (never "Automatic") that diffusers can do with `scheduler_class`.
    schedule_types: tuple[str, ...]

    def __post_init__(self) -> None:
        # A read-only copy, so a caller can never change the shared table through a spec.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


AUTOMATIC = "Automatic"

# Constructor overrides per schedule type. Karras / Exponential / Beta use "linspace" spacing so the sigma
# range runs from the model's sigma(t=max) to sigma(t=0), as A1111 does (diffusers' schedulers docs note it too).
# "Polyexponential" is A1111's polyexponential schedule at its default rho = 1, which is the exponential one.
# "Normal" is A1111's uniform-in-timestep schedule (same as "Uniform"); "Simple" and "SGM Uniform" both start
# at the last training timestep and step down evenly ("trailing"); "DDIM" is DDIM's own spacing ("leading"
# plus the model's steps_offset, 951, 901, ... 1 for 20 steps on SD).
_SCHEDULE_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "Uniform": MappingProxyType({"timestep_spacing": "linspace"}),
        "Karras": MappingProxyType({"timestep_spacing": "linspace", "use_karras_sigmas": True}),
        "Exponential": MappingProxyType({"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
        "Polyexponential": MappingProxyType({"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
        "SGM Uniform": MappingProxyType({"timestep_spacing": "trailing"}),
        "Simple": MappingProxyType({"timestep_spacing": "trailing"}),
        "Normal": MappingProxyType({"timestep_spacing": "linspace"}),
        "DDIM": MappingProxyType({"timestep_spacing": "leading"}),
        "Beta": MappingProxyType({"timestep_spacing": "linspace", "use_beta_sigmas": True}),
    }
)

# A1111 UI order; "Automatic" means "the sampler's own default" (SamplerSpec.default_schedule).
SCHEDULE_TYPES: tuple[str, ...] = (AUTOMATIC, *_SCHEDULE_OPTIONS)

# A1111's internal schedule names and aliases (API requests and infotexts use them), besides the labels.
_SCHEDULE_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        AUTOMATIC: ("automatic",),
        "Uniform": ("uniform",),
        "Karras": ("karras",),
        "Exponential": ("exponential",),
        "Polyexponential": ("polyexponential",),
        "SGM Uniform": ("sgm_uniform", "SGMUniform"),
        "Simple": ("simple",),
        "Normal": ("normal",),
        "DDIM": ("ddim",),
        "Beta": ("beta",),
    }
)

# Config flags that choose the shape of the sigma schedule: a base config saved with one of them switched on
# (e.g. a checkpoint shipped with "DPM++ 2M Karras") must not leak into a different schedule type.
_SIGMA_SHAPE_FLAGS: tuple[str, ...] = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
)

# Every schedule type for classes with the karras/exponential/beta sigma options; spacing-only otherwise.
_ALL_SCHEDULES: tuple[str, ...] = tuple(_SCHEDULE_OPTIONS)
_SPACING_ONLY_SCHEDULES: tuple[str, ...] = ("Uniform", "SGM Uniform", "Simple", "Normal", "DDIM")

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(
        name="DPM++ 2M",
        scheduler_class="DPMSolverMultistepScheduler",
        options={"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
        aliases=("k_dpmpp_2m",),
        default_schedule="Karras",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ SDE",
        scheduler_class="DPMSolverSDEScheduler",
        options={},
        aliases=("k_dpmpp_sde",),
        default_schedule="Karras",
        stochastic=True,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 2M SDE",
        scheduler_class="DPMSolverMultistepScheduler",
        options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
        aliases=("k_dpmpp_2m_sde",),
        default_schedule="Exponential",
        stochastic=True,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 2M SDE Heun",
        scheduler_class="DPMSolverMultistepScheduler",
        options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
        aliases=("k_dpmpp_2m_sde_heun",),
        default_schedule="Exponential",
        stochastic=True,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="Euler a",
        scheduler_class="EulerAncestralDiscreteScheduler",
        options={},
        aliases=("k_euler_a", "k_euler_ancestral"),
        default_schedule="Uniform",
        stochastic=True,
        schedule_types=_SPACING_ONLY_SCHEDULES,
    ),
    SamplerSpec(
        name="Euler",
        scheduler_class="EulerDiscreteScheduler",
        options={},
        aliases=("k_euler",),
        default_schedule="Uniform",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="LMS",
        scheduler_class="LMSDiscreteScheduler",
        options={},
        aliases=("k_lms",),
        default_schedule="Uniform",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="Heun",
        scheduler_class="HeunDiscreteScheduler",
        options={},
        aliases=("k_heun",),
        default_schedule="Uniform",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM2",
        scheduler_class="KDPM2DiscreteScheduler",
        options={},
        aliases=("k_dpm_2",),
        default_schedule="Karras",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM2 a",
        scheduler_class="KDPM2AncestralDiscreteScheduler",
        options={},
        aliases=("k_dpm_2_a",),
        default_schedule="Karras",
        stochastic=True,
        schedule_types=_ALL_SCHEDULES,
    ),
    # A1111's DDIM/PLMS ignore the schedule type and always use DDIM spacing; diffusers can also space them
    # uniformly or trailing, which is offered. They never clip x0 and end on alphas_cumprod[0].
    SamplerSpec(
        name="DDIM",
        scheduler_class="DDIMScheduler",
        options={"clip_sample": False, "set_alpha_to_one": False},
        aliases=("ddim",),
        default_schedule="DDIM",
        stochastic=False,
        schedule_types=_SPACING_ONLY_SCHEDULES,
    ),
    SamplerSpec(
        name="PLMS",
        scheduler_class="PNDMScheduler",
        options={"skip_prk_steps": True, "set_alpha_to_one": False},
        aliases=("plms",),
        default_schedule="DDIM",
        stochastic=False,
        schedule_types=_SPACING_ONLY_SCHEDULES,
    ),
    # A1111 defaults: variant bh1, order 3, lower order final, "time_uniform" steps (= diffusers' linspace)
    # ending at sigma(t=0) rather than 0 (bh1 cannot take a step to sigma 0: it divides by an infinite h).
    SamplerSpec(
        name="UniPC",
        scheduler_class="UniPCMultistepScheduler",
        options={
            "solver_type": "bh1",
            "solver_order": 3,
            "lower_order_final": True,
            "predict_x0": True,
            "final_sigmas_type": "sigma_min",
        },
        aliases=("unipc",),
        default_schedule="Uniform",
        stochastic=False,
        schedule_types=_ALL_SCHEDULES,
    ),
    # LCMScheduler always spaces its steps evenly over the 50 distillation timesteps, which is what A1111's
    # LCM sampler does with its uniform schedule; it has no option for any other schedule type.
    SamplerSpec(
        name="LCM",
        scheduler_class="LCMScheduler",
        options={},
        aliases=("k_lcm",),
        default_schedule="Uniform",
        stochastic=True,
        schedule_types=("Uniform",),
    ),
)


# Flow-matching schedule types -> scheduler options (the shift always comes from the model's config).
_FLOW_EVEN = MappingProxyType({})
_FLOW_SCHEDULE_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "Simple": _FLOW_EVEN, "Normal": _FLOW_EVEN, "SGM Uniform": _FLOW_EVEN, "Uniform": _FLOW_EVEN,
    "Karras": MappingProxyType({"use_karras_sigmas": True}),
    "Exponential": MappingProxyType({"use_exponential_sigmas": True}),
    "Beta": MappingProxyType({"use_beta_sigmas": True}),
})
_FLOW_EVEN_SCHEDULES = ("Simple", "Normal", "SGM Uniform", "Uniform")
_FLOW_SOLVER = MappingProxyType({"use_flow_sigmas": True, "prediction_type": "flow_prediction"})

FLOW_SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(name="Euler", scheduler_class="FlowMatchEulerDiscreteScheduler", options={}, aliases=("k_euler",),
                default_schedule="Simple", stochastic=False, schedule_types=tuple(_FLOW_SCHEDULE_OPTIONS)),
    SamplerSpec(name="Heun", scheduler_class="FlowMatchHeunDiscreteScheduler", options={}, aliases=("k_heun",),
                default_schedule="Simple", stochastic=False, schedule_types=_FLOW_EVEN_SCHEDULES),
    SamplerSpec(name="DPM++ 2M", scheduler_class="DPMSolverMultistepScheduler",
                options={**_FLOW_SOLVER, "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
                aliases=("k_dpmpp_2m",), default_schedule="Simple", stochastic=False,
                schedule_types=_FLOW_EVEN_SCHEDULES),
    SamplerSpec(name="DPM++ 2M SDE", scheduler_class="DPMSolverMultistepScheduler",
                options={**_FLOW_SOLVER, "algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                         "solver_type": "midpoint"},
                aliases=("k_dpmpp_2m_sde",), default_schedule="Simple", stochastic=True,
                schedule_types=_FLOW_EVEN_SCHEDULES),
    SamplerSpec(name="UniPC", scheduler_class="UniPCMultistepScheduler",
                options={**_FLOW_SOLVER, "solver_type": "bh2", "solver_order": 3, "lower_order_final": True,
                         "predict_x0": True, "final_sigmas_type": "zero"},
                aliases=("unipc",), default_schedule="Simple", stochastic=False, schedule_types=_FLOW_EVEN_SCHEDULES),
)


def sampler_table(flow_matching: bool) -> tuple[SamplerSpec, ...]:
    """The samplers a model family can use (`ModelFamily.flow_matching`)."""
    return FLOW_SAMPLERS if flow_matching else SAMPLERS


def noises_images(spec: SamplerSpec) -> bool:
    """Can the sampler start part-way from a noised image (img2img, inpaint, hires fix)? Flow pipelines call
    the scheduler's `scale_noise`; the multistep solvers have none."""
    if spec not in FLOW_SAMPLERS:
        return True
    import diffusers

    return hasattr(getattr(diffusers, spec.scheduler_class), "scale_noise")


def check_flow_sampler(sampler: str, schedule_type: str | None, *, from_image: bool,
                       family_label: str = "this model", allowed: Collection[str] | None = None) -> str:
    """The canonical flow sampler name for a request on a flow-matching model, or UnknownSamplerError naming
    the samplers (and schedule types) that work for it; `from_image`: img2img, inpaint or a hires pass;
    `allowed`: the flow samplers the family's pipelines can drive (`ModelFamily.flow_sampler_names`)."""
    usable = [spec for spec in FLOW_SAMPLERS if (not from_image or noises_images(spec))
              and (allowed is None or spec.name in allowed)]
    names = ", ".join(spec.name for spec in usable)
    what = f"{family_label} ({'img2img, inpaint and hires fix' if from_image else 'txt2img'})"
    try:
        spec, schedule = resolve_sampler_and_schedule(sampler, schedule_type, FLOW_SAMPLERS)
    except UnknownSamplerError:
        raise UnknownSamplerError(f"Sampler {sampler!r} cannot sample {what}: it is a flow-matching model. "
                                  f"Samplers that work: {names}") from None
    if allowed is not None and spec.name not in allowed:
        raise UnknownSamplerError(f"Sampler {spec.name!r} cannot sample {what}: its pipeline cannot drive diffusers' "
                                  f"{spec.scheduler_class}. Samplers that work: {names}")
    if spec not in usable:
        raise UnknownSamplerError(f"Sampler {spec.name!r} cannot sample {what}: diffusers' {spec.scheduler_class} "
                                  f"cannot start from a noised image. Samplers that work: {names}")
    if schedule != AUTOMATIC and schedule not in spec.schedule_types:
        raise UnknownSamplerError(f"Sampler {spec.name!r} cannot use schedule type {schedule!r} on {family_label}. "
                                  f"Schedule types for it: {', '.join((AUTOMATIC, *spec.schedule_types))}")
    return spec.name


def sampler_names() -> list[str]:
    """Sampler display names in A1111 UI order (for dropdowns and the /sdapi/v1/samplers endpoint)."""
    return [spec.name for spec in SAMPLERS]


def schedule_type_names() -> list[str]:
    """Schedule-type labels in A1111 UI order, "Automatic" first."""
    return list(SCHEDULE_TYPES)


def find_sampler(name: str, table: tuple[SamplerSpec, ...] = SAMPLERS) -> SamplerSpec:
    """The sampler whose display name or alias equals `name`, ignoring case and surrounding spaces."""
    wanted = name.strip().casefold()
    for spec in table:
        if wanted == spec.name.casefold() or wanted in (alias.casefold() for alias in spec.aliases):
            return spec
    raise UnknownSamplerError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(spec.name for spec in table)}")


def find_schedule_type(name: str) -> str:
    """The canonical schedule-type label for a label or A1111 internal name ("karras", "sgm_uniform", ...)."""
    wanted = name.strip().casefold()
    for label in SCHEDULE_TYPES:
        if wanted == label.casefold() or wanted in (alias.casefold() for alias in _SCHEDULE_ALIASES[label]):
            return label
    raise UnknownSamplerError(
        f"Unknown schedule type {name!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}"
    )


def schedule_types_for(sampler: str) -> list[str]:
    """The schedule types a UI should offer for `sampler`: "Automatic" plus those diffusers can do with it."""
    return [AUTOMATIC, *find_sampler(sampler).schedule_types]


def _split_legacy_name(name: str) -> tuple[str, str] | None:
    """("DPM++ 2M", "Karras") for a pre-1.9 combined name like "DPM++ 2M Karras"; None if not one."""
    stripped = name.strip()
    suffixes = [(suffix, label) for label in SCHEDULE_TYPES[1:] for suffix in (label, *_SCHEDULE_ALIASES[label])]
    # Longest first, so "Euler SGM Uniform" splits off "SGM Uniform" rather than "Uniform".
    for suffix, label in sorted(suffixes, key=lambda pair: len(pair[0]), reverse=True):
        ending = " " + suffix.casefold()
        if stripped.casefold().endswith(ending):
            return stripped[: -len(ending)], label
    return None


def resolve_sampler_and_schedule(sampler: str, schedule_type: str | None = None,
                                 table: tuple[SamplerSpec, ...] = SAMPLERS) -> tuple[SamplerSpec, str]:
    """The sampler spec and canonical schedule label for a request, accepting A1111's legacy combined names.

    Old clients and infotexts send "DPM++ 2M Karras" as the sampler; like A1111, the schedule named in the
    sampler wins over `schedule_type`. None or an empty schedule type means "Automatic" (kept unresolved).
    """
    schedule_label = find_schedule_type(schedule_type) if schedule_type else AUTOMATIC
    try:
        return find_sampler(sampler, table), schedule_label
    except UnknownSamplerError:
        legacy = _split_legacy_name(sampler)
        if legacy is None:
            raise
        base_name, legacy_schedule = legacy
        try:
            return find_sampler(base_name, table), legacy_schedule
        except UnknownSamplerError:
            raise UnknownSamplerError(
                f"Unknown sampler {sampler!r}. Valid samplers: {', '.join(spec.name for spec in table)}"
            ) from None


def _constructor_parameters(scheduler_class: type) -> frozenset[str]:
    """Names the scheduler's __init__ accepts; everything else in a base config must be left out."""
    parameters = inspect.signature(scheduler_class.__init__).parameters
    return frozenset(
        name
        for name, parameter in parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    )


def scheduler_config(sampler: str, schedule_type: str, base_config: Mapping[str, Any],
                     table: tuple[SamplerSpec, ...] = SAMPLERS) -> tuple[str, dict[str, Any]]:
    """The diffusers class name and constructor arguments `build_scheduler` would use.

    Lets a caller see whether the scheduler it already holds is the one a request needs (building some classes,
    e.g. the DPM2 ones, takes half a second) and validates a request without constructing anything.
    """
    import diffusers  # deferred: importing diffusers takes seconds and the name tables do not need it

    spec, requested_schedule = resolve_sampler_and_schedule(sampler, schedule_type, table)
    effective_schedule = spec.default_schedule if requested_schedule == AUTOMATIC else requested_schedule
    if effective_schedule not in spec.schedule_types:
        raise UnknownSamplerError(
            f"Sampler {spec.name!r} cannot use schedule type {requested_schedule!r}: diffusers' "
            f"{spec.scheduler_class} has no option for it. Schedule types for {spec.name!r}: "
            f"{', '.join((AUTOMATIC, *spec.schedule_types))}"
        )

    accepted = _constructor_parameters(getattr(diffusers, spec.scheduler_class))
    if base_config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in accepted:
        raise UnknownSamplerError(
            f"Sampler {spec.name!r} cannot be used with this model: it was trained with zero terminal SNR "
            f"(rescale_betas_zero_snr) and diffusers' {spec.scheduler_class} has no option for that."
        )

    config = {key: value for key, value in base_config.items() if key in accepted}
    config.update({flag: False for flag in _SIGMA_SHAPE_FLAGS if flag in accepted})
    config.update(spec.options)
    if table is FLOW_SAMPLERS and "flow_shift" in accepted and "shift" in base_config:
        config["flow_shift"] = base_config["shift"]  # the FlowMatch config's shift, as the solvers name it
    schedule_options = (_FLOW_SCHEDULE_OPTIONS if table is FLOW_SAMPLERS else _SCHEDULE_OPTIONS)[effective_schedule]
    missing = sorted(set(schedule_options) - accepted)
    if missing:
        raise UnknownSamplerError(
            f"Sampler {spec.name!r} cannot use schedule type {effective_schedule!r}: diffusers' "
            f"{spec.scheduler_class} does not accept {', '.join(missing)}."
        )
    config.update(schedule_options)
    return spec.scheduler_class, config


def build_scheduler(sampler: str, schedule_type: str, base_config: Mapping[str, Any],
                    table: tuple[SamplerSpec, ...] = SAMPLERS) -> SchedulerMixin:
    """A fresh diffusers scheduler for an A1111 (sampler, schedule type) pair.

    `base_config` is the loaded pipeline's `scheduler.config`: its training parameters (betas, prediction
    type, steps_offset, ...) are kept, keys the target class does not take are dropped, then the sampler's
    options and the schedule type's options are applied. Raises UnknownSamplerError for unknown names and for
    combinations diffusers cannot do, rather than silently sampling with a different schedule.
    """
    import diffusers

    class_name, config = scheduler_config(sampler, schedule_type, base_config, table)
    return getattr(diffusers, class_name)(**config)
