"""Builders for extra test checkpoints derived from the embedded default model."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def perturbed_copy(source: Path, target: Path, seed: int) -> Path:
    """Same architecture, different weights: every float tensor gets seeded noise added."""
    shutil.copytree(source, target)
    generator = torch.Generator().manual_seed(seed)
    for weights_file in target.rglob("*.safetensors"):
        tensors = load_file(weights_file)
        changed = {
            key: (value + 0.05 * torch.randn(value.shape, generator=generator, dtype=value.dtype))
            if value.is_floating_point() else value
            for key, value in tensors.items()
        }
        save_file(changed, weights_file)
    return target


def different_layout_copy(source: Path, target: Path) -> Path:
    """A model whose UNet has another shape (2 layers per block), so it cannot share modules."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(source, target)
    config = dict(UNet2DConditionModel.load_config(source / "unet"))
    config["layers_per_block"] = 2
    torch.manual_seed(7)
    unet = UNet2DConditionModel.from_config(config)
    shutil.rmtree(target / "unet")
    unet.save_pretrained(target / "unet", safe_serialization=True)
    return target


def inpainting_copy(source: Path, target: Path) -> Path:
    """The default model as a 9-channel inpainting checkpoint (like sd-v1-5-inpainting): its UNet's first
    conv takes latents + mask + masked-image latents; the extra input channels start at zero."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(source, target)
    unet = UNet2DConditionModel.from_pretrained(source / "unet")
    config = dict(unet.config)
    config["in_channels"] = 9
    widened = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    conv = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([conv, torch.zeros(conv.shape[0], 5, *conv.shape[2:], dtype=conv.dtype)], dim=1)
    widened.load_state_dict(state)
    shutil.rmtree(target / "unet")
    widened.save_pretrained(target / "unet", safe_serialization=True)
    return target


def make_paths(root: Path):
    """The app's model folders and training work folder under `root`, for training runs outside a context."""
    from webui.training.loop import TrainingPaths

    return TrainingPaths(lora_dir=root / "Lora", embeddings_dir=root / "embeddings",
                         checkpoints_dir=root / "Stable-diffusion", work_dir=root / "training")
