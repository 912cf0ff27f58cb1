"""Checkpoint record -> diffusers component weights -> a ready pipeline, fully offline.

Loading is split in two so the manager can hot-swap: `read_checkpoint_weights` turns any supported
file or folder into diffusers-keyed state dicts plus the configs that describe their shapes (no
modules built), and `build_pipeline` instantiates modules from those configs. Two checkpoints whose
configs are equal can share resident modules: the manager just copies the new weights in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from webui.models.catalog import CheckpointRecord
from webui.models.checkpoint_files import CheckpointReadError, read_state_dict
from webui.models.families import TXT2IMG, family_named
from webui.models.ldm_conversion import Architecture, UnsupportedCheckpointError, detect_architecture, ldm_to_diffusers
from webui.models.model_configs import config_dir, load_component_config

class CheckpointLoadError(ValueError):
    """The checkpoint cannot be turned into a pipeline; the message names the file and the reason."""


@dataclass
class CheckpointWeights:
    """Everything needed to build or refill a pipeline for one checkpoint, held in CPU memory."""

    record: CheckpointRecord
    architecture: Architecture
    configs: dict[str, dict[str, Any]]            # component -> config dict (diffusers/transformers)
    state_dicts: dict[str, dict[str, torch.Tensor]]
    tokenizer_folder: Path                         # holds tokenizer/ (and tokenizer_2/ for SDXL)
    scheduler_config: dict[str, Any]

    @property
    def layout_signature(self) -> str:
        """Equal signatures mean identical module shapes, so weights can be copied in place."""
        return json.dumps({name: _shape_relevant(config) for name, config in sorted(self.configs.items())}, sort_keys=True)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for sd in self.state_dicts.values() for t in sd.values())


def _shape_relevant(config: dict[str, Any]) -> dict[str, Any]:
    """Drop bookkeeping keys that differ between otherwise identical configs."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in {"transformers_version", "name_or_path"}}


def _component_names(family: str) -> tuple[str, ...]:
    return family_named(family).components


def read_checkpoint_weights(record: CheckpointRecord, dtype: torch.dtype) -> CheckpointWeights:
    """Read a checkpoint into CPU state dicts in `dtype`, converting the LDM single-file layout."""
    if record.error:
        raise CheckpointLoadError(f"{record.path.name} cannot be loaded: {record.error}")
    try:
        if record.format == "diffusers":
            weights = _read_diffusers_folder(record)
        else:
            weights = _read_single_file(record)
    except (CheckpointReadError, UnsupportedCheckpointError) as error:
        raise CheckpointLoadError(str(error)) from error
    except (KeyError, RuntimeError, ValueError, OSError) as error:
        raise CheckpointLoadError(f"{record.path.name} could not be converted: {error}") from error
    for component, state_dict in weights.state_dicts.items():
        weights.state_dicts[component] = {
            key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in state_dict.items()
        }
    return weights


def _read_single_file(record: CheckpointRecord) -> CheckpointWeights:
    state_dict = read_state_dict(record.path)
    architecture = detect_architecture({key: tuple(tensor.shape) for key, tensor in state_dict.items()})
    family = architecture.family
    configs = {name: load_component_config(family, name) for name in _component_names(family)}
    if architecture.unet_in_channels != configs["unet"].get("in_channels", 4):
        configs["unet"] = dict(configs["unet"], in_channels=architecture.unet_in_channels)
    state_dicts = ldm_to_diffusers(state_dict, family, configs)
    return CheckpointWeights(
        record=record,
        architecture=architecture,
        configs=configs,
        state_dicts=state_dicts,
        tokenizer_folder=config_dir(family),
        scheduler_config=single_file_scheduler_config(family, state_dict.keys()),
    )


def single_file_scheduler_config(family: str, keys: Collection[str]) -> dict[str, Any]:
    """The family's shipped scheduler config with what the file's marker keys declare (v-prediction ...)."""
    return {**load_component_config(family, "scheduler"), **family_named(family).scheduler_overrides(keys)}


def _read_component_folder(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise CheckpointReadError(f"{folder} holds no weights (.safetensors or .bin)")
    preferred = [f for f in files if ".fp16." not in f.name] or files
    state_dict: dict[str, torch.Tensor] = {}
    for file in preferred:
        state_dict.update(read_state_dict(file))
    return state_dict


def _read_diffusers_folder(record: CheckpointRecord) -> CheckpointWeights:
    from webui.models.catalog import architecture_of_diffusers_folder

    folder = record.path
    architecture = architecture_of_diffusers_folder(folder)
    configs, state_dicts = {}, {}
    for name in _component_names(architecture.family):
        config_file = folder / name / "config.json"
        try:
            configs[name] = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointReadError(f"{record.name}: cannot read {name}/config.json ({error})") from error
        state_dicts[name] = _read_component_folder(folder / name)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = (
        json.loads(scheduler_file.read_text(encoding="utf-8")) if scheduler_file.is_file()
        else load_component_config(architecture.family, "scheduler")
    )
    tokenizer_folder = folder if (folder / "tokenizer").is_dir() else config_dir(architecture.family)
    return CheckpointWeights(record, architecture, configs, state_dicts, tokenizer_folder, scheduler_config)


def _empty_module(component: str, config: dict[str, Any]) -> torch.nn.Module:
    """A module with parameters on the meta device (no memory), to be filled by `assign` loading."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        if component == "unet":
            return UNet2DConditionModel.from_config(config)
        if component == "vae":
            return AutoencoderKL.from_config(config)
        text_config = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k != "architectures"})
        if component == "text_encoder_2" or "CLIPTextModelWithProjection" in config.get("architectures", []):
            return CLIPTextModelWithProjection(text_config)
        return CLIPTextModel(text_config)


def build_module(component: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Instantiate a component and give it its own copy of the weights on `device`."""
    module = _empty_module(component, config)
    owned = {
        key: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
        for key, tensor in state_dict.items()
    }
    try:
        module.load_state_dict(owned, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointLoadError(f"{component} weights do not fit its config: {str(error)[:500]}") from error
    module.to(device=device)  # buffers that are not in the state dict
    module.eval().requires_grad_(False)
    return module


def load_tokenizers(folder: Path, family: str) -> list:
    from transformers import CLIPTokenizer

    return [CLIPTokenizer.from_pretrained(folder / name, local_files_only=True)
            for name in family_named(family).tokenizers]


def build_pipeline(weights: CheckpointWeights, device: torch.device, dtype: torch.dtype):
    """A diffusers text-to-image pipeline of the family's class for these weights."""
    import inspect

    import diffusers

    family = family_named(weights.architecture.family)
    modules: dict[str, Any] = {
        name: build_module(name, weights.configs[name], weights.state_dicts[name], device, dtype)
        for name in weights.configs
    }
    modules.update(zip(family.tokenizers, load_tokenizers(weights.tokenizer_folder, family.name)))
    modules["scheduler"] = diffusers.EulerDiscreteScheduler.from_config(weights.scheduler_config)
    pipeline_class = getattr(diffusers, family.pipeline_class_name(TXT2IMG))
    accepted = inspect.signature(pipeline_class.__init__).parameters
    # Optional components a single-file checkpoint never holds (SD's safety checker) are left out.
    options = {name: None for name in ("safety_checker", "feature_extractor", "image_encoder") if name in accepted}
    if "requires_safety_checker" in accepted:
        options["requires_safety_checker"] = False
    pipeline = pipeline_class(**modules, **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def copy_weights_into(pipeline, weights: CheckpointWeights) -> None:
    """Hot-swap: overwrite the resident modules' tensors in place (no new modules, no new GPU memory)."""
    for name, state_dict in weights.state_dicts.items():
        module: torch.nn.Module = getattr(pipeline, name)
        module.load_state_dict(state_dict, strict=True)
    if Path(pipeline.tokenizer.name_or_path).parent != weights.tokenizer_folder:
        tokenizers = load_tokenizers(weights.tokenizer_folder, weights.architecture.family)
        pipeline.tokenizer = tokenizers[0]
        if len(tokenizers) > 1:
            pipeline.tokenizer_2 = tokenizers[1]
