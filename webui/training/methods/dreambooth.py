"""DreamBooth: fine-tune every UNet weight (and the text encoder when asked), usually with prior preservation.

The result is a whole checkpoint saved into the checkpoints folder, so the model dropdown lists it at
once: an A1111-layout single file when the model has a standard SD shape, a diffusers folder otherwise
(`export.save_trained_checkpoint` decides). The VAE is never trained and comes from the base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from webui.training.methods import SaveRequest, TrainingMethod, load_named_tensors

if TYPE_CHECKING:
    from webui.training.loop import TrainingPaths


class DreamBoothMethod(TrainingMethod):
    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        modules = {"unet": self.models.unet}
        if self.config.train_text_encoder:
            modules.update(zip(self.models.text_encoder_names, self.models.text_encoders))
        return modules

    def prepare(self) -> None:
        for module in self._trained_modules().values():
            module.requires_grad_(True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        from webui.training.optim import block_weighted_groups

        groups = block_weighted_groups(dict(self.models.unet.named_parameters()), self.config.unet_lr,
                                       self.config.block_lr_weights)
        if self.config.train_text_encoder:
            groups.append({"params": [p for encoder in self.models.text_encoders for p in encoder.parameters()],
                           "lr": self.config.text_encoder_lr})
        return groups

    def text_encoder_trains(self) -> bool:
        return self.config.train_text_encoder

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{component}.{name}": parameter for component, module in self._trained_modules().items()
                for name, parameter in module.named_parameters()}

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        load_named_tensors(self.trainable_state(), tensors, "DreamBooth")

    def final_output_paths(self, paths: TrainingPaths) -> list[Path]:
        folder, name = Path(paths.checkpoints_dir), self.config.output_name
        return [folder / f"{name}.safetensors", folder / name]

    def save_outputs(self, request: SaveRequest) -> list[Path]:
        from webui.training.export import save_trained_checkpoint

        state_dicts = {component: {key: tensor.detach() for key, tensor in module.state_dict().items()}
                       for component, module in self._trained_modules().items()}
        metadata = {
            "sd_studio_training": json.dumps({
                "method": self.config.method, "base_model": self.models.base_name,
                "base_model_hash": self.models.base_hash, "steps": request.step, "epochs": request.epoch,
                "trigger_words": self.trigger_words(), "unet_lr": self.config.unet_lr,
                "prior_preservation": self.config.uses_prior_preservation,
            }),
            "modelspec.trigger_phrase": ", ".join(self.trigger_words()),
        }
        path = save_trained_checkpoint(Path(request.paths.checkpoints_dir), f"{self.config.output_name}{request.suffix}",
                                       state_dicts, self.models.base, metadata=metadata, overwrite=True)
        return [path]

    def usage_hint(self) -> str:
        words = ", ".join(self.trigger_words())
        return f"checkpoint {self.config.output_name}" + (f", prompt with {words}" if words else "")
