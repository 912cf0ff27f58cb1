"""Pixel-space image preparation for img2img, inpaint and outpaint.

Everything here is plain Pillow + numpy and runs before any model sees the
image: decoding user uploads with clear errors, normalising colour modes,
A1111's four resize modes, and building the enlarged canvas for outpainting.
Keeping it model-free makes the geometry testable and lets the UI preview
exactly what will be sent to the VAE.
"""

from __future__ import annotations

import enum
import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, ImageColor, ImageOps

# SD's VAE downsamples by 8, so pixel sizes must be multiples of 8 to map onto whole latents.
SIZE_MULTIPLE = 8
# A1111's "With img2img, fill transparent parts of the input image with this color" default.
DEFAULT_BACKGROUND = "#ffffff"
# Decoders raise these for corrupt or truncated data (struct.error/SyntaxError from some plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
OutpaintFill = Literal["edge", "noise"]
_Choice = TypeVar("_Choice", bound="LabelledChoice")


class ImageInputError(ValueError):
    """A user-supplied image cannot be used; the message is meant for the user."""


class ImageTooLargeError(ImageInputError):
    """A user-supplied image has more pixels (or bytes) than the server decodes (HTTP 413)."""


class LabelledChoice(int, enum.Enum):
    """An int enum whose members also carry the label A1111 shows in its UI.

    A1111's API and infotext use either the index or the label, so settings
    coming from pasted parameters, the API or the UI all resolve through
    :meth:`from_value`.
    """

    label: str

    def __new__(cls, value: int, label: str) -> LabelledChoice:
        member = int.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    @classmethod
    def from_value(cls: type[_Choice], value: int | str | LabelledChoice) -> _Choice:
        """Resolve an index, a label (any case), a digit string or a member name; ValueError lists valid ones."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            for member in cls:
                if member.value == value:
                    return member
        elif isinstance(value, str):
            wanted = value.strip().casefold()
            for member in cls:
                if wanted in (member.label.casefold(), member.name.casefold(), str(member.value)):
                    return member
        valid = ", ".join(f"{member.value} ({member.label!r})" for member in cls)
        raise ValueError(f"unknown {cls.__name__} {value!r}; valid values are: {valid}")


class ResizeMode(LabelledChoice):
    """How an input image is fitted to the requested width and height (A1111's img2img "Resize mode")."""

    JUST_RESIZE = (0, "Just resize")
    CROP_AND_RESIZE = (1, "Crop and resize")
    RESIZE_AND_FILL = (2, "Resize and fill")
    LATENT_UPSCALE = (3, "Just resize (latent upscale)")


def normalise_bit_depth(image: Image.Image) -> Image.Image:
    """Return 16-bit, 32-bit and float grayscale images as 8-bit "L" (other modes unchanged).

    Pillow's own ``convert("L")`` clips 16-bit values at 255, which turns a
    16-bit PNG almost entirely white; scaling keeps the picture. Pillow opens
    16-bit grayscale files as "I;16" or "I" depending on the format, so "I"
    images whose values exceed 255 are taken to be 16-bit too. Float images
    with values up to 1.0 are taken as 0..1 intensities.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float32) / 257.0
    elif image.mode == "I":
        raw = np.asarray(image).astype(np.float32)
        values = raw / 257.0 if raw.size and raw.max() > 255 else raw
    elif image.mode == "F":
        raw = np.asarray(image).astype(np.float32)
        values = raw * 255.0 if raw.size and raw.max() <= 1.0 else raw
    elif image.mode == "1":
        return image.convert("L")
    else:
        return image
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _with_plain_alpha(image: Image.Image) -> Image.Image:
    """Palette transparency and premultiplied modes as ordinary RGBA/LA, so alpha can be read directly."""
    if image.mode == "P":
        return image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if image.mode == "La":
        return image.convert("LA")
    return image


def has_transparency(image: Image.Image) -> bool:
    """Whether any pixel is not fully opaque (an RGBA image with alpha 255 everywhere has none)."""
    image = _with_plain_alpha(image)
    if image.mode not in _ALPHA_MODES:
        return False
    return image.getchannel("A").getextrema()[0] < 255


def to_rgb(
    image: Image.Image, background: str | Sequence[int] = DEFAULT_BACKGROUND
) -> tuple[Image.Image, str | None]:
    """Convert any colour mode to RGB; transparent areas are composited onto ``background``.

    The VAE only takes RGB, and simply dropping alpha would expose whatever
    colour happens to sit under transparent pixels (often black or garbage).
    Like A1111 we flatten onto a configurable colour whose default is A1111's
    white. Returns the image and, when transparency was actually flattened, a
    note for the user; palette, grayscale, CMYK and 16-bit images are converted
    without a note because nothing visible is lost.
    """
    image = _with_plain_alpha(normalise_bit_depth(image))
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] == 255:
            return rgba.convert("RGB"), None
        fill = ImageColor.getrgb(background) if isinstance(background, str) else tuple(background)
        backdrop = Image.new("RGBA", rgba.size, tuple(fill[:3]) + (255,))
        flattened = Image.alpha_composite(backdrop, rgba).convert("RGB")
        colour = "#{:02x}{:02x}{:02x}".format(*fill[:3])
        return flattened, f"The image had transparent areas; they were filled with {colour}."
    if image.mode == "RGB":
        return image.copy(), None
    try:
        return image.convert("RGB"), None
    except ValueError as error:
        raise ImageInputError(f"images in colour mode {image.mode!r} are not supported") from error


def check_pixel_count(size: tuple[int, int], max_pixels: int | None, description: str = "the image") -> None:
    """Refuse an image whose width x height exceeds ``max_pixels`` (None: no limit), naming both numbers.

    Called with the size Pillow reads from the file header, before any pixel is decoded: a 450 KB PNG
    can hold 12000x12000 pixels, which decodes to over 400 MB, so the size must be judged first.
    """
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{description} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels "
            "(scale it down first)"
        )


def bomb_message(description: str, max_pixels: int | None, error: Exception) -> str:
    """The refusal for an image Pillow's own guard stopped in `Image.open` (before decoding)."""
    limit = f"; the limit is {max_pixels:,} pixels" if max_pixels is not None else ""
    return f"{description} has too many pixels to decode safely{limit} ({error})"


def open_user_image(
    source: bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image, max_pixels: int | None = None
) -> Image.Image:
    """Decode an upload, file path or PIL image fully, with the EXIF rotation applied.

    The pixel count is checked from the header (``Image.open`` is lazy) before anything is decoded, so
    an image with more than ``max_pixels`` pixels costs no memory; Pillow's own bomb guard becomes the
    same :class:`ImageTooLargeError`. Decoding everything up front (``load``) surfaces truncated files
    here, as an :class:`ImageInputError` the UI can show, instead of as an obscure error deep inside
    generation. Phone photos store their rotation in EXIF; browsers display it applied, so we apply it
    too, or the user's portrait would be processed lying on its side. The colour mode is kept (masks
    need alpha).
    """
    if isinstance(source, Image.Image):
        image = source
        description = "the image"
        check_pixel_count(image.size, max_pixels, description)
        try:
            image.load()
        except _DECODE_ERRORS as error:
            raise ImageInputError(f"{description} is damaged or truncated ({error})") from error
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageInputError("the uploaded file is empty")
            stream: io.BytesIO | Path = io.BytesIO(bytes(source))
            description = "the uploaded file"
        else:
            stream = Path(source)
            description = f"{stream.name!r}"
            if not stream.is_file():
                raise ImageInputError(f"image file not found: {stream}")
        try:
            with Image.open(stream) as opened:
                check_pixel_count(opened.size, max_pixels, description)
                opened.load()
                image = opened
        except ImageTooLargeError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(bomb_message(description, max_pixels, error)) from error
        except Image.UnidentifiedImageError as error:
            raise ImageInputError(
                f"{description} is not an image Pillow can read (expected PNG, JPEG, WebP, BMP, GIF, TIFF ...)"
            ) from error
        except _DECODE_ERRORS as error:
            raise ImageInputError(f"{description} is damaged or truncated ({error})") from error
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # A broken EXIF block only loses the rotation hint; the pixels are fine.
        return image


def check_image_size(image: Image.Image, max_side: int) -> None:
    """Refuse images with a side longer than ``max_side`` pixels, naming the limit.

    Huge uploads exhaust memory in the VAE long before anything useful
    happens, so they are stopped at the door with a message that tells the
    user what to do.
    """
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    width, height = image.size
    if max(width, height) > max_side:
        raise ImageInputError(
            f"the image is {width}x{height} pixels; the limit is {max_side} pixels per side, "
            "so scale it down first"
        )


def _resizable(image: Image.Image) -> Image.Image:
    """Modes Pillow can resample smoothly (palette and 1-bit images only allow nearest-neighbour)."""
    image = normalise_bit_depth(image)
    if image.mode == "P":
        return image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    return image


def resize_image(
    image: Image.Image, width: int, height: int, mode: ResizeMode | int | str = ResizeMode.JUST_RESIZE
) -> Image.Image:
    """Fit ``image`` to ``width`` x ``height`` the way A1111's resize modes do.

    * Just resize: stretch to the new size, ignoring the aspect ratio.
    * Crop and resize: keep the aspect ratio, fill the whole frame and cut the
      overflow equally from both sides.
    * Resize and fill: keep the aspect ratio, fit the whole image inside and
      fill the empty bands by stretching the image's outermost row/column, so
      the model starts from colours that continue the picture.
    * Just resize (latent upscale): A1111 resizes this mode in latent space,
      after the VAE has encoded the image; that step belongs to the caller,
      which holds the VAE. Geometrically it is a stretch, so here (previews,
      masks) it behaves like Just resize.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    resize_mode = ResizeMode.from_value(mode)
    image = _resizable(image)
    source_width, source_height = image.size
    target_ratio = width / height
    source_ratio = source_width / source_height

    if resize_mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE) or target_ratio == source_ratio:
        return image.resize((width, height), Image.Resampling.LANCZOS)

    if resize_mode == ResizeMode.CROP_AND_RESIZE:
        if target_ratio > source_ratio:
            kept_height = source_width / target_ratio
            top = (source_height - kept_height) / 2
            box = (0.0, top, float(source_width), top + kept_height)
        else:
            kept_width = source_height * target_ratio
            left = (source_width - kept_width) / 2
            box = (left, 0.0, left + kept_width, float(source_height))
        return image.resize((width, height), Image.Resampling.LANCZOS, box=box)

    return _resize_and_fill(image, width, height, bands_left_right=target_ratio > source_ratio)


def _resize_and_fill(image: Image.Image, width: int, height: int, bands_left_right: bool) -> Image.Image:
    """Fit inside the frame, then stretch the edge rows/columns over the empty bands."""
    source_width, source_height = image.size
    if bands_left_right:
        fitted = (max(1, min(width, round(source_width * height / source_height))), height)
    else:
        fitted = (width, max(1, min(height, round(source_height * width / source_width))))
    resized = image.resize(fitted, Image.Resampling.LANCZOS)
    canvas = Image.new(resized.mode, (width, height))
    if bands_left_right:
        offset = (width - fitted[0]) // 2
        trailing = width - offset - fitted[0]
        canvas.paste(resized, (offset, 0))
        if offset:
            first_column = resized.crop((0, 0, 1, height))
            canvas.paste(first_column.resize((offset, height), Image.Resampling.NEAREST), (0, 0))
        if trailing:
            last_column = resized.crop((fitted[0] - 1, 0, fitted[0], height))
            canvas.paste(last_column.resize((trailing, height), Image.Resampling.NEAREST), (offset + fitted[0], 0))
    else:
        offset = (height - fitted[1]) // 2
        trailing = height - offset - fitted[1]
        canvas.paste(resized, (0, offset))
        if offset:
            first_row = resized.crop((0, 0, width, 1))
            canvas.paste(first_row.resize((width, offset), Image.Resampling.NEAREST), (0, 0))
        if trailing:
            last_row = resized.crop((0, fitted[1] - 1, width, fitted[1]))
            canvas.paste(last_row.resize((width, trailing), Image.Resampling.NEAREST), (0, offset + fitted[1]))
    return canvas


def _grow_to_multiple(original: int, before: int, after: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Add the pixels that make ``original + before + after`` a multiple of ``multiple`` (8; the model family's,
    16 for SD3/Flux) to the new area.

    The extra goes to the sides the user chose to extend (split between them
    when both were chosen); when neither was, it goes after (right/bottom),
    because growing is the only way to reach a multiple of 8 without cutting
    pixels off the user's image.
    """
    extra = -(original + before + after) % multiple
    if not extra:
        return before, after
    if before and after:
        return before + extra // 2, after + extra - extra // 2
    if before:
        return before + extra, after
    return before, after + extra


def outpaint_canvas(
    image: Image.Image,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    *,
    fill: OutpaintFill = "noise",
    overlap: int = 8,
    seed: int = 0,
    noise_strength: float = 0.5,
    size_multiple: int = SIZE_MULTIPLE,
) -> tuple[Image.Image, Image.Image]:
    """Enlarge ``image`` for outpainting; return the pre-filled canvas and its inpaint mask.

    A model asked to paint into flat grey produces flat, disconnected results,
    so the new area is pre-filled (the idea of A1111's "Outpainting mk2",
    simplified): ``"edge"`` stretches the outermost pixels outwards;
    ``"noise"`` does the same and then blends, increasingly with the distance
    from the original, towards seeded noise with the image's own colour mean
    and spread (``noise_strength`` is the blend reached at the far edge), so
    the model gets texture to work with instead of streaks. The same ``seed``
    always gives the same canvas.

    The mask is white where the model must paint: the new area plus
    ``overlap`` pixels into the original along every extended side, so the
    seam is regenerated and blends. The canvas keeps every original pixel
    unchanged. Both sizes are rounded up to multiples of ``size_multiple`` (8;
    the model family's) by extending the new area (see :func:`_grow_to_multiple`).
    """
    for name, value in (("left", left), ("right", right), ("up", up), ("down", down), ("overlap", overlap)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if not (left or right or up or down):
        raise ValueError("choose at least one side to extend (left, right, up or down)")
    if fill not in ("edge", "noise"):
        raise ValueError(f"unknown outpaint fill {fill!r}; valid values are 'edge' and 'noise'")
    if not 0.0 <= noise_strength <= 1.0:
        raise ValueError(f"noise_strength must be between 0 and 1, got {noise_strength}")

    rgb, _ = to_rgb(image)
    source_width, source_height = rgb.size
    left, right = _grow_to_multiple(source_width, left, right, size_multiple)
    up, down = _grow_to_multiple(source_height, up, down, size_multiple)
    original = np.asarray(rgb)
    canvas = np.pad(original, ((up, down), (left, right), (0, 0)), mode="edge").astype(np.float32)

    if fill == "noise" and noise_strength > 0:
        canvas = _blend_in_noise(canvas, original, (left, right, up, down), seed, noise_strength)
    canvas_pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    canvas_pixels[up:up + source_height, left:left + source_width] = original

    mask = np.full(canvas_pixels.shape[:2], 255, dtype=np.uint8)
    keep_x0 = left + (overlap if left else 0)
    keep_y0 = up + (overlap if up else 0)
    keep_x1 = left + source_width - (overlap if right else 0)
    keep_y1 = up + source_height - (overlap if down else 0)
    if keep_x1 > keep_x0 and keep_y1 > keep_y0:
        mask[keep_y0:keep_y1, keep_x0:keep_x1] = 0
    return Image.fromarray(canvas_pixels), Image.fromarray(mask)


def _blend_in_noise(
    canvas: np.ndarray,
    original: np.ndarray,
    extensions: tuple[int, int, int, int],
    seed: int,
    strength: float,
) -> np.ndarray:
    """Blend the edge-stretched canvas towards colour-matched noise, more so further from the image.

    The noise mixes per-pixel grain with blobs at the latent scale (1/8), so it
    carries both fine texture and larger shapes the model can turn into content.
    """
    left, right, up, down = extensions
    height, width = canvas.shape[:2]
    source_height, source_width = original.shape[:2]
    generator = np.random.default_rng(seed)

    coarse_shape = (max(1, height // SIZE_MULTIPLE), max(1, width // SIZE_MULTIPLE))
    coarse_channels = []
    for _ in range(3):
        coarse = Image.fromarray(generator.standard_normal(coarse_shape).astype(np.float32))
        coarse_channels.append(np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)))
    coarse_noise = np.stack(coarse_channels, axis=-1)
    coarse_noise /= max(float(coarse_noise.std()), 1e-6)
    fine_noise = generator.standard_normal((height, width, 3)).astype(np.float32)
    noise = (coarse_noise + fine_noise) / np.sqrt(2.0)

    colours = original.reshape(-1, 3).astype(np.float32)
    noise_layer = colours.mean(axis=0) + noise * np.maximum(colours.std(axis=0), 8.0)

    rows = np.arange(height, dtype=np.float32)[:, None]
    columns = np.arange(width, dtype=np.float32)[None, :]
    beyond_x = np.maximum(np.maximum(left - columns, columns - (left + source_width - 1)), 0)
    beyond_y = np.maximum(np.maximum(up - rows, rows - (up + source_height - 1)), 0)
    distance = np.sqrt(beyond_x**2 + beyond_y**2)
    weight = strength * np.clip(distance / max(left, right, up, down), 0.0, 1.0)[..., None]
    return canvas * (1.0 - weight) + noise_layer * weight
