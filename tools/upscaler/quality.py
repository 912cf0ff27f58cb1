"""Image quality of an upscale against the sharp render: PSNR and SSIM, and the built-in resamplers to compare.

SSIM is Wang et al. (2004) as usually computed: an 11x11 Gaussian window (sigma 1.5) over each RGB channel on
the 0..255 scale, constants (0.01 * 255)^2 and (0.03 * 255)^2, only windows that lie wholly inside the image,
averaged over pixels and channels. Written with torch because neither scikit-image nor torchvision is part of
this project.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.upscaler.toy_pairs import to_image, to_tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def psnr(result: Image.Image, truth: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over all RGB pixels (peak 255); infinite for identical images."""
    a = np.asarray(result.convert("RGB"), dtype=np.float64)
    b = np.asarray(truth.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"sizes differ: {result.size} vs {truth.size}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(result: Image.Image, truth: Image.Image) -> float:
    """Mean structural similarity over RGB channels (see the module docstring); 1.0 for identical images."""
    if result.size != truth.size:
        raise ValueError(f"sizes differ: {result.size} vs {truth.size}")
    x = to_tensor(result).double() * 255
    y = to_tensor(truth).double() * 255
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    line = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    line = line / line.sum()
    window = (line[:, None] * line[None, :]).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=3)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def resampler(method: int) -> Callable[[Image.Image, int], Image.Image]:
    """A PIL resampling filter as an upscaler by an integer factor (Lanczos, bicubic: the baselines)."""
    def upscale(image: Image.Image, scale: int) -> Image.Image:
        return image.resize((image.width * scale, image.height * scale), method)
    return upscale


LANCZOS = resampler(Image.Resampling.LANCZOS)
BICUBIC = resampler(Image.Resampling.BICUBIC)


@torch.inference_mode()
def model_upscale(model: Callable[[torch.Tensor], torch.Tensor], image: Image.Image,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Image.Image:
    """Run an image-to-image model (a spandrel descriptor or a plain module, BCHW in 0..1) on a whole image."""
    return to_image(model(to_tensor(image).to(device=device, dtype=dtype)))
