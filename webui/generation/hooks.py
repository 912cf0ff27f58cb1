"""The generation engine's seam for code that is not the engine (extensions): what a job offers to others.

The engine runs a job with a `GenerationHooks` object handed to it explicitly (by `GenerationService`, which
gets it from the composition root); the default one does nothing. The extension layer
(`webui.extensions.generation_hooks`) subclasses it and fills each method from what extensions registered,
so the engine never imports webui.extensions and knows nothing of isolation or timing: every method here
takes the job's `warnings` list, and the implementation appends to it when an extension fails.

Denoising hooks (per-step callbacks, UNet residuals, attention processors, model-call and VAE wrappers) are
asked for once per job by `denoising(job)`: None means none are wanted, and then no wrapper is installed and
the pipeline runs exactly as without this seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

# A scheduler factory: the loaded model's scheduler config in, a diffusers scheduler out.
SchedulerFactory = Callable[[dict[str, Any]], Any]
# Runs an inpaint pass through the job's own model: (image, mask, changes to the request) -> image.
InpaintPass = Callable[[Image.Image, Image.Image, dict[str, Any]], Image.Image]


@dataclass(frozen=True)
class JobModel:
    """The checkpoint a job runs on, as hooks that bring their own modules (ControlNet) must match it."""

    name: str
    family: str                   # "sd1", "sd2", "sdxl", ...
    unet_config: Mapping[str, Any]  # the denoiser's config (the UNet's, or a transformer family's transformer's)
    device: torch.device
    dtype: torch.dtype
    # The ControlNet modules of the job's model state (built in the manager's checkout), by file path.
    controls: Mapping[str, Any] = field(default_factory=dict)
    # Control images as latents in the denoiser's layout, for ControlNets that take latents (Flux): (image 1 x 3 x
    # H x W in [0, 1], the sample's token grid) -> latents; made per job (webui.generation.controlnet.memoized_encoder).
    encode_control: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None


@dataclass(frozen=True)
class JobInfo:
    """What every hook of one job may read: the request as it runs (a Txt2ImgRequest or Img2ImgRequest)."""

    request: Any
    warnings: list[str]
    model: JobModel | None = None


@dataclass(frozen=True)
class ImageInfo:
    """One finished image before it is saved."""

    index: int                  # position in the job (0 = first image)
    seed: int
    subseed: int
    prompt: str                 # this image's own prompt (after expansion)
    negative_prompt: str
    parameters: Mapping[str, Any]  # its infotext fields so far
    inpaint: InpaintPass


@dataclass(frozen=True)
class UNetInput:
    """One call of the UNet inside the denoising loop (classifier-free guidance doubles the batch)."""

    sample: torch.Tensor
    timestep: Any
    encoder_hidden_states: torch.Tensor
    extra: Mapping[str, Any] = field(default_factory=dict)  # the pipeline's other keyword arguments
    step: int = 0          # 0-based step of the current pass (txt2img, hires fix and img2img passes count apart)
    total_steps: int = 0   # the pass's step count; 0 while unknown (before its first step ends)
    hires: bool = False    # the call belongs to txt2img's hires-fix (second) pass


UNetFunction = Callable[[UNetInput], torch.Tensor]


class DenoisingHooks:
    """The per-job denoising hooks; every method's default leaves the pipeline's behaviour unchanged.

    `wants_unet` / `wants_vae` say whether a wrapper module is needed at all."""

    wants_unet: bool = False
    wants_vae: bool = False
    wants_residuals: bool = False     # residual hooks have work for the job (transformers take those too)
    wraps_model_calls: bool = False   # model-call wrappers exist (they speak the UNet's call only)

    def step_finished(self, step: int, steps: int) -> None:
        """The pass's step `step` (0-based) of `steps` ended (the step callback says so): UNet calls that
        follow belong to the next step. Kept on this per-job object, so jobs never share it."""
        self.__dict__["_position"] = (step + 1, steps)

    def begin_pass(self, hires: bool) -> None:
        """The pass that starts now is (or is not) the hires-fix pass: hooks that act in one pass only
        (a ControlNet unit's `hr_option`) read it from each UNet call. Kept on this per-job object."""
        self.__dict__["_hires"] = hires

    @property
    def in_hires_pass(self) -> bool:
        return bool(self.__dict__.get("_hires", False))

    def unet_position(self, timestep: Any) -> tuple[int, int]:
        """(step, steps) of the pass a UNet call belongs to. Why the timestep: a pass (the hires fix, the
        next batch) starts at a higher noise level than the last call saw, and then counts from 0 again,
        also when the previous pass was interrupted before its last step."""
        now = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        last = self.__dict__.get("_last_timestep")
        step, steps = self.__dict__.get("_position", (0, 0))
        if last is not None and now > last:
            step, steps = 0, 0
            self.__dict__["_position"] = (0, 0)
        self.__dict__["_last_timestep"] = now
        return step, steps

    def on_step(self, latents: torch.Tensor, step: int, total_steps: int, sigma: float) -> torch.Tensor | None:
        """After each denoising step: changed latents, or None."""
        return None

    def residuals(self, unet_input: UNetInput) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """Extra down-block and mid-block residuals for this UNet call ((None, None) = none)."""
        return None, None

    def transformer_residuals(self, unet_input: UNetInput) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """Residuals for one transformer call (Flux): one per double-stream block and one per single-stream
        block ((None, None) = none). `unet_input.sample` holds the packed latent tokens, `extra` the call's other
        inputs (pooled text, position ids, guidance)."""
        return None, None

    def call_unet(self, unet_input: UNetInput, call: UNetFunction) -> torch.Tensor:
        """Run the UNet (possibly differently, e.g. tiled) through `call`; returns its noise prediction."""
        return call(unet_input)

    def attention_processors(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """Processors to install for the job (name -> processor); restored when the job ends."""
        return {}

    def decode(self, latents: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """VAE decode: scaled-back latents -> pixels in [-1, 1], through `call` or otherwise."""
        return call(latents)

    def encode(self, pixels: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """VAE encode: pixels in [-1, 1] -> the latent distribution's parameters (mean and log-variance
        stacked on the channel axis), through `call` or otherwise."""
        return call(pixels)


class GenerationHooks:
    """No-op default of every generation-time hook. Subclassed by the extension layer."""

    def before_request(self, request: Any, warnings: list[str], check: Callable[[Any], Any]) -> Any:
        """The request a job runs: the one given, or a changed one of the same type that passed `check`
        (the app's own checks: it returns the checked request or raises ValueError with the reason)."""
        return request

    def expand_prompts(self, job: JobInfo, prompt: str, negative_prompt: str, count: int,
                       seed: int) -> list[str] | None:
        """Per-image prompts (their number may differ from `count`), or None to keep the prompt."""
        return None

    def after_image(self, job: JobInfo, image: Image.Image, info: ImageInfo) -> tuple[Image.Image, dict[str, Any]]:
        """The image to save (the same or a replacement) and infotext fields to add to it."""
        return image, {}

    def after_batch(self, job: JobInfo, images: list[Image.Image], seeds: list[int], prompts: list[str]) -> None:
        """After each batch of images."""

    def denoising(self, job: JobInfo) -> DenoisingHooks | None:
        """The job's denoising hooks, or None when nothing hooks the denoising (no wrapper is installed)."""
        return None

    def control_models(self, request: Any, warnings: list[str]) -> tuple[str, ...]:
        """The control models (ControlNet titles or names) the job's hooks will use: they join the job's
        model state, so the manager builds them in its checkout and the state key names them."""
        return ()

    def model_loaded(self, name: str, shorthash: str | None, family: str) -> None:
        """A checkpoint was loaded or switched to (outside any job's warnings: failures are only logged)."""

    def samplers(self) -> Mapping[str, SchedulerFactory]:
        """Samplers added beside the built-in table: name -> scheduler factory."""
        return {}


class SamplersOnly(GenerationHooks):
    """Hooks that only know the added samplers: for work a job runs inside itself (an inline inpaint pass),
    where no other hook may run again."""

    def __init__(self, samplers: Mapping[str, SchedulerFactory]):
        self._samplers = dict(samplers)

    def samplers(self) -> Mapping[str, SchedulerFactory]:
        return self._samplers
