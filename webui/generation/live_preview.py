"""Cheap live previews: latents -> RGB with a fixed linear map, no VAE decode.

This is A1111's "Approx cheap" idea: each RGB channel is a weighted sum of the latent channels (4 for SD1/SDXL,
16 for SD3), with the family's published least-squares coefficients (`ModelFamily.preview_coefficients`); for
other latent spaces (the tiny default model) the picture is only indicative, which is all a preview needs.
Families with packed latents (Flux) unpack them first (`ModelFamily.vae_latents`, in the step callback). There
is no TAESD decoder here, for any family.
"""

from __future__ import annotations

import torch
from PIL import Image

from webui.models.families import family_named


def latents_to_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First latent of a batch -> a small RGB image (one pixel per latent cell)."""
    coefficients = torch.tensor(family_named(family).preview_coefficients)
    first = latents[0].detach().float().cpu()
    channels = coefficients.shape[0]
    if first.shape[0] != channels:
        first = (first[:channels] if first.shape[0] > channels
                 else torch.nn.functional.pad(first, (0, 0, 0, 0, 0, channels - first.shape[0])))
    rgb = torch.einsum("chw,cr->hwr", first, coefficients)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")
