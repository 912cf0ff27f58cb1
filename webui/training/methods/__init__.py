"""Training methods: what is trainable, which learning rate each part gets, and what files come out.

The shared loop (`webui.training.loop`) owns data, noise, loss, optimizer steps, sampling and saving
state; a method only decides the trainable parameters and the output files. Each method is one class
with the same interface; :func:`create_method` picks it by the config's `method` name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from webui.training.config import TrainingConfig
from webui.models.families import ModelFamily, family_named

if TYPE_CHECKING:
    from webui.models.checkpoint_loading import CheckpointWeights
    from webui.training.dataset import DatasetSummary
    from webui.training.loop import TrainingPaths


@dataclass
class TrainerModels:
    """The trainer's own copy of the model (never the app's pipeline), on the training device."""

    pipeline: Any
    family: str
    device: torch.device
    base: CheckpointWeights            # the app's weights: read, never written
    base_hash: str

    @property
    def model_family(self) -> ModelFamily:
        return family_named(self.family)

    @property
    def base_name(self) -> str:
        return self.base.record.name

    @property
    def denoiser_config(self) -> dict:
        """The config of the family's denoiser (the UNet, or SD3's transformer)."""
        return self.base.configs[self.model_family.denoiser]

    @property
    def unet_config(self) -> dict:
        return self.denoiser_config

    @property
    def denoiser(self) -> nn.Module:
        """The family's denoiser component: `pipeline.unet`, or `pipeline.transformer` for DiT families."""
        return getattr(self.pipeline, self.model_family.denoiser)

    @property
    def unet(self) -> nn.Module:
        """The denoiser, under the name the SD methods use."""
        return self.denoiser

    @property
    def vae(self) -> nn.Module:
        return self.pipeline.vae

    @property
    def prompt_encoders(self) -> list[nn.Module | None]:
        """Every text encoder slot of the family, in order; None for an optional one the checkpoint lacks
        (SD3 without T5): what the family's prompt encoding takes."""
        return [getattr(self.pipeline, name, None) for name in self.model_family.text_encoders]

    @property
    def tokenizers(self) -> list[Any]:
        return [getattr(self.pipeline, name) for name in self.model_family.tokenizers]

    @property
    def text_encoder_names(self) -> list[str]:
        """The text encoders the checkpoint has (what can train)."""
        return [name for name in self.model_family.text_encoders if getattr(self.pipeline, name, None) is not None]

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [getattr(self.pipeline, name) for name in self.text_encoder_names]


@dataclass(frozen=True)
class SaveRequest:
    """Where and under which name to write one set of outputs (an epoch's or the final one)."""

    paths: TrainingPaths
    suffix: str            # "" for the final files, "-000002" for epoch 2
    step: int
    epoch: int
    summary: DatasetSummary
    processes: int = 1     # training processes (GPUs): the effective batch is per-process x this x accumulation


def epoch_suffix(epoch: int) -> str:
    """kohya's per-epoch file name suffix: `name-000002.safetensors`."""
    return f"-{epoch:06d}"


class TrainingMethod(ABC):
    """One way of training; the loop calls these hooks in this order: prepare, parameter_groups, steps, save."""

    def __init__(self, config: TrainingConfig, models: TrainerModels):
        self.config = config
        self.models = models
        self.dataset_trigger_words: list[str] = []  # from kohya folder names; set by the loop after scanning

    @abstractmethod
    def prepare(self) -> None:
        """Add adapters / tokens and mark what trains (everything starts frozen)."""

    @abstractmethod
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups, each {"params": [...], "lr": ..., optionally "weight_decay"}."""

    @abstractmethod
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor, by a stable name, for resumable state files."""

    @abstractmethod
    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put tensors from `trainable_state` back (resume); names and shapes must match."""

    @abstractmethod
    def save_outputs(self, request: SaveRequest) -> list[Path]:
        """Write the user-facing files (LoRA, embedding, checkpoint); return their paths."""

    @abstractmethod
    def final_output_paths(self, paths: TrainingPaths) -> list[Path]:
        """Where the final files will go (so the UI can warn before overwriting)."""

    def text_encoder_trains(self) -> bool:
        """Whether gradients must flow through the text encoder this step."""
        return False

    def on_step_start(self, step: int, total_steps: int) -> None:  # noqa: B027 (an optional hook)
        """Called before each optimizer step (pivotal tuning freezes its embeddings here)."""

    def after_optimizer_step(self) -> None:  # noqa: B027 (an optional hook)
        """Called after each optimizer step (textual inversion restores the frozen token rows here)."""

    def expand_prompt(self, text: str) -> str:
        """The prompt as the tokenizer must see it (multi-vector tokens spelled out)."""
        return text

    def trigger_words(self) -> list[str]:
        """The words that call up what was trained: the dataset's triggers, else the config's."""
        if self.dataset_trigger_words:
            return list(self.dataset_trigger_words)
        return [self.config.effective_trigger] if self.config.effective_trigger else []

    def usage_hint(self) -> str:
        """How to use the result in a txt2img prompt."""
        return ""


def load_named_tensors(target: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy saved tensors into live ones, refusing a state from a differently shaped run."""
    missing = sorted(set(target) - set(tensors))
    unexpected = sorted(set(tensors) - set(target))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ValueError(f"the saved state does not fit this {what} run ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected tensors, e.g. {example}); were rank or targets changed?")
    with torch.no_grad():
        for name, live in target.items():
            saved = tensors[name]
            if tuple(saved.shape) != tuple(live.shape):
                raise ValueError(f"saved {name} is {tuple(saved.shape)} but {tuple(live.shape)} in this run")
            live.copy_(saved.to(device=live.device, dtype=live.dtype))


def create_method(config: TrainingConfig, models: TrainerModels) -> TrainingMethod:
    """The method object for `config.method`."""
    from webui.training.methods.dreambooth import DreamBoothMethod
    from webui.training.methods.lora import LoraMethod
    from webui.training.methods.pivotal import PivotalMethod
    from webui.training.methods.textual_inversion import TextualInversionMethod

    classes: dict[str, type[TrainingMethod]] = {
        "lora": LoraMethod,
        "dreambooth_lora": LoraMethod,
        "dreambooth": DreamBoothMethod,
        "textual_inversion": TextualInversionMethod,
        "pivotal": PivotalMethod,
    }
    return classes[config.method](config, models)
