"""Cheap live previews: latents -> RGB with a fixed linear map, no VAE decode.

This is A1111's "Approx cheap" idea: each RGB channel is a weighted sum of the 4 latent channels.
The coefficients are least-squares fits published for the SD1.x/SD2.x and SDXL VAEs; for other
latent spaces (the tiny default model) the picture is only indicative, which is all a preview needs.
"""

from __future__ import annotations

import torch
from PIL import Image

_SD_COEFFICIENTS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
_SDXL_COEFFICIENTS = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


def latents_to_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First latent of a batch -> a small RGB image (one pixel per latent cell)."""
    coefficients = torch.tensor(_SDXL_COEFFICIENTS if family == "sdxl" else _SD_COEFFICIENTS)
    first = latents[0].detach().float().cpu()
    if first.shape[0] != 4:
        first = first[:4] if first.shape[0] > 4 else torch.nn.functional.pad(first, (0, 0, 0, 0, 0, 4 - first.shape[0]))
    rgb = torch.einsum("chw,cr->hwr", first, coefficients)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")
