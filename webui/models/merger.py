"""Checkpoint merger: A1111's weighted sum and add difference of two or three checkpoints.

Weighted sum: A * (1 - M) + B * M. Add difference: A + (B - C) * M. Merging happens per diffusers
component in fp32 on the CPU; the result is written next to the other checkpoints with the recipe in
the file's metadata, so the catalog lists it at once. Checkpoints whose layout matches the shipped
SD1/SD2/SDXL configs become A1111-layout single `.safetensors` files, SD3.5 and Flux.1 checkpoints single
files in the layout of the primary model's file (`single_file_writer`: a Flux transformer-only file stays
transformer-only, an "all in one" file bundles its VAE and text encoders again); others (e.g. the toy default
model) become a diffusers folder with `.safetensors` weights, the only layout they load from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.checkpoint_files import read_key_shapes
from webui.models.checkpoint_loading import CheckpointWeights, _shape_relevant
from webui.models.default_model import TRAINING_RECORD_FILES
from webui.models.families import ModelFamily, family_named
from webui.models.ldm_conversion import LDM_UNET_FORMAT
from webui.models.model_configs import load_component_config
from webui.models.single_file_writer import file_components, single_file_state

WEIGHTED_SUM = "Weighted sum"
ADD_DIFFERENCE = "Add difference"
MERGE_METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE)
SAVE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class MergeError(ValueError):
    """A merge that cannot work (mismatched architectures, missing third model, bad name...)."""


@dataclass(frozen=True)
class MergeRecipe:
    method: str
    multiplier: float
    primary: str
    secondary: str
    tertiary: str | None
    save_dtype: str
    baked_vae: str | None

    def metadata(self, architecture: str | None = None) -> dict[str, str]:
        """The file's metadata: A1111's recipe key, and the modelspec architecture when known."""
        metadata = {"sd_merge_recipe": json.dumps(self.__dict__), "format": "pt"}
        if architecture:
            metadata["modelspec.architecture"] = architecture
        return metadata


def _check_compatible(models: list[CheckpointWeights]) -> None:
    first = models[0]
    for other in models[1:]:
        if other.layout_signature != first.layout_signature:
            raise MergeError(f"{other.record.name} ({other.architecture.label}) has another layout than "
                             f"{first.record.name} ({first.architecture.label}); only same-architecture models merge")


def merge_state_dicts(recipe: MergeRecipe, primary: CheckpointWeights, secondary: CheckpointWeights,
                      tertiary: CheckpointWeights | None) -> dict[str, dict[str, torch.Tensor]]:
    """The merged diffusers component state dicts, in fp32."""
    if recipe.method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {recipe.method!r}; valid: {', '.join(MERGE_METHODS)}")
    if recipe.method == ADD_DIFFERENCE and tertiary is None:
        raise MergeError("Add difference needs a tertiary model (C)")
    models = [m for m in (primary, secondary, tertiary) if m is not None]
    _check_compatible(models)
    m = float(recipe.multiplier)
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for component, a_dict in primary.state_dicts.items():
        out = {}
        for key, a in a_dict.items():
            if not a.is_floating_point():
                out[key] = a.clone()
                continue
            a32, b32 = a.float(), secondary.state_dicts[component][key].float()
            if recipe.method == WEIGHTED_SUM:
                out[key] = a32 * (1 - m) + b32 * m
            else:
                out[key] = a32 + (b32 - tertiary.state_dicts[component][key].float()) * m
        merged[component] = out
    return merged


def _matches_shipped_configs(weights: CheckpointWeights) -> bool:
    """Whether a single file can describe the model: transformer families' loaders fit every size to the weights
    (any SD3.5/Flux single file loads); UNet families' files are read with the shipped configs."""
    family = weights.architecture.family
    if family_named(family).single_file_denoiser != LDM_UNET_FORMAT:
        return True
    return all(_shape_relevant(config) == _shape_relevant(load_component_config(family, name))
               for name, config in weights.configs.items() if name != "unet") and all(
        _shape_relevant(weights.configs["unet"]).get(key) == value
        for key, value in _shape_relevant(load_component_config(family, "unet")).items() if key != "in_channels")


def _bundled_components(template: CheckpointWeights, recipe: MergeRecipe) -> tuple[str, ...]:
    """The components the merged single file holds: those the primary model's own file holds (a Flux
    transformer-only file's VAE and text encoders come from companion files, which the merge leaves as they
    are), and a baked-in VAE."""
    family = template.architecture.family
    if template.record.format == "diffusers":
        held = family_named(family).components
    else:
        held = file_components(family, read_key_shapes(template.record.path))
    return tuple(held) + (("vae",) if recipe.baked_vae and "vae" not in held else ())


def modelspec_architecture(weights: CheckpointWeights) -> str:
    """The modelspec id of a loaded checkpoint: its family, its variant (SD3.5 Medium/Large, Flux.1 dev/schnell)
    and its prediction type (flow, or v / epsilon from its scheduler)."""
    family: ModelFamily = family_named(weights.architecture.family)
    if family.flow_matching:
        prediction = "flow"
    else:
        prediction = "v" if weights.scheduler_config.get("prediction_type") == "v_prediction" else "epsilon"
    return family.modelspec_architecture(prediction, weights.architecture.variant)


def save_merged(recipe: MergeRecipe, merged: dict[str, dict[str, torch.Tensor]], template: CheckpointWeights,
                folder: Path, name: str) -> Path:
    """Write the merge beside the other checkpoints (atomically) and return its path."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise MergeError(f"invalid output name {name!r}: use a plain file name")
    dtype = SAVE_DTYPES[recipe.save_dtype]
    cast = {c: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()} for c, sd in merged.items()}
    if _matches_shipped_configs(template):
        target = folder / f"{name}.safetensors"
        if target.exists():
            raise MergeError(f"{target.name} already exists; choose another name")
        written = {component: cast[component] for component in _bundled_components(template, recipe) if component in cast}
        state = {k: v.contiguous() for k, v in single_file_state(written, template.architecture.family,
                                                                 template.configs).items()}
        temporary = target.with_suffix(".partial")
        save_file(state, str(temporary), metadata=recipe.metadata(modelspec_architecture(template)))
        temporary.rename(target)
        return target
    if template.record.format != "diffusers":
        raise MergeError(f"{template.record.name} is a {template.architecture.label} single file; merges of "
                         f"{template.architecture.label} can be written only from diffusers folders for now")
    target = folder / name
    if target.exists():
        raise MergeError(f"{target.name} already exists; choose another name")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".merging-") as staging:
        staged = Path(staging) / name
        shutil.copytree(template.record.path, staged,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "README.md", *TRAINING_RECORD_FILES))
        for component, state in cast.items():
            file = "model.safetensors" if component.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, str(staged / component / file),
                      metadata=recipe.metadata())
        (staged / "merge_recipe.json").write_text(json.dumps(recipe.__dict__, indent=1), encoding="utf-8")
        staged.rename(target)
    return target
