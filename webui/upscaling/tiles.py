"""Running an upscaler model over an image in overlapping tiles, so big images fit small GPUs.

An ESRGAN 4x model on a 2048-pixel image needs several GB of activations at once; cut into tiles of
`ESRGAN_tile` pixels (A1111's option, default 192) it needs a fraction of that. Tiles overlap by
`ESRGAN_tile_overlap` pixels and are blended with linear ramps across the overlap, so seams do not show
and the tiled result matches the untiled one within a small tolerance (a convolution near a tile's cut edge
sees padding instead of the neighbouring pixels; the ramp gives those pixels little weight).

Each tile is padded to the model's size requirements (spandrel's `multiple_of`, `minimum`, `square`) with
reflected pixels and the padding is cut from the output. On a CUDA out-of-memory error the run starts over
with tiles half the size, down to `MIN_TILE`; below that the caller gets a RequestError saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl

MIN_TILE = 32          # out-of-memory retries halve the tile down to this
MAX_TILE = 2048        # the option's upper bound (a larger tile is an untiled run on any image we accept)
MAX_OVERLAP = 256


@dataclass(frozen=True)
class TileSettings:
    """A1111's `ESRGAN_tile` (0: the whole image at once) and `ESRGAN_tile_overlap`, in input pixels."""

    tile: int = 192
    overlap: int = 8

    def checked(self) -> "TileSettings":
        if self.tile != 0 and not MIN_TILE <= self.tile <= MAX_TILE:
            raise RequestError(f"ESRGAN_tile {self.tile} must be 0 (no tiling) or {MIN_TILE}..{MAX_TILE}")
        if not 0 <= self.overlap <= MAX_OVERLAP:
            raise RequestError(f"ESRGAN_tile_overlap {self.overlap} is outside 0..{MAX_OVERLAP}")
        if self.tile and self.overlap * 2 >= self.tile:
            raise RequestError(f"ESRGAN_tile_overlap {self.overlap} must be less than half of ESRGAN_tile {self.tile}")
        return self


class UpscaleInterrupted(Exception):
    """The job was interrupted between two tiles."""


def run_dtype(descriptor: Any, device: torch.device) -> torch.dtype:
    """fp16 on CUDA where the architecture supports it, else bf16 where only that is supported (and the GPU
    has it), else fp32; always fp32 on the CPU (half precision there is slow or missing)."""
    if device.type != "cuda":
        return torch.float32
    if descriptor.supports_half:
        return torch.float16
    if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pad_to_requirements(tensor: torch.Tensor, requirements: Any) -> torch.Tensor:
    """`tensor` (BCHW) grown at the right and bottom until its size meets spandrel's requirements:
    reflected pixels as far as reflection reaches, replicated beyond."""
    if requirements is None:
        return tensor
    height, width = tensor.shape[-2:]
    pad_w, pad_h = requirements.get_padding(width, height)
    if not pad_w and not pad_h:
        return tensor
    reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
    tensor = F.pad(tensor, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_w > reflect_w or pad_h > reflect_h:
        tensor = F.pad(tensor, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return tensor


def run_model(descriptor: Any, tensor: torch.Tensor) -> torch.Tensor:
    """The model on one BCHW tensor of any size: padded to its requirements, the padding cut off after."""
    height, width = tensor.shape[-2:]
    output = descriptor(pad_to_requirements(tensor, descriptor.size_requirements))
    return output[..., : height * descriptor.scale, : width * descriptor.scale]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: every `tile - overlap` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(length: int, ramp: int, start_edge: bool, end_edge: bool) -> torch.Tensor:
    """1 inside, rising linearly from near 0 over `ramp` pixels at each side that meets another tile."""
    weights = torch.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
        if start_edge:
            weights[:ramp] = rise
        if end_edge:
            weights[length - ramp:] = rise.flip(0)
    return weights


def effective_tile(tile: int, descriptor: Any) -> int:
    """The tile size rounded down to the model's `multiple_of` (so inner tiles need no padding) and at
    least its minimum."""
    requirements = descriptor.size_requirements
    if requirements is None:
        return tile
    multiple = max(1, requirements.multiple_of)
    return max(tile - tile % multiple, requirements.minimum, multiple)


@torch.inference_mode()
def upscale_tensor(descriptor: Any, image: torch.Tensor, settings: TileSettings,
                   control: JobControl | None = None) -> torch.Tensor:
    """The model's output for `image` (1x3xHxW in 0..1, on the model's device and dtype), tiled as
    `settings` say; tiles shrink on CUDA out-of-memory errors (see the module docstring)."""
    tile = settings.tile
    while True:
        try:
            return _tiled(descriptor, image, tile, settings.overlap, control)
        except torch.cuda.OutOfMemoryError:
            if image.device.type == "cuda":
                torch.cuda.empty_cache()
            height, width = image.shape[-2:]
            current = tile or max(height, width)
            if current // 2 < MIN_TILE:
                raise RequestError(
                    f"out of GPU memory upscaling a {width}x{height} image even in tiles of {current} pixels; "
                    "free GPU memory (a smaller checkpoint, fewer workers) or upscale a smaller image") from None
            tile = current // 2


def _tiled(descriptor: Any, image: torch.Tensor, tile: int, overlap: int,
           control: JobControl | None) -> torch.Tensor:
    height, width = image.shape[-2:]
    scale = descriptor.scale
    internal = getattr(getattr(descriptor, "tiling", None), "name", "") == "INTERNAL"
    if tile == 0 or internal or (height <= tile and width <= tile):
        return run_model(descriptor, image)
    tile = effective_tile(tile, descriptor)
    overlap = min(overlap, tile // 2 - 1) if tile > 2 else 0
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    output = torch.zeros((1, image.shape[1], height * scale, width * scale), dtype=torch.float32, device=image.device)
    weight = torch.zeros((1, 1, height * scale, width * scale), dtype=torch.float32, device=image.device)
    total, done = len(rows) * len(columns), 0
    for top in rows:
        for left in columns:
            if control is not None and control.interrupted:
                raise UpscaleInterrupted()
            bottom, right = min(top + tile, height), min(left + tile, width)
            piece = run_model(descriptor, image[..., top:bottom, left:right]).float()
            rows_w = _ramp((bottom - top) * scale, overlap * scale, top > 0, bottom < height)
            cols_w = _ramp((right - left) * scale, overlap * scale, left > 0, right < width)
            mask = (rows_w[:, None] * cols_w[None, :]).to(image.device)
            output[..., top * scale:bottom * scale, left * scale:right * scale] += piece * mask
            weight[..., top * scale:bottom * scale, left * scale:right * scale] += mask
            done += 1
            if control is not None:
                control.set_message(f"upscaling: tile {done} of {total}")
    return (output / weight).clamp_(0, 1).to(image.dtype)

