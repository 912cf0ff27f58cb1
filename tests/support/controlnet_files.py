"""Tiny seeded ControlNets of the exact layouts people download, written as real files.

SD1: a ControlNet of the embedded default model's UNet (its config.json), as lllyasviel's
`control_v11p_sd15_*` files lay it out (`control_model.input_blocks.*`, `zero_convs.*`,
`input_hint_block.{0,2,...,14}`, `middle_block_out.0`), as `.safetensors` or a weights-only `.pth`.
SD2: the same small UNet made SD2.x-shaped (1024-wide cross-attention from OpenCLIP ViT-H, linear
projections in the transformers, heads per block), as the lllyasviel-layout SD2.1 ControlNets
(`control_v11p_sd21_*`, thibaud's) and diffusers' SD2.1 folders lay it out.
SDXL: a ControlNet of the tiny SDXL test UNet (tests/support/sdxl_files.py) as a diffusers folder
(`config.json` + `diffusion_pytorch_model.safetensors`) or an ldm file with `label_emb`.
The ldm names are written by the project's own tested UNet LDM namer plus the ControlNet-only renames
below; the loader reads them back through diffusers' converter, so a round trip checks both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.ldm_conversion import _unet_key_to_ldm

DEFAULT_UNET_CONFIG = Path(__file__).resolve().parents[2] / "models" / "default" / "sd-studio-toy" / "unet" / "config.json"


def sd1_unet_config() -> dict:
    return {k: v for k, v in json.loads(DEFAULT_UNET_CONFIG.read_text()).items() if not k.startswith("_")}


def sd2_unet_config() -> dict:
    """The default model's small UNet with SD2.x's text conditioning: 1024-wide, linear projections, and heads
    per block (SD2's `attention_head_dim` list)."""
    return {**sd1_unet_config(), "cross_attention_dim": 1024, "use_linear_projection": True,
            "attention_head_dim": [3, 6, 9]}


def sdxl_unet_config() -> dict:
    from tests.support.sdxl_files import tiny_sdxl_modules

    return dict(tiny_sdxl_modules()["unet"].config)


def tiny_controlnet(unet_config: dict, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """A seeded ControlNet for a UNet of `unet_config`. Its zero convolutions are filled with random values
    (`scale`) instead of zeros, so that it really changes the UNet's output."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn_like(parameter) * 0.05 * scale)
    return controlnet.eval().requires_grad_(False)


_CONTROLNET_RENAMES = (("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
                       ("controlnet_cond_embedding.conv_out.", "input_hint_block.14."),
                       ("controlnet_mid_block.", "middle_block_out.0."))


def ldm_state(controlnet: torch.nn.Module, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """lllyasviel's names for the ControlNet's tensors."""
    layers = int(controlnet.config.layers_per_block)
    out = {}
    for key, value in controlnet.state_dict().items():
        if key.startswith("controlnet_cond_embedding.blocks."):
            index = int(key.split(".")[2])
            name = f"input_hint_block.{2 * (index + 1)}.{key.split('.', 3)[3]}"
        elif key.startswith("controlnet_down_blocks."):
            index = int(key.split(".")[1])
            name = f"zero_convs.{index}.0.{key.split('.', 2)[2]}"
        elif any(key.startswith(old) for old, _ in _CONTROLNET_RENAMES):
            old, new = next(pair for pair in _CONTROLNET_RENAMES if key.startswith(pair[0]))
            name = new + key[len(old):]
        else:
            name = _unet_key_to_ldm(key, layers, set())
        out[prefix + name] = value.contiguous()
    return out


def write_ldm(path: Path, controlnet: torch.nn.Module, prefix: str = "control_model.") -> Path:
    """The ControlNet as an lllyasviel-layout `.safetensors`, or `.pth` (a pickled plain state dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = ldm_state(controlnet, prefix)
    if path.suffix == ".pth":
        torch.save(state, str(path))
    else:
        save_file(state, str(path))
    return path


def write_diffusers_folder(folder: Path, controlnet: torch.nn.Module) -> Path:
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder
