"""LoRA (and DreamBooth-LoRA): PEFT adapters on the denoiser's attention (the layers are the family's choice:
`ModelFamily.lora_training_targets`), optionally the text encoders and convs.

Adapters are PEFT `LoraConfig` layers injected into the trainer's copy of the model, so the forward pass
is PEFT's, not hand-written. The result is exported in the family's layout (`ModelFamily.trained_lora_layout`:
kohya's for SD1/SD2/SDXL, what A1111, ComfyUI and Civitai load; diffusers' PEFT keys for SD3) from each
adapter's A (down) and B (up) matrices and its alpha (and a DoRA layer's magnitude: kohya `dora_scale`, diffusers
`lora_magnitude_vector`); PEFT's scale alpha / rank is the same as kohya's and diffusers', so the file reproduces
exactly what was trained.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from webui.training.config import LYCORIS_NETWORK_TYPES, TrainingConfig, TrainingConfigError
from webui.training.methods import SaveRequest, TrainerModels, TrainingMethod, load_named_tensors

if TYPE_CHECKING:
    from webui.training.loop import TrainingPaths

ADAPTER_NAME = "default"
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# 3x3 convolutions kohya's LoCon trains with conv_dim: ResNet convs and the down/upsamplers.
_CONV_PARENTS = re.compile(r"(^|\.)(resnets\.\d+\.(conv1|conv2)|downsamplers\.\d+\.conv|upsamplers\.\d+\.conv)$")


def unet_conv_names(unet: nn.Module) -> list[str]:
    """Full paths of the 3x3 convolutions LoCon adapts (conv_rank > 0)."""
    return [name for name, module in unet.named_modules()
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1) and _CONV_PARENTS.search(name)]


def text_encoder_target_names(text_encoder: nn.Module) -> list[str]:
    return [name for name, module in text_encoder.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TEXT_ENCODER_TARGETS]


def inject_lora(module: nn.Module, targets: list[str], rank: int, alpha: float,
                conv_targets: list[str] = (), conv_rank: int = 0, conv_alpha: float = 0.0,
                network_type: str = "lora") -> None:
    """Add one PEFT adapter (LoRA, LoHa, LoKr or DoRA) to exactly the named layers; each starts as no change
    (LoRA's B, LoHa's second w1/w2 factor and LoKr's w2 start at zero; DoRA's magnitude starts as the weight's
    own norm per output channel)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

    all_targets = list(targets) + list(conv_targets)
    patterns = {"rank_pattern": {re.escape(name): conv_rank for name in conv_targets},
                "alpha_pattern": {re.escape(name): conv_alpha for name in conv_targets}}
    if network_type == "loha":
        config = LoHaConfig(r=rank, alpha=alpha, target_modules=all_targets, init_weights=True, **patterns)
    elif network_type == "lokr":
        config = LoKrConfig(r=rank, alpha=alpha, target_modules=all_targets, init_weights=True, **patterns)
    else:
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                            target_modules=all_targets, use_dora=network_type == "dora", **patterns)
    inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)


_ADAPTER_PARAMETER = re.compile(r"\.(lora_|hada_|lokr_)")


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters by name (only these train): LoRA's lora_A/B (and DoRA's lora_magnitude_vector),
    LoHa's hada_*, LoKr's lokr_*."""
    return {name: parameter for name, parameter in module.named_parameters() if _ADAPTER_PARAMETER.search(name)}


def exported_layers(component: str, module: nn.Module) -> dict[str, Any]:
    """`LoraLayerWeights` (with DoRA's magnitude when the layer has one; `LycorisLayerWeights` for LoHa / LoKr)
    per adapted layer, keyed `<component>.<module path>` for the writers."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from webui.training.export import LoraLayerWeights
    from webui.training.export_lycoris import LycorisLayerWeights

    layers: dict[str, Any] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
            magnitude = layer.lora_magnitude_vector[ADAPTER_NAME].weight if layer.use_dora.get(ADAPTER_NAME) else None
            layers[f"{component}.{name}"] = LoraLayerWeights(
                down=layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu().clone(),
                up=layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu().clone(),
                alpha=float(layer.lora_alpha[ADAPTER_NAME]),
                magnitude=None if magnitude is None else magnitude.detach().float().cpu().clone(),
            )
        elif isinstance(layer, (LoHaLayer, LoKrLayer)) and ADAPTER_NAME in layer.r:
            tensors = {role: getattr(layer, role)[ADAPTER_NAME].detach().float().cpu().clone()
                       for role in layer.adapter_layer_names if ADAPTER_NAME in getattr(layer, role)}
            layers[f"{component}.{name}"] = LycorisLayerWeights(
                algo="loha" if isinstance(layer, LoHaLayer) else "lokr", tensors=tensors,
                rank=int(layer.r[ADAPTER_NAME]), alpha=float(layer.alpha[ADAPTER_NAME]))
    return layers


class LoraAdapters:
    """The LoRA part of a run: which modules get adapters, their parameters, their export."""

    def __init__(self, config: TrainingConfig, models: TrainerModels) -> None:
        self.config = config
        self.models = models
        self.components: dict[str, nn.Module] = {}

    def inject(self) -> None:
        config, denoiser, family = self.config, self.models.denoiser, self.models.model_family
        targets = family.lora_training_targets(denoiser, tuple(config.target_modules))
        convs = unet_conv_names(denoiser) if config.conv_rank > 0 else []
        if not targets:
            raise TrainingConfigError("target_modules", f"no {family.denoiser} layer matches "
                                                        f"{list(config.target_modules)}")
        inject_lora(denoiser, targets, config.rank, config.alpha, convs, config.conv_rank, config.conv_alpha,
                    config.network_type)
        self.components[family.denoiser] = denoiser
        if config.train_text_encoder:
            for name, encoder in zip(self.models.text_encoder_names, self.models.text_encoders):
                encoder_targets = text_encoder_target_names(encoder)
                if encoder_targets:  # CLIP encoders; T5 (SD3's third) names its projections q/k/v/o and stays frozen
                    inject_lora(encoder, encoder_targets, config.rank, config.alpha, network_type=config.network_type)
                    self.components[name] = encoder

    def parameter_groups(self) -> list[dict[str, Any]]:
        from webui.training.optim import block_weighted_groups

        denoiser = self.models.model_family.denoiser
        groups = block_weighted_groups(lora_parameters(self.components[denoiser]), self.config.unet_lr,
                                       self.config.block_lr_weights)
        text_parameters = [p for name, module in self.components.items() if name != denoiser
                           for p in lora_parameters(module).values()]
        if text_parameters:
            groups.append({"params": text_parameters, "lr": self.config.text_encoder_lr})
        return groups

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{component}.{name}": parameter for component, module in self.components.items()
                for name, parameter in lora_parameters(module).items()}

    def layers(self) -> dict[str, Any]:
        layers = {}
        for component, module in self.components.items():
            layers.update(exported_layers(component, module))
        return layers

    def save(self, path: Path, request: SaveRequest, trigger_words: list[str], extra: dict[str, str]) -> Path:
        from webui.training.export import lora_metadata, save_trained_lora

        config, models = self.config, self.models
        metadata = lora_metadata(
            name=path.stem, trigger_words=trigger_words, base_model_name=models.base_name,
            base_model_hash=models.base_hash, family=models.family, resolution=config.resolution,
            steps=request.step, epochs=request.epoch, rank=config.rank, alpha=config.alpha,
            tag_frequency=request.summary.tag_frequency, extra=extra,
            variant=models.model_family.variant_of_denoiser_config(models.denoiser_config or {}),
            layout=config.lora_file_layout,
        )
        layers = self.layers()
        if config.network_type in LYCORIS_NETWORK_TYPES:  # LyCORIS tensors under kohya names (`check_family`)
            from webui.training.export_lycoris import save_lycoris_lora

            return save_lycoris_lora(path, layers, metadata, models.family, unet_config=models.denoiser_config)
        return save_trained_lora(path, layers, metadata, models.family, denoiser_config=models.denoiser_config,
                                 layout=config.lora_file_layout)


def training_metadata(config: TrainingConfig, processes: int = 1) -> dict[str, str]:
    """Hyperparameters as kohya's ss_* keys (what Civitai and A1111's metadata viewer show); `processes` is
    how many training processes (GPUs) shared each step, so the effective batch can be read back."""
    return {
        "ss_training_method": config.method,
        "ss_learning_rate": str(config.unet_lr),
        "ss_unet_lr": str(config.unet_lr),
        "ss_text_encoder_lr": str(config.text_encoder_lr if config.train_text_encoder else 0),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": config.optimizer,
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_num_processes": str(processes),
        "ss_total_batch_size": str(config.train_batch_size * processes * config.gradient_accumulation_steps),
        "ss_clip_skip": str(config.clip_skip),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_noise_offset": str(config.noise_offset),
        "ss_seed": str(config.seed),
        "ss_mixed_precision": config.mixed_precision,
        "ss_enable_bucket": str(config.enable_bucketing),
        "ss_flip_aug": str(config.flip_augment),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_caption_dropout_rate": str(config.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": str(config.caption_tag_dropout_rate),
        "ss_masked_loss": str(config.masked_loss),
        "ss_prior_loss_weight": str(config.prior_loss_weight if config.uses_prior_preservation else 0),
        "ss_network_args": json.dumps(network_args(config)),
        **({"ss_network_module": "lycoris.kohya"} if config.network_type != "lora" else {}),  # LyCORIS has DoRA
    }


def network_args(config: TrainingConfig) -> dict[str, str]:
    """kohya's network_args as it records them (string values): LoCon's conv settings, block lr weights; LyCORIS's
    algo (a DoRA is its `lora` with `dora_wd`, the magnitude per output channel: `wd_on_output`)."""
    args = {} if config.network_type == "lora" else {"algo": config.network_type}
    if config.network_type == "dora":
        args = {"algo": "lora", "dora_wd": "True", "wd_on_output": "True"}
    if config.conv_rank:
        args.update(conv_dim=str(config.conv_rank), conv_alpha=str(config.conv_alpha))
    if config.uses_block_lr_weights:
        args.update(down_lr_weight=str(config.down_lr_weight), mid_lr_weight=str(config.mid_lr_weight),
                    up_lr_weight=str(config.up_lr_weight))
    return args


class LoraMethod(TrainingMethod):
    """LoRA; with prior preservation (always for `dreambooth_lora`) it is DreamBooth-LoRA."""

    def __init__(self, config: TrainingConfig, models: TrainerModels) -> None:
        super().__init__(config, models)
        self.adapters = LoraAdapters(config, models)

    def prepare(self) -> None:
        self.adapters.inject()

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.adapters.parameter_groups()

    def text_encoder_trains(self) -> bool:
        return self.config.train_text_encoder

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.adapters.named_tensors()

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        load_named_tensors(self.adapters.named_tensors(), tensors, "LoRA")

    def final_output_paths(self, paths: TrainingPaths) -> list[Path]:
        return [Path(paths.lora_dir) / f"{self.config.output_name}.safetensors"]

    def save_outputs(self, request: SaveRequest) -> list[Path]:
        path = Path(request.paths.lora_dir) / f"{self.config.output_name}{request.suffix}.safetensors"
        return [self.adapters.save(path, request, self.trigger_words(), training_metadata(self.config, request.processes))]

    def usage_hint(self) -> str:
        words = ", ".join(self.trigger_words())
        return f"<lora:{self.config.output_name}:1>" + (f" {words}" if words else "")
