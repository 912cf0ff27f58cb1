"""Textual inversion: learn new token vectors (`token`, `token_1`, ...) and nothing else.

The new rows are appended to each text encoder's token-embedding table and start from the init word's
embedding. Only they may change: a gradient hook zeroes every other row's gradient (so clipping and
optimizer statistics see only the new rows), and after every optimizer step the original rows are put
back from a copy, so weight decay or optimizer quirks can never move them: they stay bitwise equal.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.methods import SaveRequest, TrainerModels, TrainingMethod, load_named_tensors

if TYPE_CHECKING:
    from webui.training.loop import TrainingPaths


def _pool_at_end_of_text(encoder: nn.Module, eos_token_id: int) -> None:
    """Make CLIP pool at the end-of-text token, not at the highest token id.

    Configs with the legacy `eos_token_id == 2` (SDXL's second encoder) pool at the highest id in the
    prompt, which is a new token once tokens are added; the app's embedding injector makes the same fix
    for generation, so training and generation pool at the same position.
    """
    from transformers import CLIPTextModel

    for module in encoder.modules():
        if isinstance(module, CLIPTextModel):
            module.eos_token_id = eos_token_id


class NewTokenEmbeddings:
    """The new tokens of a TI / pivotal run, in every text encoder of the model."""

    def __init__(self, config: TrainingConfig, models: TrainerModels) -> None:
        self.config = config
        self.models = models
        self.tokens: tuple[str, ...] = config.token_strings
        self.token_ids: list[list[int]] = []          # per encoder
        self.original_rows: list[torch.Tensor] = []   # per encoder: the table before the new rows
        self.frozen = False

    def add(self) -> None:
        init_word = self.config.effective_init_word
        for tokenizer, encoder in zip(self.models.tokenizers, self.models.text_encoders):
            added = tokenizer.add_tokens(list(self.tokens))
            if added != len(self.tokens):
                raise TrainingConfigError("token", f"{self.tokens[0]!r} is already an added token of this model's tokenizer; choose another")
            ids = tokenizer.convert_tokens_to_ids(list(self.tokens))
            init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
            if not init_ids:
                raise TrainingConfigError("init_word", f"{init_word!r} gives no tokens")
            original_count = encoder.get_input_embeddings().weight.shape[0]
            if min(ids) < original_count:
                raise TrainingConfigError("token", f"the tokenizer gave {self.tokens[0]!r} an id inside the existing embedding table")
            encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                init_vectors = weight[init_ids]
                if len(init_ids) == len(ids):
                    weight[ids] = init_vectors
                else:  # one init vector per new vector is not available: all start from the word's mean
                    weight[ids] = init_vectors.mean(dim=0, keepdim=True).expand(len(ids), -1)
            _pool_at_end_of_text(encoder, tokenizer.eos_token_id)
            self.token_ids.append(ids)
            self.original_rows.append(weight[:original_count].detach().clone())
            weight.requires_grad_(True)
            weight.register_hook(self._gradient_mask(weight.shape[0], ids, weight.device, weight.dtype))

    @staticmethod
    def _gradient_mask(rows: int, ids: list[int], device: torch.device, dtype: torch.dtype):
        mask = torch.zeros(rows, 1, device=device, dtype=dtype)
        mask[ids] = 1.0
        return lambda gradient: gradient * mask

    @property
    def weights(self) -> list[nn.Parameter]:
        return [encoder.get_input_embeddings().weight for encoder in self.models.text_encoders]

    def parameter_group(self) -> dict[str, Any]:
        return {"params": self.weights, "lr": self.config.embedding_lr}

    def restore_original_rows(self) -> None:
        with torch.no_grad():
            for weight, original in zip(self.weights, self.original_rows):
                weight[: original.shape[0]] = original

    def freeze(self) -> None:
        """Stop training the vectors (pivotal tuning's second phase); optimizers skip grad-less params."""
        for weight in self.weights:
            weight.requires_grad_(False)
            weight.grad = None
        self.frozen = True

    def vectors(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """What `save_embedding` takes: [n, width], or {"clip_l", "clip_g"} for SDXL."""
        per_encoder = [weight[ids].detach().float().cpu().clone() for weight, ids in zip(self.weights, self.token_ids)]
        if len(per_encoder) == 2:
            return {"clip_l": per_encoder[0], "clip_g": per_encoder[1]}
        return per_encoder[0]

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.token_vectors": weight[ids].detach()
                for name, weight, ids in zip(self.models.text_encoder_names, self.weights, self.token_ids)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        current = {key: value.clone() for key, value in self.named_tensors().items()}
        load_named_tensors(current, tensors, "embedding")
        with torch.no_grad():
            for name, weight, ids in zip(self.models.text_encoder_names, self.weights, self.token_ids):
                weight[ids] = current[f"{name}.token_vectors"]

    def expand_prompt(self, text: str) -> str:
        """Spell the token out as all its vectors: 'tok' -> 'tok tok_1 tok_2' (case-insensitive)."""
        return re.sub(rf"(?<![\w]){re.escape(self.tokens[0])}(?![\w])", " ".join(self.tokens), text, flags=re.IGNORECASE)

    def save(self, path: Path, step: int) -> Path:
        from webui.training.export import save_embedding

        return save_embedding(path, self.vectors(), token=path.stem, step=step)


class TextualInversionMethod(TrainingMethod):
    """Only the new token vectors train; the embedding file is named after the token (A1111 uses file names)."""

    def __init__(self, config: TrainingConfig, models: TrainerModels) -> None:
        super().__init__(config, models)
        self.embeddings = NewTokenEmbeddings(config, models)

    def prepare(self) -> None:
        self.embeddings.add()

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [self.embeddings.parameter_group()]

    def text_encoder_trains(self) -> bool:
        return True

    def after_optimizer_step(self) -> None:
        self.embeddings.restore_original_rows()

    def expand_prompt(self, text: str) -> str:
        return self.embeddings.expand_prompt(text)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.embeddings.named_tensors()

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.embeddings.load(tensors)

    def final_output_paths(self, paths: TrainingPaths) -> list[Path]:
        return [Path(paths.embeddings_dir) / f"{self.config.effective_token}.safetensors"]

    def save_outputs(self, request: SaveRequest) -> list[Path]:
        path = Path(request.paths.embeddings_dir) / f"{self.config.effective_token}{request.suffix}.safetensors"
        return [self.embeddings.save(path, request.step)]

    def usage_hint(self) -> str:
        return self.config.effective_token
