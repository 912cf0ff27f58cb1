"""What the denoiser is trained to predict, per family (`ModelFamily.training_objective`).

* Noise prediction (SD1/SD2/SDXL): DDPM noising from the base model's scheduler config; the target is the
  noise (epsilon) or the velocity (v-prediction, SD2-768); optional min-SNR-gamma weights (kohya's).
* Flow matching (SD3): rectified flow. A noise level sigma in (0, 1) is drawn per sample, the input is
  ``(1 - sigma) * latents + sigma * noise`` and the target the velocity ``noise - latents``. sigma is drawn as
  SD3 was trained (and diffusers' SD3 DreamBooth-LoRA script offers): logit-normal (``sigmoid(N(m, s))``) or
  uniform, then moved by the scheduler's `shift` (3.0 for SD3) exactly as the sampling schedule is, so training
  sees the noise levels sampling visits; the timestep the transformer takes is ``sigma * 1000``.

Each objective draws from the run's seeded generator only, so a resumed run repeats the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from webui.training.config import TrainingConfig

NOISE_PREDICTION, FLOW_MATCHING = "noise_prediction", "flow_matching"


class ObjectiveError(RuntimeError):
    """The base model's scheduler asks for something this trainer cannot train."""


@dataclass(frozen=True)
class NoisedBatch:
    """One micro-batch made noisy: the denoiser's input and timesteps, what it must predict, and optional
    per-sample loss weights."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None = None


class NoisePrediction:
    """DDPM epsilon / v-prediction, following the base model's scheduler config."""

    def __init__(self, config: TrainingConfig, scheduler_config: dict[str, Any]) -> None:
        from diffusers import DDPMScheduler

        self.config = config
        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ObjectiveError(f"the base model's scheduler predicts {self.prediction_type!r}; only epsilon and "
                                 "v_prediction models can be trained")

    def warnings(self) -> list[str]:
        return []

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, generator: torch.Generator,
               rows: tuple[int, int, int] | None = None) -> NoisedBatch:
        """Timesteps drawn for the batch; with `rows` (start, stop, total) for all `total` rows of a global
        batch split over processes, this process's [start:stop] kept (every rank draws the same)."""
        device = latents.device
        start, stop, total = rows or (0, latents.shape[0], latents.shape[0])
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (total,),
                                  generator=generator)[start:stop].to(device)
        return self._at_timesteps(latents, noise, timesteps)

    def at_levels(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> NoisedBatch:
        """Noised at fixed levels in (0, 1) of the schedule, unweighted (validation)."""
        last = self.scheduler.config.num_train_timesteps - 1
        timesteps = (levels * last).round().long().to(latents.device)
        batch = self._at_timesteps(latents, noise, timesteps)
        return NoisedBatch(batch.noisy, batch.timesteps, batch.target)

    def _at_timesteps(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> NoisedBatch:
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = prediction_target(self.scheduler, latents, noise, timesteps)
        weights = None
        if self.config.min_snr_gamma:
            weights = min_snr_weights(self.scheduler, timesteps, self.config.min_snr_gamma,
                                      self.prediction_type == "v_prediction")
        return NoisedBatch(noisy, timesteps, target, weights)


def per_sample_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample [B]; with a mask [B, 1, h, w] (1 learns, 0 is ignored) the error is weighted
    by it and averaged over the part it keeps, so a small mask does not also shrink the step size."""
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        return error.mean(dim=tuple(range(1, error.ndim)))
    weights = mask.to(error.dtype).expand_as(error)
    dims = tuple(range(1, error.ndim))
    return (error * weights).sum(dim=dims) / weights.sum(dim=dims).clamp_min(1e-8)


def prediction_target(noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon models) or the velocity (v-prediction, SD2-768)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "epsilon":
        return noise
    raise ObjectiveError(f"the base model's scheduler predicts {prediction_type!r}; only epsilon and "
                         "v_prediction models can be trained")


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v-prediction)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


class FlowMatching:
    """Rectified-flow velocity prediction with SD3's noise-level sampling and the scheduler's shift."""

    def __init__(self, config: TrainingConfig, scheduler_config: dict[str, Any]) -> None:
        self.config = config
        self.shift = float(scheduler_config.get("shift") or 1.0)
        self.num_train_timesteps = int(scheduler_config.get("num_train_timesteps") or 1000)

    def warnings(self) -> list[str]:
        return ["min_snr_gamma applies to noise-prediction models; this flow-matching run ignores it"] \
            if self.config.min_snr_gamma else []

    def draw_sigmas(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Noise levels in (0, 1): the configured density, then the scheduler's shift s*u / (1 + (s-1)*u)."""
        if self.config.flow_timestep_sampling == "uniform":
            u = torch.rand(count, generator=generator)
        else:
            u = torch.sigmoid(self.config.flow_logit_mean
                              + self.config.flow_logit_std * torch.randn(count, generator=generator))
        return self._shifted(u)

    def _shifted(self, u: torch.Tensor) -> torch.Tensor:
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, generator: torch.Generator,
               rows: tuple[int, int, int] | None = None) -> NoisedBatch:
        """Noise levels drawn for the batch (for all `total` rows of a split global batch, see NoisePrediction)."""
        start, stop, total = rows or (0, latents.shape[0], latents.shape[0])
        return self._at_sigmas(latents, noise, self.draw_sigmas(total, generator)[start:stop].to(latents.device))

    def at_levels(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> NoisedBatch:
        """Noised at fixed levels u in (0, 1), moved by the scheduler's shift as training draws are (validation)."""
        return self._at_sigmas(latents, noise, self._shifted(levels.to(latents.device)))

    def _at_sigmas(self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> NoisedBatch:
        broadcast = sigmas.reshape(-1, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - broadcast) * latents + broadcast * noise
        return NoisedBatch(noisy, sigmas * self.num_train_timesteps, noise - latents)


def objective_for(name: str, config: TrainingConfig, scheduler_config: dict[str, Any]) -> NoisePrediction | FlowMatching:
    """The objective a family names (`ModelFamily.training_objective`)."""
    if name == FLOW_MATCHING:
        return FlowMatching(config, scheduler_config)
    if name == NOISE_PREDICTION:
        return NoisePrediction(config, scheduler_config)
    raise ObjectiveError(f"unknown training objective {name!r}")
