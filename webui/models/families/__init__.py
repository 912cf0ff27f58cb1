"""The model families SD Studio knows, each in its own file, and the lookups the rest of the app uses.

`FAMILIES` is in detection order: the most specific family first (Flux.1's double/single-stream blocks, SD3's
MMDiT, then the SDXL refiner's lone bigG, whose diffusers folder SDXL would also claim, SDXL's two text encoders
before SD2's OpenCLIP before SD1's CLIP, which is the fallback for diffusers folders)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.models.families.base import IMG2IMG, INPAINT, TXT2IMG, ModelFamily
from webui.models.families.flux import Flux1
from webui.models.families.sd1 import StableDiffusion1
from webui.models.families.sd2 import StableDiffusion2
from webui.models.families.sd3 import StableDiffusion3
from webui.models.families.sdxl import StableDiffusionXL
from webui.models.families.sdxl_refiner import StableDiffusionXLRefiner

SD1, SD2, SDXL, SD3 = StableDiffusion1(), StableDiffusion2(), StableDiffusionXL(), StableDiffusion3()
FLUX = Flux1()
SDXL_REFINER = StableDiffusionXLRefiner()
FAMILIES: tuple[ModelFamily, ...] = (FLUX, SD3, SDXL_REFINER, SDXL, SD2, SD1)
DEFAULT_FAMILY = SD1  # what a checkpoint that cannot be read yet is assumed to be (A1111 assumes SD1 too)

__all__ = ["FAMILIES", "DEFAULT_FAMILY", "ModelFamily", "family_named", "family_names", "family_of_ldm_keys",
           "family_of_diffusers", "family_of_lora_metadata", "families_of_lora_names", "denoiser_folders", "TXT2IMG", "IMG2IMG", "INPAINT"]


def family_names() -> tuple[str, ...]:
    return tuple(family.name for family in FAMILIES)


def family_named(name: str) -> ModelFamily:
    """The family with this id; ValueError naming the known ones otherwise."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(family_names())}")


def family_of_ldm_keys(keys: list[str]) -> ModelFamily | None:
    """The family of a single-file checkpoint from its tensor names, None when no text encoder is recognised."""
    return next((family for family in FAMILIES if family.matches_ldm_keys(keys)), None)


def denoiser_folders() -> tuple[str, ...]:
    """The sub-folders a diffusers model keeps its denoiser in ("transformer", "unet"), in detection order."""
    return tuple(dict.fromkeys(family.denoiser for family in FAMILIES))


def family_of_diffusers(unet_config: Mapping[str, Any], component_folders: set[str]) -> ModelFamily:
    """The family of a diffusers folder from its denoiser's config and its component sub-folders."""
    return next(family for family in FAMILIES if family.matches_diffusers(unet_config, component_folders))


def family_of_lora_metadata(base_model_version: str, architecture: str) -> ModelFamily | None:
    """The family a LoRA's training metadata names, if it names one of ours."""
    return next((family for family in FAMILIES if family.matches_lora_metadata(base_model_version, architecture)), None)


def families_of_lora_names(layer_names: list[str]) -> list[ModelFamily]:
    """The families whose own module names (`ModelFamily.lora_key_markers`) a LoRA file's layers use."""
    return [family for family in FAMILIES
            if family.lora_key_markers and any(marker in name for name in layer_names for marker in family.lora_key_markers)]
