"""Tiny seeded Flux.1 ControlNets of the exact layouts people download, written as real files.

- InstantX / Shakker-Labs (`FluxControlNetModel`, control image as VAE latents), plain or union (`num_mode`
  10, as their Union releases configure it): a diffusers folder (`config.json` +
  `diffusion_pytorch_model.safetensors`, what `save_pretrained` writes) or the weights file alone under its own
  name (how ComfyUI users keep them).
- XLabs' diffusers releases: the same class with its own conditioning embedding (`input_hint_block`,
  `conditioning_embedding_channels` 16, 2x2 patches), as a folder.
- XLabs' own single files (`flux-controlnet-canny-v3.safetensors`: BFL names `double_blocks.*`, `controlnet_blocks.*`,
  `input_hint_block.*`, `pos_embed_input.*`), which diffusers cannot read.
- BFL's FLUX.1 Canny/Depth dev: a whole Flux transformer whose `img_in` takes 128 channels (image + control
  latents), BFL-named.

Every ControlNet matches the tiny Flux transformer of tests/support/flux_files.py (2 heads of 32, 32-wide text
and pooled text); its output layers (zero-initialised in training) are filled with random values so that it
really changes the picture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.support.flux_files import CLIP_WIDTH, DEV, HEAD_WIDTH, T5_WIDTH, save, transformer_to_bfl

UNION_MODES = 10   # InstantX's and Shakker-Labs' union configs embed 10 modes (7 named on their model cards)


def tiny_flux_controlnet(seed: int = 0, variant: str = DEV, union: bool = False, xlabs: bool = False,
                         double_blocks: int = 1, single_blocks: int = 1, scale: float = 1.0) -> torch.nn.Module:
    """A seeded FluxControlNetModel for the tiny Flux transformer (fewer blocks than it: the transformer spreads
    the outputs over its own blocks)."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    controlnet = FluxControlNetModel(
        patch_size=2 if xlabs else 1, in_channels=64, num_layers=double_blocks, num_single_layers=single_blocks,
        attention_head_dim=HEAD_WIDTH, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH, guidance_embeds=variant == DEV, axes_dims_rope=(4, 14, 14),
        num_mode=UNION_MODES if union else None, conditioning_embedding_channels=16 if xlabs else None)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder")):
                parameter.copy_(torch.randn_like(parameter) * 0.2 * scale)
    return controlnet.eval().requires_grad_(False)


def write_folder(folder: Path, controlnet: torch.nn.Module) -> Path:
    """A diffusers folder as the Hub releases are laid out (config.json + diffusion_pytorch_model.safetensors)."""
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def write_weights_file(path: Path, controlnet: torch.nn.Module, dtype: torch.dtype = torch.float32) -> Path:
    """The folder's weights file alone, renamed (no config.json beside it)."""
    return save(dict(controlnet.state_dict()), path, dtype)


def write_xlabs_single_file(path: Path, controlnet: torch.nn.Module) -> Path:
    """XLabs' own layout: the ControlNet's blocks in BFL names plus `controlnet_blocks.N`, `input_hint_block.N`
    (a plain Sequential's indices) and `pos_embed_input` (their name for the control embedder)."""
    state = dict(controlnet.state_dict())
    inner = controlnet.inner_dim
    state.update({"proj_out.weight": torch.zeros(64, inner), "proj_out.bias": torch.zeros(64),
                  "norm_out.linear.weight": torch.zeros(2 * inner, inner),
                  "norm_out.linear.bias": torch.zeros(2 * inner)})
    out = {key: value for key, value in transformer_to_bfl(state, prefix="").items() if not key.startswith("final_layer")}
    hint = [value for key, value in state.items() if key.startswith("input_hint_block.")]
    for index, value in enumerate(hint):
        out[f"input_hint_block.{index // 2 * 2}.{'weight' if index % 2 == 0 else 'bias'}"] = value
    for kind in ("weight", "bias"):
        out[f"pos_embed_input.{kind}"] = state[f"controlnet_x_embedder.{kind}"]
        for index in range(len(controlnet.controlnet_blocks)):
            out[f"controlnet_blocks.{index}.{kind}"] = state[f"controlnet_blocks.{index}.{kind}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in out.items()}, str(path))
    return path


def write_bfl_control_checkpoint(path: Path, seed: int = 0) -> Path:
    """A FLUX.1 Canny/Depth dev-shaped file: a whole BFL-named Flux transformer with a 128-wide `img_in`."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=128, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=HEAD_WIDTH, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True, axes_dims_rope=(4, 14, 14))
    return save(transformer_to_bfl(transformer.state_dict(), prefix=""), path)
