"""How much one request may ask of the server, judged before any of the work is done.

A server on a rented GPU is reachable by strangers and by scripts that fire requests in loops. A
450 KB PNG can declare 12000x12000 pixels and decode to gigabytes; a queue without a bound lets one
client hold the GPU for everyone. Every such limit is one field here, built once from `Settings`:

- image pixels, read from the file header before decoding (`open_image` is the one opener for
  every image a request brings: API base64 fields, PNG Info, gradio uploads, training uploads);
- upload bytes for one image;
- prompt length and images x steps per request (`GenerationLimits`, checked with the request);
- jobs queued or running, in total and per user (the scheduler's bounds).

Refusals are `ImageTooLargeError` (HTTP 413) or `RequestError` (422) with the limit in the message;
a full queue is the queue's `QueueFullError` (503 for the server, 429 for one user).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.generation.image_ops import (
    ImageInputError,
    ImageTooLargeError,
    bomb_message,
    check_pixel_count,
    open_user_image,
)
from webui.generation.requests import GenerationLimits
from webui.settings import Settings

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str]


@dataclass(frozen=True)
class RequestLimits:
    """The limits one server applies to every request, whoever makes it."""

    generation: GenerationLimits = field(default_factory=GenerationLimits)
    max_image_pixels: int = Settings.max_image_pixels
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_queue: int = Settings.max_queue
    max_queue_per_user: int = Settings.max_queue_per_user

    @classmethod
    def from_settings(cls, settings: Settings) -> "RequestLimits":
        return cls(
            generation=GenerationLimits(max_side=settings.max_image_side, max_images=settings.max_batch_images),
            max_image_pixels=settings.max_image_pixels,
            max_queue=settings.max_queue,
            max_queue_per_user=settings.max_queue_per_user,
        )

    def check_upload_bytes(self, size: int, description: str = "the image") -> None:
        """Refuse an upload larger than `max_upload_bytes` (ImageTooLargeError, HTTP 413)."""
        if size > self.max_upload_bytes:
            raise ImageTooLargeError(f"{description} is {size:,} bytes; the limit is {self.max_upload_bytes:,} bytes "
                                     f"({self.max_upload_bytes / 1024 / 1024:.0f} MB)")

    def check_image_header(self, source: ImageSource, description: str = "the image") -> tuple[int, int]:
        """The (width, height) a file declares, read without decoding pixels; refuses too many pixels.

        For uploads some other code decodes (gradio's components): calling this first keeps an oversized
        image from ever being decoded. Data Pillow cannot identify is refused too.
        """
        self.check_upload_bytes(_byte_size(source), description)
        stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
        try:
            with Image.open(stream) as image:
                size = image.size
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(bomb_message(description, self.max_image_pixels, error)) from error
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageInputError(f"{description} is not an image Pillow can read") from error
        check_pixel_count(size, self.max_image_pixels, description)
        return size

    def open_image(self, source: ImageSource, description: str = "the image") -> Image.Image:
        """Decode an image a request brought, after checking its bytes and its header's pixel count."""
        self.check_upload_bytes(_byte_size(source), description)
        return open_user_image(source, max_pixels=self.max_image_pixels)


def _byte_size(source: ImageSource) -> int:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    try:
        return os.stat(source).st_size
    except OSError:
        return 0  # a missing file is reported by the opener, with its name


def guard_library_decoders(limits: RequestLimits) -> None:
    """Set Pillow's process-wide decompression-bomb threshold from the pixel limit; call once at start-up.

    A backstop for decoders that are not ours (gradio's components; the brush editors are sized by
    `webui.ui.uploads.CheckedImageEditor` first): Pillow's `Image.open` refuses, before decoding, any
    image above twice `Image.MAX_IMAGE_PIXELS` (its documented setting; 2 x 89 M pixels by default), so
    such decoders are bounded at twice the limit. Our own opener applies the limit itself, exactly.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
