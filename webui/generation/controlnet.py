"""One ControlNet unit's residuals for one UNet call: the semantics users know from sd-webui-controlnet.

Why here (the engine) and not in the extension: the arithmetic on the UNet's inputs (control image at the
sample's size, SDXL's extra conditioning, classifier-free-guidance halves) must follow the pipeline's own
conventions, which only the engine knows; the extension decides which units run with which values.

- Weight: the residuals are scaled by it; a unit of weight 0 adds nothing (callers then skip it, so an
  image with a weight-0 unit is bitwise the image without it).
- Starting/ending control step: the unit acts on the steps whose position in the pass, step / steps,
  lies within [start, end] (both ends included, as sd-webui-controlnet counts).
- Transformer ControlNets (Flux.1's `FluxControlNetModel`): the unit's ControlNet runs on the transformer call's
  own inputs (packed latent tokens, text tokens, pooled text, position ids, guidance) with the control image as
  VAE latents packed like the sample (InstantX / Shakker-Labs) or as pixels (XLabs-style, with their own
  conditioning embedding); its block outputs are spread over the transformer's blocks the way diffusers' Flux
  transformer spreads them (every `ceil(blocks / outputs)` blocks, or cycled for XLabs-style ones), so units of
  either kind sum block by block. Union ControlNets get the unit's control mode index. Only "Balanced" exists
  there: a distilled-guidance model has no guided batch halves to weigh.
- Control mode: "Balanced" adds the residuals to both halves of the guided batch; "My prompt is more
  important" scales the 13 (or n) residuals down from the deepest one by 0.825 per level (the published
  soft-injection factors); "ControlNet is more important" uses those factors too but only on the
  conditional half, so guidance pushes towards the control.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


# ---- transformer ControlNets (Flux.1) -------------------------------------------------------------------------
# sd-webui-controlnet's and the model cards' other names of union control modes.
UNION_MODE_ALIASES = {"openpose": "pose", "lq": "low quality", "low_quality": "low quality", "grey": "gray",
                      "grayscale": "gray"}
NO_UNION_MODE = ("", "none", "unknown")   # what clients send for "no control type" (sd-webui-controlnet: Unknown)


def is_transformer_controlnet(controlnet: Any) -> bool:
    """Whether a ControlNet adds to a transformer's blocks (Flux) rather than to a UNet's skip connections."""
    return hasattr(controlnet, "controlnet_single_blocks")


def union_mode_index(value: Any, names: Sequence[str], count: int, title: str) -> int | None:
    """The control mode index a unit asks of a ControlNet with `count` union modes (0: not a union model);
    ValueError with the choices when the unit names none for a union model, one for another model, or an
    unknown one."""
    text = "" if value is None else str(value).strip()
    listed = ", ".join(f"{name} ({index})" for index, name in enumerate(names[:count])) or f"0-{count - 1}"
    if text.casefold() in NO_UNION_MODE:
        if count:
            raise ValueError(f"ControlNet {title!r} is a union ControlNet: choose its control type (the unit's "
                             f"union_control_type): {listed}")
        return None
    if not count:
        raise ValueError(f"ControlNet {title!r} is not a union ControlNet and takes no control type (got {text!r}); "
                         "leave union_control_type empty")
    if text.isdigit() and int(text) < count:
        return int(text)
    wanted = UNION_MODE_ALIASES.get(text.casefold(), text.casefold())
    for index, name in enumerate(names[:count]):
        if name.casefold() == wanted:
            return index
    raise ValueError(f"control type {text!r} is unknown for the union ControlNet {title!r}; use one of {listed}")


def token_grid(image_ids: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of a packed latent image from its tokens' position ids (0, row, column)."""
    return int(image_ids[..., 1].max()) + 1, int(image_ids[..., 2].max()) + 1


def per_block(outputs: Sequence[torch.Tensor] | None, blocks: int, cycled: bool) -> list[torch.Tensor]:
    """One residual per transformer block from a ControlNet's fewer block outputs: each output serves
    `ceil(blocks / outputs)` consecutive blocks, or (`cycled`, XLabs-style) block i takes output i mod outputs."""
    if not outputs or blocks <= 0:
        return []
    if cycled:
        return [outputs[index % len(outputs)] for index in range(blocks)]
    interval = math.ceil(blocks / len(outputs))
    return [outputs[index // interval] for index in range(blocks)]


def memoized_encoder(encode_pixels: Callable[[torch.Tensor], torch.Tensor], pixels_per_token: int
                     ) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """A job's encoder of control images for ControlNets that take latents: (image 1 x 3 x H x W in [0, 1], the
    sample's token grid) -> `encode_pixels` of it in [-1, 1] at the size whose latents fill that grid
    (`pixels_per_token`: the VAE's downscale times the denoiser's patch). Each image is encoded once per grid:
    the denoiser is called with the same map every step. Made per job, so the memo never outlives it."""
    memo: dict[tuple[int, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        key = (id(image), grid)
        if key not in memo:   # the image is kept alongside, so its id is not reused while the memo lives
            size = (grid[0] * pixels_per_token, grid[1] * pixels_per_token)
            pixels = fitted_control(image[:1], size, 1, image.float()).clamp(0, 1) * 2 - 1
            with torch.no_grad():
                memo[key] = (image, encode_pixels(pixels))
        return memo[key][1]

    return encode


def transformer_unit_residuals(controlnet: Any, image: torch.Tensor, sample: torch.Tensor, timestep: Any,
                               encoder_hidden_states: torch.Tensor, extra: Mapping[str, Any], *, weight: float,
                               union_mode: int | None, blocks: tuple[int, int],
                               encode: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None,
                               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(double-stream, single-stream) residuals of one unit for one transformer call, one per block of the
    transformer (`blocks`: its double and single block counts), scaled by `weight`."""
    grid = token_grid(extra["img_ids"])
    batch = int(sample.shape[0])
    model_dtype = next(controlnet.parameters()).dtype
    cycled = controlnet.input_hint_block is not None
    if cycled:   # XLabs-style: the ControlNet embeds the picture itself (stride-2 convolutions, then patches)
        halvings = sum(1 for module in controlnet.input_hint_block.modules()
                       if isinstance(module, torch.nn.Conv2d) and module.stride == (2, 2))
        per_token = 2 ** halvings * int(controlnet.config.patch_size)
        control = fitted_control(image, (grid[0] * per_token, grid[1] * per_token), batch, sample).clamp(0, 1) * 2 - 1
    else:
        if encode is None:
            raise ValueError("this ControlNet takes the control image as latents, but the job has no VAE encoder")
        control = encode(image, grid).to(sample.device)
        control = control.expand(batch, *control.shape[1:])
    mode = None if union_mode is None else torch.full((batch, 1), union_mode, dtype=torch.long, device=sample.device)
    guidance = extra.get("guidance") if controlnet.config.guidance_embeds else None
    if controlnet.config.guidance_embeds and guidance is None:
        raise ValueError("this ControlNet was made for a guidance-distilled model (Flux.1 dev) and needs its "
                         "guidance input, which the checkpoint does not take (Flux.1 schnell)")

    def cast(value: Any) -> Any:
        return value.to(model_dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    double, single = controlnet(hidden_states=cast(sample), controlnet_cond=cast(control), controlnet_mode=mode,
                                conditioning_scale=float(weight), encoder_hidden_states=cast(encoder_hidden_states),
                                pooled_projections=cast(extra.get("pooled_projections")), timestep=cast(timestep),
                                img_ids=extra["img_ids"], txt_ids=extra["txt_ids"], guidance=cast(guidance),
                                return_dict=False)
    return ([tensor.to(sample.dtype) for tensor in per_block(double, blocks[0], cycled)],
            [tensor.to(sample.dtype) for tensor in per_block(single, blocks[1], False)])
