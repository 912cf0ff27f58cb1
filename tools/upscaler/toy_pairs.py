"""Training and held-out image pairs for the toy 2x upscaler: a toy-world render and its softened half-size copy.

A generated picture that gets upscaled is soft rather than aliased: the low-resolution input is made the way
such pictures look, by an area (box) downscale of the sharp render, before which the render may be slightly
blurred, and after which a little Gaussian noise may be added; pixels are then rounded to 8 bits like a PNG.
One function (`soften_and_halve`) does this for training crops and for whole held-out images, so the model is
measured on exactly the degradation it was trained for.

Scenes are numbered: scene ``i`` is drawn from a generator seeded with ``i`` and rendered with seed ``i``.
Training uses indices from 0, validation (watched while training) from `VALIDATION_START`, the benchmark and
the tests from `TEST_START`; the ranges never meet, so held-out renders are never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdstudio_eval import toy_world

SCALE = 2
VALIDATION_START = 500_000
TEST_START = 1_000_000
SCENE_SALT = 0x2A5C  # keeps these scenes apart from the toy model's own dataset draws
BLUR_KERNEL_RADIUS = 3  # 7x7 Gaussian: enough for sigma up to about 1.2 high-resolution pixels


@dataclass(frozen=True)
class Softening:
    """How one low-resolution input is made: Gaussian blur of the render (sigma in high-resolution pixels,
    0 = none), then area downscale by 2, then Gaussian noise (sigma on the 0..1 scale, 0 = none)."""

    blur_sigma: float = 0.0
    noise_sigma: float = 0.0


# The two fixed conditions the benchmark and the tests report: a plain area downscale, and a soft one.
AREA = Softening()
SOFT = Softening(blur_sigma=0.8, noise_sigma=2.0 / 255.0)


def scene_render(index: int, size: int) -> Image.Image:
    """Toy-world scene number ``index`` (held-out shapes and textures included: to an upscaler they are just
    more edges) rendered at ``size`` pixels."""
    scene = toy_world.random_scene(np.random.default_rng([index, SCENE_SALT]), include_held_out=True)
    return toy_world.render(scene, size, seed=index)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a 1x3xHxW float tensor in 0..1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A 1x3xHxW (or 3xHxW) tensor in 0..1 as an 8-bit RGB PIL image (clamped, rounded)."""
    pixels = tensor.detach().float().squeeze(0).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels)


def gaussian_kernels(sigmas: torch.Tensor) -> torch.Tensor:
    """One normalised 2-D Gaussian per sigma, Bx1xKxK; a sigma of 0 gives the identity kernel."""
    offsets = torch.arange(-BLUR_KERNEL_RADIUS, BLUR_KERNEL_RADIUS + 1, dtype=torch.float32, device=sigmas.device)
    safe = sigmas.clamp_min(1e-3).unsqueeze(1)
    line = torch.exp(-(offsets.unsqueeze(0) ** 2) / (2 * safe**2))
    line = line / line.sum(dim=1, keepdim=True)
    kernels = line.unsqueeze(2) * line.unsqueeze(1)
    return kernels.unsqueeze(1)


def soften_and_halve(high: torch.Tensor, blur_sigmas: torch.Tensor, noise_sigmas: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The low-resolution inputs for a batch of sharp renders (Bx3xHxW in 0..1, H and W even), one softening
    per image (``blur_sigmas`` and ``noise_sigmas`` of length B), rounded to 8-bit levels."""
    batch, channels, height, width = high.shape
    kernels = gaussian_kernels(blur_sigmas.to(high.device)).repeat_interleave(channels, dim=0)
    padded = F.pad(high.reshape(1, batch * channels, height, width), [BLUR_KERNEL_RADIUS] * 4, mode="reflect")
    blurred = F.conv2d(padded, kernels, groups=batch * channels).reshape(batch, channels, height, width)
    low = F.avg_pool2d(blurred, SCALE)
    noise = torch.randn(low.shape, generator=generator, device=low.device if generator is None else generator.device)
    low = low + noise.to(low.device) * noise_sigmas.to(low.device).view(-1, 1, 1, 1)
    return low.clamp(0, 1).mul(255).round().div(255)


def held_out_pair(index: int, size: int, softening: Softening) -> tuple[Image.Image, Image.Image]:
    """(low-resolution input, sharp ground truth) for held-out scene ``TEST_START + index``; deterministic."""
    return pair(TEST_START + index, size, softening)


def pair(scene_index: int, size: int, softening: Softening) -> tuple[Image.Image, Image.Image]:
    """(low-resolution input, sharp render) for any scene number, the noise seeded by the scene number."""
    high = scene_render(scene_index, size)
    generator = torch.Generator().manual_seed(scene_index)
    low = soften_and_halve(to_tensor(high), torch.tensor([softening.blur_sigma]),
                           torch.tensor([softening.noise_sigma]), generator)
    return to_image(low), high
