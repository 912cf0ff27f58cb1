"""A1111's "Extras" upscaling (`/sdapi/v1/extra-single-image`, `extra-batch-images`, the Extras tab).

The upscalers are those of `webui.upscaling` (the service): A1111's built-in `None` (leaves the image as
it is), `Lanczos` and `Nearest`, and every usable model file (ESRGAN and the like). The size rules are A1111's:
`resize_mode` 0 scales by `upscaling_resize`; 1 scales until the image covers `upscaling_resize_w` x
`upscaling_resize_h` and, with `upscaling_crop`, cuts the centre to exactly that size. A second
upscaler can be blended over the first at `extras_upscaler_2_visibility`. The finished size is judged
against the server's pixel limit before any pixel is resized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

import torch

from webui.generation.infotext import quote_value
from webui.generation.image_ops import check_pixel_count
from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl
from webui.upscaling.catalog import NONE_UPSCALER
from webui.upscaling.service import UpscalerService, plain_mode

MAX_UPSCALE_FACTOR = 8.0  # A1111's "Resize" slider ends at 8


@dataclass(frozen=True)
class ExtrasRequest:
    """The upscaling part of A1111's ExtrasBaseRequest (face restoration does not exist here)."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0

    def validate(self, upscalers: UpscalerService) -> "ExtrasRequest":
        """Refuses values that cannot work, naming the field; upscaler names must be usable in `upscalers`."""
        for name in ("upscaler_1", "upscaler_2"):
            try:
                upscalers.check(getattr(self, name))
            except RequestError as error:
                raise RequestError(f"{name}: {error}") from None
        if self.resize_mode not in (0, 1):
            raise RequestError(f"resize_mode {self.resize_mode} is unknown: 0 scales by upscaling_resize, "
                               "1 resizes to upscaling_resize_w x upscaling_resize_h")
        if self.resize_mode == 0 and not 0 < self.upscaling_resize <= MAX_UPSCALE_FACTOR:
            raise RequestError(f"upscaling_resize {self.upscaling_resize} is outside 0..{MAX_UPSCALE_FACTOR:g}")
        if self.resize_mode == 1:
            for name in ("upscaling_resize_w", "upscaling_resize_h"):
                if getattr(self, name) < 1:
                    raise RequestError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.extras_upscaler_2_visibility <= 1.0:
            raise RequestError(f"extras_upscaler_2_visibility {self.extras_upscaler_2_visibility} is outside 0..1")
        return self

    def scale_for(self, size: tuple[int, int]) -> float:
        """The factor the upscaler enlarges by: the given one, or the smallest that covers the target size."""
        if self.resize_mode == 0:
            return self.upscaling_resize
        width, height = size
        return max(self.upscaling_resize_w / width, self.upscaling_resize_h / height)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The finished image's size (after the crop when there is one)."""
        if self.upscaler_1 == NONE_UPSCALER:
            return size
        if self.resize_mode == 1 and self.upscaling_crop:
            return self.upscaling_resize_w, self.upscaling_resize_h
        scale = self.scale_for(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def upscale_image(image: Image.Image, request: ExtrasRequest, upscalers: UpscalerService, max_pixels: int | None,
                  *, device: torch.device | str | None = None, control: JobControl | None = None
                  ) -> tuple[Image.Image, str]:
    """The upscaled image and A1111's postprocessing infotext (empty when nothing was done).
    `request` must be validated; ImageTooLargeError when the result would exceed `max_pixels`. Model
    upscalers run on `device`: call this from a worker job."""
    if request.upscaler_1 == NONE_UPSCALER:
        return image.copy(), ""
    scale = request.scale_for(image.size)
    scaled_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    check_pixel_count(scaled_size, max_pixels, "the upscaled image")
    check_pixel_count(request.output_size(image.size), max_pixels, "the upscaled image")
    source = plain_mode(image)
    result = upscalers.upscale(source, request.upscaler_1, scale, size=scaled_size, device=device, control=control)
    blended = request.upscaler_2 != NONE_UPSCALER and request.extras_upscaler_2_visibility > 0
    if blended:
        second = upscalers.upscale(source, request.upscaler_2, scale, size=scaled_size, device=device, control=control)
        result = Image.blend(result, second, request.extras_upscaler_2_visibility)
    if request.resize_mode == 1 and request.upscaling_crop:
        width, height = request.upscaling_resize_w, request.upscaling_resize_h
        left, top = math.floor((result.width - width) / 2), math.floor((result.height - height) / 2)
        result = result.crop((left, top, left + width, top + height))
    parts = {"Postprocess upscale by": f"{scale:g}" if request.resize_mode == 0 else None,
             "Postprocess upscale to": f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
             if request.resize_mode == 1 else None,
             "Postprocess crop to": f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
             if request.resize_mode == 1 and request.upscaling_crop else None,
             "Postprocess upscaler": request.upscaler_1,
             "Postprocess upscaler 2": request.upscaler_2 if blended else None}
    return result, ", ".join(f"{key}: {quote_value(value)}" for key, value in parts.items() if value is not None)
