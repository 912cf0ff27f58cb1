"""UNet and VAE wrappers that route a job's model calls through its denoising hooks.

Why wrappers: diffusers pipelines offer no seam to add UNet residuals per call, to wrap the UNet call
(tiled diffusion) or to wrap VAE encode/decode (tiled VAE) — the denoising loop calls `self.unet(...)` and
`self.vae.decode(...)` directly. Rather than patching the library or assigning to the loaded modules, the
mode pipeline of a job that has such hooks is built (in `webui.generation.denoise.pipeline_for`, the one
place that does it) with these wrappers as its `unet` / `vae` components. They hold the resident modules
(no weight is copied), answer every attribute the pipeline reads from the wrapped module (`config`, `dtype`,
`add_embedding`, ...) and change only the calls. A job without such hooks never sees them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from webui.generation.hooks import DenoisingHooks, UNetInput


class _Delegating(torch.nn.Module):
    """A module holding `inner` whose unknown attributes are the inner module's."""

    def __init__(self, inner: torch.nn.Module, hooks: DenoisingHooks):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_hooks", hooks)  # not a submodule: plain state of the wrapper

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


class HookedUNet(_Delegating):
    """The UNet as the pipeline calls it: residuals added, the call wrapped by the job's hooks."""

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                **kwargs: Any) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        step, steps = self._hooks.unet_position(timestep)
        unet_input = UNetInput(sample, timestep, encoder_hidden_states, dict(kwargs), step, steps,
                               self._hooks.in_hires_pass)

        def call(given: UNetInput) -> torch.Tensor:
            extra = dict(given.extra)
            down, mid = self._hooks.residuals(given)
            if down is not None:
                extra["down_block_additional_residuals"] = tuple(down)
            if mid is not None:
                extra["mid_block_additional_residual"] = mid
            return self.inner(given.sample, given.timestep, given.encoder_hidden_states, *args, return_dict=False,
                              **extra)[0]

        prediction = self._hooks.call_unet(unet_input, call)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=prediction)
        return (prediction,)


class HookedTransformer(_Delegating):
    """A transformer that takes ControlNet residuals (Flux; its family's `transformer_controlnet`) as the pipeline
    calls it: the job's residual hooks see each call (sample = packed latent tokens) and their per-block residuals
    go in as the transformer's ControlNet inputs. Model-call wrappers speak the UNet's call and are not applied."""

    # The transformer call's inputs that are not the hooks' business (its own switches).
    OWN_ARGUMENTS = ("hidden_states", "timestep", "encoder_hidden_states", "return_dict", "joint_attention_kwargs")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        sample = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs.get("timestep")
        step, steps = self._hooks.unet_position(timestep)
        extra = {name: value for name, value in kwargs.items() if name not in self.OWN_ARGUMENTS}
        double, single = self._hooks.transformer_residuals(UNetInput(
            sample, timestep, kwargs.get("encoder_hidden_states"), extra, step, steps, self._hooks.in_hires_pass))
        if double:
            kwargs["controlnet_block_samples"] = list(double)
        if single:
            kwargs["controlnet_single_block_samples"] = list(single)
        return self.inner(*args, **kwargs)


class HookedVAE(_Delegating):
    """The VAE as the pipeline calls it: encode and decode go through the job's hooks."""

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs: Any) -> Any:
        sample = self._hooks.decode(z, lambda latents: self.inner.decode(latents, return_dict=False, **kwargs)[0])
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        parameters = self._hooks.encode(x, lambda pixels: self.inner.encode(pixels).latent_dist.parameters)
        distribution = DiagonalGaussianDistribution(parameters)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)
