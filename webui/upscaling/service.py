"""The upscalers' use cases: list them, check a name, enlarge an image.

Every place that enlarges an image (the Extras tab and API, hires fix's pixel step, img2img's resize)
asks this one service, so they all see the same list and the same refusals. The built-in filters
("None", "Lanczos", "Nearest", A1111's) are always there; model files come from the upscaler folders
(`UpscalerCatalog`). A model runs at its native scale, again if that is not enough (at most three passes,
like A1111), and the result is resized with Lanczos to the exact size asked for. The model runs on the
device the caller passes (a worker's), tiled as the runtime options `ESRGAN_tile`/`ESRGAN_tile_overlap` say;
the alpha channel of an image is enlarged with Lanczos. This service runs on whatever thread calls it:
callers put GPU work on a worker (a scheduler job), never on an HTTP thread.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.generation.image_ops import check_pixel_count, normalise_bit_depth
from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl
from webui.upscaling.catalog import (
    BUILTIN_ENTRIES,
    NONE_UPSCALER,
    UnusableUpscaler,
    UpscalerCatalog,
    UpscalerEntry,
)
from webui.upscaling.tiles import TileSettings, run_dtype, upscale_tensor

FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_MODEL_PASSES = 3           # A1111 runs a model at most three times to reach the asked size
MAX_UPSCALE = 16.0             # no request enlarges more than this in one call
INTERMEDIATE_PIXEL_FACTOR = 4  # a model's last pass may overshoot the final size by this many pixels at most


class UpscalerService:
    """Lists, checks and runs upscalers. `tile_settings()` gives the current tile options (read at each
    upscale, so a change in the Settings tab applies to the next job); `max_pixels` bounds results."""

    def __init__(self, catalog: UpscalerCatalog, tile_settings: Callable[[], TileSettings] = TileSettings,
                 max_pixels: int | None = None):
        self.catalog = catalog
        self.tile_settings = tile_settings
        self.max_pixels = max_pixels

    # -- listing -------------------------------------------------------------------------------------
    def entries(self) -> list[UpscalerEntry]:
        """Built-ins first ("None", "Lanczos", "Nearest"), then model files by name, unusable ones included."""
        return self.catalog.entries()

    def names(self, usable_only: bool = True) -> list[str]:
        return [entry.name for entry in self.entries() if entry.usable or not usable_only]

    def model_names(self) -> list[str]:
        """The usable model upscalers only (what hires fix offers besides its latent modes and filters)."""
        return [entry.name for entry in self.entries() if entry.usable and not entry.builtin]

    def refresh(self) -> None:
        """Re-scan the folders; files that did not change are not read again."""
        self.catalog.refresh()

    def check(self, name: str) -> UpscalerEntry:
        """The usable entry called `name`; RequestError naming the choices (and why, for an unusable file).
        A built-in name is answered without looking at the model files."""
        for entry in BUILTIN_ENTRIES:
            if entry.name == name:
                return entry
        entries = self.entries()
        usable = ", ".join(entry.name for entry in entries if entry.usable)
        for entry in entries:
            if entry.name == name:
                if not entry.usable:
                    raise RequestError(f"upscaler {name!r} cannot be used: {entry.reason}; usable upscalers: {usable}")
                return entry
        raise RequestError(f"upscaler {name!r} is unknown; available: {usable}")

    # -- running -------------------------------------------------------------------------------------
    def upscale(self, image: Image.Image, name: str, scale: float, *, device: torch.device | str | None = None,
                control: JobControl | None = None, size: tuple[int, int] | None = None) -> Image.Image:
        """`image` enlarged by `scale` (or to exactly `size` = (width, height) when given) with the upscaler
        `name`. "None" returns the image unchanged (A1111's extras do nothing for it)."""
        return self.upscale_all([image], name, scale, device=device, control=control, size=size)[0]

    def upscale_all(self, images: Sequence[Image.Image], name: str, scale: float, *,
                    device: torch.device | str | None = None, control: JobControl | None = None,
                    size: tuple[int, int] | None = None) -> list[Image.Image]:
        """Several images with one upscaler (a model is moved to the device once for all of them)."""
        entry = self.check(name)
        if size is None and not 0 < scale <= MAX_UPSCALE:
            raise RequestError(f"upscale factor {scale:g} is outside 0..{MAX_UPSCALE:g}")
        targets = [size or (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                   for image in images]
        for target in targets:
            self._check_pixels(target, "the upscaled image")
        if entry.name == NONE_UPSCALER:
            return [image.copy() for image in images]
        if entry.builtin:
            return [plain_mode(image).resize(target, FILTERS[entry.name]) for image, target in zip(images, targets)]
        return self._model_upscale(entry, images, targets, torch.device(device or "cpu"), control)

    def _check_pixels(self, size: tuple[int, int], what: str, factor: int = 1) -> None:
        """ImageTooLargeError (413 over HTTP) for a result over the server's pixel limit (times `factor`)."""
        check_pixel_count(size, None if self.max_pixels is None else self.max_pixels * factor, what)

    def _model_upscale(self, entry: UpscalerEntry, images: Sequence[Image.Image], targets: list[tuple[int, int]],
                       device: torch.device, control: JobControl | None) -> list[Image.Image]:
        try:
            descriptor = self.catalog.model(entry)
        except UnusableUpscaler as error:
            raise RequestError(f"upscaler {entry.name!r} cannot be used: {error}") from None
        settings = self.tile_settings().checked()
        try:
            runner = _on_device(descriptor, device)
            return [self._enlarge(runner, entry, image, target, device, settings, control)
                    for image, target in zip(images, targets)]
        except torch.cuda.OutOfMemoryError:  # moving the model or the image (the tiles retry on their own)
            raise RequestError(f"out of GPU memory running the upscaler {entry.name!r}; free GPU memory or set "
                               "ESRGAN_tile lower") from None

    def _enlarge(self, runner: Any, entry: UpscalerEntry, image: Image.Image, target: tuple[int, int],
                 device: torch.device, settings: TileSettings, control: JobControl | None) -> Image.Image:
        """One image: model passes until it covers `target`, then Lanczos to exactly `target`; alpha by Lanczos."""
        image = plain_mode(image)
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
        current = image.convert("RGB")
        for _ in range(MAX_MODEL_PASSES):
            if current.width >= target[0] and current.height >= target[1]:
                break
            passed = (current.width * runner.scale, current.height * runner.scale)
            self._check_pixels(passed, f"a pass of {entry.name}", INTERMEDIATE_PIXEL_FACTOR)
            current = _run(runner, current, device, settings, control)
            if runner.scale == 1:
                break
        if current.size != target:
            current = current.resize(target, Image.Resampling.LANCZOS)
        if alpha is not None:
            current.putalpha(alpha.resize(target, Image.Resampling.LANCZOS))
        return current


def plain_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA for images with transparency: the modes every filter and model step accepts (16-bit
    and float grayscale scaled to 8 bits first, not clipped)."""
    if image.mode in ("RGB", "RGBA"):
        return image
    image = normalise_bit_depth(image)
    has_alpha = image.mode in ("LA", "La", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


def _on_device(descriptor, device: torch.device):
    """The model ready to run on `device`: the cached CPU model itself on the CPU (running it only reads
    it), a copy in the run's precision elsewhere (dropped after the call, so GPU memory is given back)."""
    dtype = run_dtype(descriptor, device)
    if device.type == "cpu" and dtype == torch.float32:
        return descriptor
    return copy.deepcopy(descriptor).to(device, dtype)


def _run(runner, image: Image.Image, device: torch.device, settings: TileSettings,
         control: JobControl | None) -> Image.Image:
    dtype = next(runner.model.parameters()).dtype
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)
    output = upscale_tensor(runner, tensor, settings, control)
    pixels = (output[0].float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")
