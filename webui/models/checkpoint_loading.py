"""Checkpoint record -> diffusers component weights -> a ready pipeline, fully offline.

Loading is split in two so the manager can hot-swap: `read_checkpoint_weights` turns any supported
file or folder into diffusers-keyed state dicts plus the configs that describe their shapes (no
modules built), and `build_pipeline` instantiates modules from those configs. Two checkpoints whose
configs are equal can share resident modules: the manager just copies the new weights in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from webui.models.catalog import CheckpointRecord
from webui.models.checkpoint_files import (
    CheckpointReadError, dequantize_scaled_fp8, read_key_shapes, read_state_dict, upcast_float8,
)
from webui.models.companion_files import CompanionFolders, CompanionNeeds
from webui.models.families import TXT2IMG, ModelFamily, family_named
from webui.models.ldm_conversion import (
    Architecture, UnsupportedCheckpointError, detect_architecture, ldm_to_diffusers, vae_from_ldm,
)
from webui.models.model_configs import config_dir, load_component_config, load_model_index, tokenizer_class_name
from webui.models.module_construction import constructing_modules, empty_weights
from webui.models.text_encoder_files import MissingTextEncoderError, float8_note, read_separate_text_encoders
from webui.models.vae import VaeFileError, read_vae_tensors

class CheckpointLoadError(ValueError):
    """The checkpoint cannot be turned into a pipeline; the message names the file and the reason."""


@dataclass
class CheckpointWeights:
    """Everything needed to build or refill a pipeline for one checkpoint, held in CPU memory."""

    record: CheckpointRecord
    architecture: Architecture
    configs: dict[str, dict[str, Any]]            # component -> config dict (diffusers/transformers)
    state_dicts: dict[str, dict[str, torch.Tensor]]
    tokenizer_folder: Path                         # holds tokenizer/ (and tokenizer_2/ for SDXL ...)
    scheduler_config: dict[str, Any]
    notes: tuple[str, ...] = ()                    # what the user should know (e.g. an optional encoder missing)

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


def read_checkpoint_weights(record: CheckpointRecord, dtype: torch.dtype,
                            text_encoder_folder: Path | None = None,
                            vae_folder: Path | None = None) -> CheckpointWeights:
    """Read a checkpoint into CPU state dicts in `dtype`, converting the LDM single-file layout. Text encoders
    and the VAE a single file leaves out come from `text_encoder_folder` (models/text_encoder) and
    `vae_folder` (models/VAE) when its family allows."""
    if record.error:
        raise CheckpointLoadError(f"{record.path.name} cannot be loaded: {record.error}")
    folders = CompanionFolders(vae=vae_folder or record.path.parent.parent / "VAE",
                               text_encoder=text_encoder_folder or record.path.parent / "text_encoder")
    try:
        if record.format == "diffusers":
            weights = _read_diffusers_folder(record)
        else:
            weights = _read_single_file(record, folders, dtype)
    except (CheckpointReadError, UnsupportedCheckpointError, MissingTextEncoderError, VaeFileError) as error:
        raise CheckpointLoadError(str(error)) from error
    except (KeyError, RuntimeError, ValueError, OSError) as error:
        raise CheckpointLoadError(f"{record.path.name} could not be converted: {error}") from error
    for component, state_dict in weights.state_dicts.items():
        weights.state_dicts[component] = {
            key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in state_dict.items()
        }
    return weights


def _read_single_file(record: CheckpointRecord, folders: CompanionFolders, dtype: torch.dtype) -> CheckpointWeights:
    notes: list[str] = []
    state_dict = dequantize_scaled_fp8(read_state_dict(record.path))
    architecture = detect_architecture({key: tuple(tensor.shape) for key, tensor in state_dict.items()})
    family = family_named(architecture.family)
    needs = CompanionNeeds.of_keys(family, state_dict.keys())
    missing = needs.missing_message(folders, record.path.name)
    if missing:
        raise CheckpointLoadError(missing)
    state_dict, was_float8 = upcast_float8(state_dict, dtype)
    if was_float8:
        notes.append(float8_note(record.path.name, dtype))
    configs = {name: load_component_config(family.name, name) for name in family.components}
    denoiser = configs[family.denoiser]
    if architecture.unet_in_channels != denoiser.get("in_channels", 4):
        configs[family.denoiser] = dict(denoiser, in_channels=architecture.unet_in_channels)
    state_dicts = ldm_to_diffusers(state_dict, family.name, configs)
    scheduler_config = single_file_scheduler_config(family.name, state_dict.keys())  # marker keys (v_pred ...)
    del state_dict
    vae_file = needs.vae_file(folders)
    if vae_file is not None:
        state_dicts["vae"] = _separate_vae(vae_file, family, configs, dtype, notes)
    lacking = [name for name in family.text_encoders if name not in state_dicts]
    if lacking:
        separate = read_separate_text_encoders(family, lacking, folders.text_encoder, configs, record.path.name,
                                               dtype)
        state_dicts.update(separate.state_dicts)
        notes.extend(separate.notes)
    configs = _present_components(family, family.fit_configs(configs, state_dicts), state_dicts)
    return CheckpointWeights(
        record=record,
        architecture=architecture,
        configs=configs,
        state_dicts=state_dicts,
        tokenizer_folder=config_dir(family.name),
        scheduler_config=scheduler_config,
        notes=tuple(notes),
    )


def _separate_vae(path: Path, family: ModelFamily, configs: Mapping[str, dict[str, Any]], dtype: torch.dtype,
                  notes: list[str]) -> dict[str, torch.Tensor]:
    """The VAE of a checkpoint that leaves it out, from the VAE folder (Flux's ae.safetensors, BFL/LDM names
    or diffusers names), in diffusers names; its sizes are fitted with the other components'."""
    tensors, layout = read_vae_tensors(path)
    tensors, was_float8 = upcast_float8(tensors, dtype)
    if was_float8:
        notes.append(float8_note(path.name, dtype))
    if layout == "ldm":
        return vae_from_ldm({"first_stage_model." + key: value for key, value in tensors.items()}, configs)
    return tensors


def single_file_scheduler_config(family: str, keys: Collection[str]) -> dict[str, Any]:
    """The family's shipped scheduler config with what the file's marker keys declare (v-prediction ...)."""
    return {**load_component_config(family, "scheduler"), **family_named(family).scheduler_overrides(keys)}


def diffusers_scheduler_config(folder: Path, family: str) -> dict[str, Any]:
    """A diffusers folder's own scheduler config, else the family's shipped one."""
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        return json.loads(scheduler_file.read_text(encoding="utf-8"))
    return load_component_config(family, "scheduler")


def scheduler_config_of(record: CheckpointRecord) -> dict[str, Any]:
    """The scheduler config a checkpoint loads with, without reading its weights (a single file's header
    only): what the UI shows as the model's defaults (its flow shift) before it is loaded."""
    if record.architecture is None:
        raise CheckpointReadError(record.path, record.error or "not a checkpoint of a known model family")
    if record.format == "diffusers":
        return diffusers_scheduler_config(record.path, record.architecture.family)
    return single_file_scheduler_config(record.architecture.family, read_key_shapes(record.path).keys())


def _present_components(family: ModelFamily, configs: dict[str, dict[str, Any]],
                        state_dicts: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """Drop the configs of optional text encoders the checkpoint has no weights for (the pipeline gets None)."""
    return {name: config for name, config in configs.items()
            if name in state_dicts or name not in family.optional_text_encoders}


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
    family = family_named(architecture.family)
    configs, state_dicts, notes = {}, {}, []
    for name in family.components:
        if name in family.optional_text_encoders and not (folder / name).is_dir():
            notes.append(f"{record.name} has no {name}/ folder; generating without that text encoder")
            continue
        config_file = folder / name / "config.json"
        try:
            configs[name] = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointReadError(config_file, f"{record.name} lacks its {name} or its config "
                                                   f"({type(error).__name__}: {error})") from error
        state_dicts[name] = _read_component_folder(folder / name)
    scheduler_config = diffusers_scheduler_config(folder, architecture.family)
    tokenizer_folder = folder if (folder / "tokenizer").is_dir() else config_dir(architecture.family)
    return CheckpointWeights(record, architecture, configs, state_dicts, tokenizer_folder, scheduler_config,
                             tuple(notes))


def _empty_module(family: str, component: str, config: dict[str, Any]) -> torch.nn.Module:
    """A module with parameters on the meta device (no memory), to be filled by `assign` loading; its class
    is the one the family's shipped model_index.json names (a CLIP config may ask for the projection)."""
    import importlib

    library, class_name = load_model_index(family)[component]
    with empty_weights():
        if library == "diffusers":
            return getattr(importlib.import_module(library), class_name).from_config(config)
        if "CLIPTextModelWithProjection" in config.get("architectures", []):
            class_name = "CLIPTextModelWithProjection"
        model_class = getattr(importlib.import_module(library), class_name)
        settings = {key: value for key, value in config.items() if key != "architectures"}
        return model_class(model_class.config_class.from_dict(settings))


def build_module(component: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 device: torch.device, dtype: torch.dtype, family: str) -> torch.nn.Module:
    """Instantiate a component and give it its own copy of the weights on `device`. The copy is made first,
    outside the construction lock; building the weightless module and assigning the copy (both register
    parameters) happen under it (`webui.models.module_construction`)."""
    owned = {
        key: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
        for key, tensor in state_dict.items()
    }
    with constructing_modules():
        module = _empty_module(family, component, config)
        owned = with_tied_weights(module, owned)
        try:
            module.load_state_dict(owned, strict=True, assign=True)
        except RuntimeError as error:
            raise CheckpointLoadError(f"{component} weights do not fit its config: {str(error)[:500]}") from error
    module.to(device=device)  # buffers that are not in the state dict
    if dtype == torch.float16:
        _keep_in_fp32(module)
    module.eval().requires_grad_(False)
    return module


def with_tied_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill the parameters transformers ties to another (T5's `encoder.embed_tokens` is `shared`), which
    saved files store once, with the very tensor they are tied to."""
    tied = getattr(module, "_tied_weights_keys", None)
    if not isinstance(tied, Mapping):
        return state_dict
    filled = dict(state_dict)
    for target, source in tied.items():
        if target not in filled and source in filled:
            filled[target] = filled[source]
    return filled


def _keep_in_fp32(module: torch.nn.Module) -> None:
    """Modules transformers marks as overflowing in fp16 (T5's feed-forward output `wo`) stay fp32; the
    model casts activations to their dtype itself."""
    names = getattr(module, "_keep_in_fp32_modules", None) or []
    for path, parameter in module.named_parameters():
        if any(name in path.split(".") for name in names):
            parameter.data = parameter.data.float()


def load_tokenizers(folder: Path, family: str, present: set[str] | None = None) -> list:
    """The family's tokenizers from `folder`, each of the class its shipped model_index.json names; None for
    the tokenizer of a text encoder not in `present` (an optional encoder the checkpoint lacks)."""
    import transformers

    model_family = family_named(family)
    return [getattr(transformers, tokenizer_class_name(family, name)).from_pretrained(
        tokenizer_path(folder, model_family, name), local_files_only=True)
        if present is None or encoder in present else None
        for encoder, name in zip(model_family.text_encoders, model_family.tokenizers)]


def tokenizer_path(folder: Path, family: ModelFamily, tokenizer: str) -> Path:
    """One tokenizer's files: in a diffusers folder its sub-folder, in the shipped configs wherever the family
    keeps them (Flux shares SD3's CLIP-L and T5 tokenizer files)."""
    return family.shipped_tokenizer_folder(tokenizer) if folder == family.config_folder else folder / tokenizer


def build_pipeline(weights: CheckpointWeights, device: torch.device, dtype: torch.dtype):
    """A diffusers pipeline of the family's class for these weights (text-to-image, or img2img for a family
    without text-to-image)."""
    import inspect

    import diffusers

    family = family_named(weights.architecture.family)
    modules: dict[str, Any] = {
        name: build_module(name, weights.configs[name], weights.state_dicts[name], device, dtype, family.name)
        for name in weights.configs
    }
    tokenizers = load_tokenizers(weights.tokenizer_folder, family.name, set(weights.configs))
    for encoder, tokenizer_name, tokenizer in zip(family.text_encoders, family.tokenizers, tokenizers):
        # An optional encoder the checkpoint lacks (SD3's T5) is passed as None, with its tokenizer.
        modules.setdefault(encoder, None)
        modules[tokenizer_name] = tokenizer
    modules["scheduler"] = getattr(diffusers, family.scheduler_class).from_config(weights.scheduler_config)
    pipeline_class = getattr(diffusers, family.pipeline_class_name(family.resident_mode))
    accepted = inspect.signature(pipeline_class.__init__).parameters
    # Optional components a single-file checkpoint never holds (SD's safety checker) are left out, and so
    # are components the family lacks (the SDXL refiner's first text encoder and tokenizer).
    options: dict[str, Any] = {name: None for name in ("safety_checker", "feature_extractor", "image_encoder")
                               if name in accepted}
    options.update({name: None for name, parameter in accepted.items()
                    if name != "self" and name not in modules and parameter.default is inspect.Parameter.empty
                    and parameter.kind is parameter.POSITIONAL_OR_KEYWORD})
    if "requires_safety_checker" in accepted:
        options["requires_safety_checker"] = False
    options.update({name: value for name, value in family.pipeline_options.items() if name in accepted})
    pipeline = pipeline_class(**modules, **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def copy_weights_into(pipeline, weights: CheckpointWeights) -> None:
    """Hot-swap: overwrite the resident modules' tensors in place (no new modules, no new GPU memory)."""
    for name, state_dict in weights.state_dicts.items():
        module: torch.nn.Module = getattr(pipeline, name)
        module.load_state_dict(with_tied_weights(module, state_dict), strict=True)
    family = family_named(weights.architecture.family)
    if Path(pipeline.tokenizer.name_or_path) != tokenizer_path(weights.tokenizer_folder, family, family.tokenizers[0]):
        tokenizers = load_tokenizers(weights.tokenizer_folder, family.name, set(weights.configs))
        for tokenizer_name, tokenizer in zip(family.tokenizers, tokenizers):
            setattr(pipeline, tokenizer_name, tokenizer)


def meta_modules(weights: CheckpointWeights) -> dict[str, torch.nn.Module]:
    """Every component of a checkpoint built weightless on the meta device: its module names and shapes, for
    code that only matches names (the training key check), at no memory cost."""
    family = weights.architecture.family
    return {name: _empty_module(family, name, config) for name, config in weights.configs.items()}
