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

Transformer ControlNets: Flux.1's (diffusers' `FluxControlNetModel`: InstantX's and Shakker-Labs' releases,
union ones included, and XLabs' diffusers releases) come as diffusers folders or as their weights file alone
(`controlnet_x_embedder`, `transformer_blocks.*`, `controlnet_blocks.*`); the family whose
`transformer_controlnet` is that class owns them and fits a config to the weights when no config.json comes
with them. Files diffusers cannot read are refused with the reason: XLabs' own single files (BFL names,
`double_blocks.*` + `controlnet_blocks.*`), BFL's "FLUX.1 Canny/Depth dev" (full checkpoints that take the
control image as extra input channels, not ControlNets) and SD3 ControlNets.
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
UNET_CONTROLNET = "ControlNetModel"   # diffusers' class of UNet ControlNets (SD1.x, SD2.x, SDXL)
FLUX_CONTROLNET = "FluxControlNetModel"  # diffusers' class of Flux.1 ControlNets (controlnet_x_embedder + blocks)
BFL_PREFIX = "model.diffusion_model."   # ComfyUI's prefix of BFL-named Flux transformers
FLUX_LATENT_TOKEN_WIDTH = 64            # Flux.1's packed latent tokens: 2x2 patches of 16 channels
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
    family: str          # "sd1", "sd2", "sdxl" or "flux"
    context_width: int   # the cross-attention width it expects (the text encoder's)
    architecture: str = UNET_CONTROLNET   # the diffusers class: ControlNetModel or a family's transformer ControlNet
    union_modes: int = 0  # control modes a union ControlNet embeds (0: not a union model)


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
    if architecture_of(tensors, name) != UNET_CONTROLNET:
        return DIFFUSERS
    raise ControlNetFileError(f"{name!r} is not a ControlNet (no ControlNet tensors such as zero_convs / "
                              "controlnet_down_blocks)")


def architecture_of(tensors: Mapping[str, torch.Tensor], name: str) -> str:
    """The diffusers class a ControlNet file's tensors are for: UNet ControlNets, Flux's; transformer layouts
    that diffusers cannot load as a ControlNet are refused with the reason."""
    keys = {key[len(BFL_PREFIX):] if key.startswith(BFL_PREFIX) else key for key in tensors}
    if any(key.startswith("double_blocks.") for key in keys):
        if any(key.startswith("controlnet_blocks.") for key in keys):
            import diffusers

            raise ControlNetFileError(
                f"ControlNet {name!r} is an XLabs Flux ControlNet single file (BFL names: double_blocks + "
                f"controlnet_blocks); diffusers {diffusers.__version__} has no loader or converter for that layout "
                "(FluxControlNetModel cannot load single files), so SD Studio cannot use it: use XLabs' diffusers "
                "release of the model (a folder with config.json + diffusion_pytorch_model.safetensors, e.g. "
                "XLabs-AI/flux-controlnet-canny-diffusers) in models/ControlNet")
        in_layer = tensors.get("img_in.weight", tensors.get(BFL_PREFIX + "img_in.weight"))
        if in_layer is not None and int(in_layer.shape[1]) > FLUX_LATENT_TOKEN_WIDTH:
            raise ControlNetFileError(
                f"{name!r} is not a ControlNet: it is a full Flux.1 checkpoint that takes the control image as extra "
                f"input channels ({int(in_layer.shape[1])}-wide img_in, like BFL's FLUX.1 Canny/Depth dev); those "
                "are models of their own (diffusers' FluxControlPipeline), not ControlNets for a Flux checkpoint, "
                "and SD Studio does not run them; take it out of models/ControlNet")
        raise ControlNetFileError(f"{name!r} is not a ControlNet: it is a Flux.1 checkpoint (BFL's double_blocks "
                                  "without controlnet_blocks); put it in models/Stable-diffusion or models/unet")
    transformer = any(key.startswith(("transformer_blocks.", "single_transformer_blocks.")) for key in keys)
    if transformer and "controlnet_x_embedder.weight" in keys and any(k.startswith("controlnet_") for k in keys):
        return FLUX_CONTROLNET
    if transformer:
        raise ControlNetFileError(f"ControlNet {name!r} is an SD3 (MMDiT) ControlNet; SD Studio runs UNet ControlNets "
                                  "(SD1.x, SD2.x, SDXL) and Flux.1 ControlNets only")
    return UNET_CONTROLNET


def transformer_family_of(architecture: str) -> Any:
    """The family whose transformer ControlNets are of this diffusers class."""
    from webui.models.families import FAMILIES

    return next(family for family in FAMILIES if family.transformer_controlnet == architecture)


def context_width_of(tensors: Mapping[str, torch.Tensor]) -> int:
    """The cross-attention width the ControlNet expects (its attn2 key projection's input size; a transformer
    ControlNet's text embedder input)."""
    if "context_embedder.weight" in tensors:
        return int(tensors["context_embedder.weight"].shape[1])
    widths = {int(value.shape[1]) for key, value in tensors.items() if key.endswith("attn2.to_k.weight")}
    if len(widths) != 1:
        raise ControlNetFileError("the ControlNet's cross-attention layers are missing or disagree")
    return widths.pop()


def family_of(tensors: Mapping[str, torch.Tensor]) -> str:
    """The family whose UNet the ControlNet fits: asked of each family by its text width and whether it has
    SDXL's extra size / pooled-text conditioning."""
    from webui.models.families import FAMILIES

    architecture = architecture_of(tensors, "the ControlNet")
    if architecture != UNET_CONTROLNET:
        return transformer_family_of(architecture).name
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
    modes = tensors.get("controlnet_mode_embedder.weight")
    return ControlNetFile(name, path, layout, family_of(tensors), context_width_of(tensors),
                          architecture_of(tensors, path.name), 0 if modes is None else int(modes.shape[0]))


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
    if file.architecture != UNET_CONTROLNET:
        return build_transformer_controlnet(file, unet_config, checkpoint_name, dtype)
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


# Sizes a transformer ControlNet shares with the transformer it adds residuals to.
SHARED_TRANSFORMER_SIZES = (("inner width", lambda c: int(c["num_attention_heads"]) * int(c["attention_head_dim"])),
                            ("text width", lambda c: int(c["joint_attention_dim"])),
                            ("pooled text width", lambda c: int(c["pooled_projection_dim"])),
                            ("latent token width", lambda c: int(c["in_channels"])))


def build_transformer_controlnet(file: ControlNetFile, denoiser_config: Mapping[str, Any], checkpoint_name: str,
                                 dtype: torch.dtype) -> Any:
    """A transformer ControlNet (the family's `transformer_controlnet` class) from its folder's config.json or a
    config fitted to its weights, checked against the checkpoint's transformer: their residuals are added to
    its blocks' hidden states, so the widths must agree. Built without random initialisation (the weights are
    assigned), which matters at Flux's size."""
    import diffusers

    from webui.models.module_construction import constructing_modules

    family = transformer_family_of(file.architecture)
    tensors = read_tensors(file.path)
    config = _folder_config(file.path) or family.transformer_controlnet_config(tensors)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    if denoiser_config:
        for what, size in SHARED_TRANSFORMER_SIZES:
            try:
                ours, theirs = size(config), size(denoiser_config)
            except (KeyError, TypeError):
                continue
            if ours != theirs:
                raise ControlNetFileError(f"ControlNet {file.name!r} is made for a {family.label} transformer of "
                                          f"{what} {ours} but the checkpoint {checkpoint_name!r} has {theirs}: they "
                                          "were not made together")
    try:
        with torch.device("meta"):  # thread-local, unlike init_empty_weights; assigning registers parameters,
            model = getattr(diffusers, file.architecture).from_config(config)
        with constructing_modules():  # so that happens under the construction lock
            model.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ControlNetFileError(f"ControlNet {file.name!r} does not fit its own config ({file.architecture}: "
                                  f"{str(error).splitlines()[0][:300]})") from None
    if any(parameter.dtype != dtype for parameter in model.parameters()):
        model = model.to(dtype=dtype)
    return model.eval().requires_grad_(False)
