"""ControlNet model files: reading them safely, telling their layout and family, building the module.

Why one module: ControlNets arrive in three shapes people actually download — lllyasviel's original
("ldm") layout (`control_v11p_sd15_canny.pth` / `.safetensors`, keys `input_blocks.*`, `zero_convs.*`,
`input_hint_block.*`, with or without a `control_model.` prefix), diffusers' layout as a single file
(`diffusers_xl_canny_full.safetensors`) and diffusers folders (`config.json` +
`diffusion_pytorch_model.safetensors`). Each is turned into a diffusers `ControlNetModel` here, the ldm
layout through diffusers' own single-file converter (`convert_controlnet_checkpoint`, wrapped in
`ldm_to_diffusers`, the only caller). Pickled files (`.pth`, `.pt`, `.ckpt`) are read with
`torch.load(weights_only=True)` only, so a file cannot run code.

The family (SD1.x, SD2.x, SDXL) comes from the tensors: SDXL ControlNets carry the size/text-embedding
conditioning (`label_emb` / `add_embedding`), SD2.x ones a 1024-wide cross-attention, the rest are SD1.x.
A file whose architecture does not fit the checkpoint's UNet is refused naming both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SAFETENSORS = ".safetensors"
PICKLED = (".pth", ".pt", ".ckpt")
SUFFIXES = (SAFETENSORS, *PICKLED)
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
LDM_PREFIX = "control_model."
LDM, DIFFUSERS = "ldm", "diffusers"
# UNet config keys a ControlNet shares with the UNet it was made from (diffusers' ControlNetModel.from_unet).
SHARED_UNET_KEYS = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
                    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor",
                    "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
                    "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim", "num_attention_heads",
                    "use_linear_projection", "class_embed_type", "addition_embed_type", "addition_time_embed_dim",
                    "projection_class_embeddings_input_dim", "num_class_embeds", "upcast_attention",
                    "resnet_time_scale_shift", "mid_block_type")


class ControlNetFileError(ValueError):
    """A ControlNet file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ControlNetFile:
    """One ControlNet on disk as the folder scan found it."""

    name: str            # the file or folder name without its suffix: what users pick
    path: Path
    layout: str          # "ldm" or "diffusers"
    family: str          # "sd1", "sd2" or "sdxl"
    context_width: int   # the cross-attention width it expects (the text encoder's)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors: safetensors directly, pickled files through weights-only loading (no code runs);
    a diffusers folder's weights file."""
    if path.is_dir():
        weights = path / DIFFUSERS_WEIGHTS
        if not weights.is_file():
            raise ControlNetFileError(f"ControlNet folder {path.name!r} has no {DIFFUSERS_WEIGHTS}")
        path = weights
    try:
        if path.suffix == SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix in PICKLED:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise ControlNetFileError(f"ControlNet {path.name!r} does not hold a plain dict of tensors")
            return loaded
    except ControlNetFileError:
        raise
    except Exception as error:  # a truncated file, a pickle that needs code: refused, never executed
        raise ControlNetFileError(f"ControlNet {path.name!r} cannot be read ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})") from None
    raise ControlNetFileError(f"ControlNet {path.name!r}: unsupported file type (use {', '.join(SUFFIXES)})")


def _folder_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ControlNetFileError(f"ControlNet folder {path.name!r}: config.json cannot be read ({error})") from None


def layout_of(tensors: Mapping[str, torch.Tensor], name: str) -> str:
    """"ldm" or "diffusers"; control-lora and anything else is refused with the reason."""
    keys = list(tensors)
    if "lora_controlnet" in tensors or any(key.endswith((".up", ".down")) or ".lora_" in key for key in keys):
        raise ControlNetFileError(
            f"ControlNet {name!r} is a control-lora (ControlNet-LoRA) file: diffusers cannot load control-lora "
            "files, so SD Studio cannot use it; use a full ControlNet of the same kind")
    stripped = [key[len(LDM_PREFIX):] if key.startswith(LDM_PREFIX) else key for key in keys]
    if any(key.startswith("zero_convs.") for key in stripped) and any(k.startswith("input_hint_block.") for k in stripped):
        return LDM
    if any(key.startswith("controlnet_cond_embedding.") for key in keys) and any(
            key.startswith("controlnet_down_blocks.") for key in keys):
        return DIFFUSERS
    if any(key.startswith(("transformer_blocks.", "single_transformer_blocks.", "double_blocks.")) for key in keys):
        raise ControlNetFileError(f"ControlNet {name!r} is a transformer (SD3/Flux) ControlNet; only UNet "
                                  "ControlNets (SD1.x, SD2.x, SDXL) are supported")
    raise ControlNetFileError(f"{name!r} is not a ControlNet (no ControlNet tensors such as zero_convs / "
                              "controlnet_down_blocks)")


def context_width_of(tensors: Mapping[str, torch.Tensor]) -> int:
    """The cross-attention width the ControlNet expects (its attn2 key projection's input size)."""
    widths = {int(value.shape[1]) for key, value in tensors.items() if key.endswith("attn2.to_k.weight")}
    if len(widths) != 1:
        raise ControlNetFileError("the ControlNet's cross-attention layers are missing or disagree")
    return widths.pop()


def family_of(tensors: Mapping[str, torch.Tensor]) -> str:
    """The family whose UNet the ControlNet fits: asked of each family by its text width and whether it has
    SDXL's extra size / pooled-text conditioning."""
    from webui.models.families import FAMILIES

    added = any(".label_emb." in f".{key}" or key.startswith("add_embedding.") for key in tensors)
    width = context_width_of(tensors)
    for family in FAMILIES:
        if family.takes_controlnet(width, added):
            return family.name
    raise ControlNetFileError(f"no model family takes a ControlNet with {width}-wide text conditioning")


def inspect_file(path: Path) -> ControlNetFile:
    """Layout and family of a ControlNet file or folder (reads its tensors once)."""
    tensors = read_tensors(path)
    layout = layout_of(tensors, path.name)
    name = path.name if path.is_dir() else path.stem
    return ControlNetFile(name, path, layout, family_of(tensors), context_width_of(tensors))


def ldm_to_diffusers(tensors: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """lllyasviel's layout in diffusers' names, through diffusers' single-file converter. The converter
    leaves out SDXL's size/pooled-text embedding (`label_emb`), which is added here from diffusers' own
    name table."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

    plain = {key[len(LDM_PREFIX):] if key.startswith(LDM_PREFIX) else key: value for key, value in tensors.items()}
    converted = convert_controlnet_checkpoint(plain, {"layers_per_block": layers_per_block})
    for diffusers_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        if ldm_key in plain:
            converted[diffusers_key] = plain[ldm_key]
    return {key: value for key, value in converted.items() if value is not None}


def conditioning_channels_of(tensors: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """The conditioning embedding's widths (diffusers' `conditioning_embedding_out_channels`)."""
    first = tensors["controlnet_cond_embedding.conv_in.weight"].shape[0]
    blocks = sorted(int(key.split(".")[2]) for key in tensors
                    if key.startswith("controlnet_cond_embedding.blocks.") and key.endswith(".weight"))
    return (int(first), *(int(tensors[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0])
                          for i in blocks if i % 2 == 1))


def controlnet_config(tensors: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A ControlNet config for diffusers-named tensors without a config.json: the UNet's shared settings
    (heads, blocks, widths) and the conditioning embedding's widths read from the tensors."""
    config = {key: unet_config[key] for key in SHARED_UNET_KEYS if key in unet_config}
    config["conditioning_embedding_out_channels"] = conditioning_channels_of(tensors)
    config["conditioning_channels"] = int(tensors["controlnet_cond_embedding.conv_in.weight"].shape[1])
    return config


def build_controlnet(file: ControlNetFile, family: str, unet_config: Mapping[str, Any], checkpoint_name: str,
                     dtype: torch.dtype) -> Any:
    """The diffusers ControlNetModel of `file` for a checkpoint of `family` whose UNet has `unet_config`;
    ControlNetFileError naming both when they do not fit."""
    from diffusers import ControlNetModel

    from webui.models.families import family_named
    from webui.models.module_construction import constructing_modules, empty_weights

    if file.family != family:
        raise ControlNetFileError(f"ControlNet {file.name!r} is for {family_named(file.family).label} but the "
                                  f"checkpoint {checkpoint_name!r} is {family_named(family).label}")
    width = unet_config.get("cross_attention_dim")
    if width is not None and int(width) != file.context_width:
        raise ControlNetFileError(f"ControlNet {file.name!r} expects {file.context_width}-wide text conditioning but "
                                  f"the checkpoint {checkpoint_name!r} gives {width}-wide: they were not made together")
    tensors = read_tensors(file.path)
    if file.layout == LDM:
        tensors = ldm_to_diffusers(tensors, int(unet_config.get("layers_per_block", 2)))
    config = _folder_config(file.path) or controlnet_config(tensors, unet_config)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    try:
        # Built weightless and given the file's tensors (no random initialisation to throw away), under the
        # construction lock: a checkpoint loading on another worker cannot empty it meanwhile.
        with constructing_modules():
            with empty_weights():
                model = ControlNetModel.from_config(config)
            model.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ControlNetFileError(f"ControlNet {file.name!r} does not fit the checkpoint {checkpoint_name!r}'s UNet "
                                  f"({str(error).splitlines()[0][:300]})") from None
    return model.to(dtype=dtype).eval().requires_grad_(False)
