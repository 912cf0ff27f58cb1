"""A1111's Refiner (txt2img): the checkpoint denoises the first `refiner_switch_at` of the way from noise to
picture, another checkpoint (the SDXL refiner, or any checkpoint whose latents are alike) the rest, on the
same latents and with the same sampler run.

How: the job's pipeline gets `RefinerSwitch` as its UNet. It passes each call to the checkpoint's UNet until
the denoising is `switch_at` done, then to the refiner's UNet with the refiner's own prompt embeddings (and,
for SDXL-style UNets, its pooled embedding and time ids, the refiner's with aesthetic scores). The switch is
judged from the timestep as A1111 judges it from the sigma (done = (999 - t) / 1000), so it is the same for
every sampler, inside one sampler run: multistep samplers keep their history across the switch, exactly as
A1111's model swap inside the sampler does. diffusers' `denoising_end`/`denoising_start` would do this only
for SDXL pipelines (SD1/SD2 pipelines lack them) and would restart the sampler at the switch.

With hires fix the refiner takes over in the second pass (A1111's default "Hires fix: which pass to enable
refiner for: second pass"); without, in the only pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from webui.generation.conditioning import PromptEncoder, batch_repeat, build_conditioning
from webui.generation.hooked_modules import _Delegating
from webui.generation.requests import RequestError, Txt2ImgRequest
from webui.models.catalog import CheckpointRecord
from webui.models.families import family_named
from webui.models.manager import LoadedModel
from webui.models.model_configs import load_component_config


def latent_space(record: CheckpointRecord) -> tuple[int, float, float]:
    """(channels, scaling factor, shift) of a checkpoint's latents: its family's VAE (diffusers folders keep
    their family's VAE configuration)."""
    assert record.architecture is not None
    config = load_component_config(record.architecture.family, "vae")
    return (int(config.get("latent_channels", 4)), float(config.get("scaling_factor", 1.0)),
            float(config.get("shift_factor") or 0.0))


def check_refiner_pair(base: CheckpointRecord, refiner: CheckpointRecord) -> None:
    """RequestError naming both models unless the refiner can continue the checkpoint's latents: both UNets
    (DiT models have no UNet to switch), the same latent space and the same UNet input (an inpainting UNet
    takes mask channels)."""
    if base.architecture is None or refiner.architecture is None:
        return
    base_family, refiner_family = (family_named(record.architecture.family) for record in (base, refiner))
    problem = None
    if base_family.denoiser != "unet" or refiner_family.denoiser != "unet":
        problem = "the Refiner switches between UNet models; a transformer model cannot take part"
    elif latent_space(base) != latent_space(refiner):
        problem = "their latents differ (another latent scale or channel count), so one cannot continue the other's"
    elif base.architecture.unet_in_channels != refiner.architecture.unet_in_channels:
        problem = "one is an inpainting model and the other is not"
    if problem:
        raise RequestError(f"refiner {refiner.name} ({refiner.architecture.label}) cannot refine "
                           f"{base.name} ({base.architecture.label}): {problem}")


def refiner_parameters(request: Txt2ImgRequest, model: LoadedModel) -> dict[str, Any]:
    """A1111's infotext fields for the refiner (written when it took part)."""
    if not request.uses_refiner or model.refiner is None:
        return {}
    return {"Refiner": model.refiner.record.title, "Refiner switch at": request.refiner_switch_at}


@dataclass(frozen=True)
class RefinerConditioning:
    """The refiner's prompt embeddings for one sub-batch, ready to hand to its UNet."""

    hidden: tuple[torch.Tensor, torch.Tensor]            # (negative, positive), one row each
    pooled: tuple[torch.Tensor, torch.Tensor] | None
    time_ids: tuple[torch.Tensor, torch.Tensor] | None


def refiner_conditioning(refiner: LoadedModel, prompt: str, negative_prompt: str, steps: int, switch_at: float,
                         clip_skip: int, width: int, height: int) -> RefinerConditioning:
    """The refiner's embeddings of the (styled, tag-free) prompts; a scheduled prompt (`[a:b:10]`) gives the
    entry of the step where the refiner takes over."""
    family = family_named(refiner.family)
    encoder = PromptEncoder(refiner.pipeline, refiner.family, clip_skip)
    schedule = build_conditioning(encoder, prompt, negative_prompt, steps)
    step = min(int(steps * switch_at), steps - 1)
    positive, negative = schedule.positive[step], schedule.negative[step]
    pooled = time_ids = None
    if family.conditions_on_pooled_text:
        pooled = (negative.pooled, positive.pooled)
        time_ids = tuple(torch.tensor([family.time_ids(height, width, wanted)], device=refiner.device,
                                      dtype=positive.hidden.dtype) for wanted in (False, True))
    return RefinerConditioning((negative.hidden, positive.hidden), pooled, time_ids)


class RefinerSwitch(_Delegating):
    """The UNet a refined job's pipeline calls: the checkpoint's until the switch, the refiner's after.
    Every attribute the pipeline reads (config, dtype, add_embedding ...) is the checkpoint's UNet's."""

    def __init__(self, unet: torch.nn.Module, refiner_unet: torch.nn.Module, conditioning: RefinerConditioning,
                 switch_at: float, train_timesteps: int, batch_size: int):
        super().__init__(unet, None)
        self.refiner_unet = refiner_unet
        object.__setattr__(self, "_plan", (conditioning, switch_at, train_timesteps, batch_size))

    def refining(self, timestep: Any) -> bool:
        _, switch_at, train_timesteps, _ = self._plan
        t = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        return (train_timesteps - 1 - t) / train_timesteps >= switch_at

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                **kwargs: Any) -> Any:
        if not self.refining(timestep):
            return self.inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
        conditioning, _, _, batch_size = self._plan
        guided = sample.shape[0] == 2 * batch_size  # classifier-free guidance: negatives first

        def rows(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            positive = batch_repeat(pair[1], batch_size)
            return torch.cat([batch_repeat(pair[0], batch_size), positive]) if guided else positive

        kwargs.pop("added_cond_kwargs", None)
        if conditioning.pooled is not None and conditioning.time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": rows(conditioning.pooled),
                                           "time_ids": rows(conditioning.time_ids)}
        return self.refiner_unet(sample.to(self.refiner_unet.dtype), timestep, rows(conditioning.hidden),
                                 *args, **kwargs)


def refiner_switch(model: LoadedModel, request: Txt2ImgRequest, prompt: str, negative_prompt: str, steps: int,
                   width: int, height: int, batch_size: int):
    """A function turning the pass's UNet into a `RefinerSwitch` (for `pipeline_for`), or None when the job
    has no refiner taking part."""
    refiner = model.refiner
    if refiner is None or not request.uses_refiner:
        return None
    conditioning = refiner_conditioning(refiner, prompt, negative_prompt, steps, request.refiner_switch_at,
                                        request.clip_skip, width, height)
    train_timesteps = int(model.scheduler_config.get("num_train_timesteps", 1000))
    return lambda unet: RefinerSwitch(unet, refiner.pipeline.unet, conditioning, request.refiner_switch_at,
                                      train_timesteps, batch_size)
