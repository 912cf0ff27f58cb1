"""kohya-ss LoRA naming, the one table the LoRA reader (`models/lora_formats.py`) and the training export
(`training/export.py`) share, so a LoRA this app writes is read back, and by A1111/ComfyUI, under the
same names.

kohya names a layer `<prefix><module path with dots as underscores>`: the prefix says the component
(`ModelFamily.kohya_lora_prefixes`: `lora_unet_`, `lora_te_`, SDXL's `lora_te1_`/`lora_te2_`); SD1/SD2
UNet layers keep their diffusers path, SDXL's use the original LDM module names (`input_blocks.4.1...`);
CLIP layers sit below `text_model.` whatever the installed transformers' layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from webui.models.families import FAMILIES
from webui.models.ldm_conversion import LDM_UNET_PREFIX, unet_to_ldm
from webui.models.module_construction import empty_weights

# UNet modules that have an LDM name (the rest, e.g. class embeddings, are not in SD checkpoints).
LDM_NAMED_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out",
                        "time_embedding.linear_", "add_embedding.linear_")
# CLIP module roots below "text_model." in kohya names (transformers >= 5.6 drops that level).
CLIP_TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm")
# The modules a LoRA can target.
TARGETABLE_MODULES = (nn.Linear, nn.Conv2d)


def reader_prefixes() -> tuple[tuple[str, str], ...]:
    """(kohya prefix, component) of every family, longest first so "lora_te_" never swallows "lora_te1_".
    SDXL's first text encoder is spelled "lora_te1_" and SD1's "lora_te_": both mean "text_encoder"."""
    claimed: dict[str, str] = {}
    for family in reversed(FAMILIES):  # a prefix two families share keeps the older family's meaning:
        for component, prefix in family.kohya_lora_prefixes.items():  # "lora_unet_" is the UNet (a DiT family
            claimed.setdefault(prefix, component)                     # reads its files by its lora_key_prefixes)
    return tuple(sorted(claimed.items(), key=lambda pair: (-len(pair[0]), pair[0])))


def kohya_text_path(module_path: str) -> str:
    """A text encoder's module path as kohya writes it (under "text_model.")."""
    return f"text_model.{module_path}" if module_path.startswith(CLIP_TEXT_MODEL_PARTS) else module_path


def unet_ldm_names(module_paths: Sequence[str]) -> dict[str, str]:
    """diffusers UNet module path -> LDM module name, for the paths that have one ({} for a layout the LDM
    naming cannot express). The project's tested checkpoint converter does the renaming: each path's
    weight key carries its own index, so the renamed keys are traced back whatever order it produces."""
    named = [path for path in module_paths if path.startswith(LDM_NAMED_UNET_ROOTS)]
    numbered = {f"{path}.weight": torch.tensor(position) for position, path in enumerate(named)}
    try:
        converted = unet_to_ldm(numbered)
    except (ValueError, KeyError):
        return {}
    return {named[int(position)]: key[len(LDM_UNET_PREFIX):].removesuffix(".weight")
            for key, position in converted.items() if key.startswith(LDM_UNET_PREFIX) and key.endswith(".weight")}


def targetable_module_paths(module: nn.Module) -> list[str]:
    return [path for path, child in module.named_modules() if path and isinstance(child, TARGETABLE_MODULES)]


def unet_ldm_names_for_config(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """`unet_ldm_names` for a UNet described by its config (built weightless on the meta device)."""
    from diffusers import UNet2DConditionModel

    with empty_weights():
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    return unet_ldm_names(targetable_module_paths(unet))
