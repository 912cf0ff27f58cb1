"""One ControlNet unit's residuals for one UNet call: the semantics users know from sd-webui-controlnet.

Why here (the engine) and not in the extension: the arithmetic on the UNet's inputs (control image at the
sample's size, SDXL's extra conditioning, classifier-free-guidance halves) must follow the pipeline's own
conventions, which only the engine knows; the extension decides which units run with which values.

- Weight: the residuals are scaled by it; a unit of weight 0 adds nothing (callers then skip it, so an
  image with a weight-0 unit is bitwise the image without it).
- Starting/ending control step: the unit acts on the steps whose position in the pass, step / steps,
  lies within [start, end] (both ends included, as sd-webui-controlnet counts).
- Control mode: "Balanced" adds the residuals to both halves of the guided batch; "My prompt is more
  important" scales the 13 (or n) residuals down from the deepest one by 0.825 per level (the published
  soft-injection factors); "ControlNet is more important" uses those factors too but only on the
  conditional half, so guidance pushes towards the control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

BALANCED = "Balanced"
PROMPT_MORE_IMPORTANT = "My prompt is more important"
CONTROL_MORE_IMPORTANT = "ControlNet is more important"
CONTROL_MODES = (BALANCED, PROMPT_MORE_IMPORTANT, CONTROL_MORE_IMPORTANT)
SOFT_INJECTION = 0.825


def in_window(step: int, steps: int, start: float, end: float) -> bool:
    """Whether the unit acts on this step of the pass."""
    position = step / steps if steps > 0 else 0.0
    return start <= position <= end


def level_scales(count: int, weight: float, mode: str) -> list[float]:
    """The factor of each residual (down residuals first, the mid one last)."""
    if mode not in CONTROL_MODES:
        raise ValueError(f"control mode {mode!r} is unknown; use one of {', '.join(CONTROL_MODES)}")
    if mode == BALANCED:
        return [weight] * count
    return [weight * SOFT_INJECTION ** float(count - 1 - index) for index in range(count)]


def control_image_size(controlnet: Any, sample: torch.Tensor) -> tuple[int, int]:
    """(height, width) of the control image the ControlNet takes for this latent sample: its conditioning
    embedding halves the size once per stage after the first."""
    factor = 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)
    return int(sample.shape[-2]) * factor, int(sample.shape[-1]) * factor


def fitted_control(image: torch.Tensor, size: tuple[int, int], batch: int, like: torch.Tensor) -> torch.Tensor:
    """The control image (1 or `batch` x 3 x H x W, values in [0, 1]; -1 marks masked pixels for inpaint
    ControlNets) at `size`, batched, on the sample's
    device and dtype (a hires pass asks for a larger size than the first pass)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"a control image must be N x 3 x H x W, got {tuple(image.shape)}")
    image = image.to(device=like.device, dtype=torch.float32)
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)
    if image.shape[0] != batch:
        image = image[:1].expand(batch, -1, -1, -1)
    return image.to(dtype=like.dtype)


def unit_residuals(controlnet: Any, image: torch.Tensor, sample: torch.Tensor, timestep: Any,
                   encoder_hidden_states: torch.Tensor, extra: Mapping[str, Any], *, weight: float,
                   mode: str = BALANCED, guided: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Down and mid residuals of one unit for one UNet call (`guided`: the batch is [unconditional,
    conditional] halves, diffusers' order)."""
    batch = int(sample.shape[0])
    control = fitted_control(image, control_image_size(controlnet, sample), batch, sample)
    model_dtype = next(controlnet.parameters()).dtype
    down, mid = controlnet(sample.to(model_dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(model_dtype),
                           controlnet_cond=control.to(model_dtype), conditioning_scale=1.0,
                           added_cond_kwargs=extra.get("added_cond_kwargs"), timestep_cond=extra.get("timestep_cond"),
                           return_dict=False)
    tensors: Sequence[torch.Tensor] = [*down, mid]
    scales = level_scales(len(tensors), weight, mode)
    scaled = [tensor.to(sample.dtype) * scale for tensor, scale in zip(tensors, scales)]
    if mode == CONTROL_MORE_IMPORTANT and guided and batch % 2 == 0:
        half = batch // 2
        scaled = [torch.cat([torch.zeros_like(tensor[:half]), tensor[half:]]) for tensor in scaled]
    return list(scaled[:-1]), scaled[-1]
