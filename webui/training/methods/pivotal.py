"""Pivotal tuning: new token vectors and a LoRA trained together, the vectors only for the first part.

As in the diffusers advanced DreamBooth-LoRA recipe, the embeddings learn the concept's "pivot" for
`embedding_train_fraction` of the steps and are then frozen while the LoRA keeps refining around them.
Both files are saved under the run's output name, so `<lora:name:1> name` in a prompt uses the pair:
A1111 and this app address an embedding by its file name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from webui.training.config import TrainingConfig
from webui.training.methods import SaveRequest, TrainerModels, TrainingMethod, load_named_tensors
from webui.training.methods.lora import LoraAdapters, training_metadata
from webui.training.methods.textual_inversion import NewTokenEmbeddings

if TYPE_CHECKING:
    from webui.training.loop import TrainingPaths


class PivotalMethod(TrainingMethod):
    def __init__(self, config: TrainingConfig, models: TrainerModels) -> None:
        super().__init__(config, models)
        self.embeddings = NewTokenEmbeddings(config, models)
        self.adapters = LoraAdapters(config, models)

    def prepare(self) -> None:
        self.embeddings.add()  # first: resizing the table must happen before adapters wrap the encoder
        self.adapters.inject()

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.adapters.parameter_groups() + [self.embeddings.parameter_group()]

    def embedding_steps(self, total_steps: int) -> int:
        return math.ceil(self.config.embedding_train_fraction * total_steps)

    def on_step_start(self, step: int, total_steps: int) -> None:
        if not self.embeddings.frozen and step >= self.embedding_steps(total_steps):
            self.embeddings.freeze()

    def text_encoder_trains(self) -> bool:
        return not self.embeddings.frozen or self.config.train_text_encoder

    def after_optimizer_step(self) -> None:
        if not self.embeddings.frozen:
            self.embeddings.restore_original_rows()

    def expand_prompt(self, text: str) -> str:
        return self.embeddings.expand_prompt(text)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {**self.adapters.named_tensors(), **self.embeddings.named_tensors()}

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        embedding_keys = set(self.embeddings.named_tensors())
        load_named_tensors(self.adapters.named_tensors(),
                           {k: v for k, v in tensors.items() if k not in embedding_keys}, "pivotal LoRA")
        self.embeddings.load({k: v for k, v in tensors.items() if k in embedding_keys})

    def trigger_words(self) -> list[str]:
        return [self.config.output_name]

    def final_output_paths(self, paths: TrainingPaths) -> list[Path]:
        name = self.config.output_name
        return [Path(paths.lora_dir) / f"{name}.safetensors", Path(paths.embeddings_dir) / f"{name}.safetensors"]

    def save_outputs(self, request: SaveRequest) -> list[Path]:
        name = f"{self.config.output_name}{request.suffix}"
        extra = {**training_metadata(self.config, request.processes), "ss_embedding_name": name,
                 "ss_embedding_vectors": str(self.config.num_vectors)}
        lora = self.adapters.save(Path(request.paths.lora_dir) / f"{name}.safetensors", request, [name], extra)
        embedding = self.embeddings.save(Path(request.paths.embeddings_dir) / f"{name}.safetensors", request.step)
        return [lora, embedding]

    def usage_hint(self) -> str:
        name = self.config.output_name
        return f"<lora:{name}:1> {name}"
