"""Inpainting masks: reading the user's brush strokes, blurring, cropping and compositing.

Convention throughout: a mask is an 8-bit "L" image where 255 means "the
model paints here" and 0 means "keep the original". Everything is plain
Pillow + numpy so the inpaint geometry (what gets regenerated, what stays
bit-identical) can be checked without a model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from webui.generation.image_ops import LabelledChoice, normalise_bit_depth, to_rgb

# "Binarise at 50 %": 8-bit values from this one up count as painted.
PAINTED_THRESHOLD = 128
# Neutral start colour when the mask covers the whole image and there are no surroundings to borrow.
NEUTRAL_FILL = 128.0
# Blurs wider than this many pixels run on a downscaled copy (see _smooth).
SMOOTH_DETAIL_RADIUS = 2

Region = tuple[int, int, int, int]


class MaskedContent(LabelledChoice):
    """What the masked area starts from (A1111's "Masked content").

    Only "fill" changes pixels; "original" keeps them and the two latent
    options replace the area after VAE encoding, which the caller does.
    """

    FILL = (0, "fill")
    ORIGINAL = (1, "original")
    LATENT_NOISE = (2, "latent noise")
    LATENT_NOTHING = (3, "latent nothing")


def _painted_values(mask: Image.Image) -> Image.Image:
    """The mask's paint as an 8-bit "L" image: alpha if it has transparency, else brightness.

    The browser's brush layer is a transparent PNG whose strokes may be any
    colour, so for such images coverage (alpha) is what the user painted; an
    opaque upload is the classic white-on-black mask.
    """
    mask = normalise_bit_depth(mask)
    if mask.mode == "L":
        return mask
    if mask.mode == "P":
        mask = mask.convert("RGBA") if "transparency" in mask.info else mask.convert("L")
    elif mask.mode in ("PA", "RGBa"):
        mask = mask.convert("RGBA")
    elif mask.mode == "La":
        mask = mask.convert("LA")
    if mask.mode in ("RGBA", "LA"):
        alpha = mask.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return mask.convert("L")


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> tuple[Image.Image, list[str]]:
    """Turn an uploaded or painted mask into a binary "L" mask of ``size`` (width, height).

    Strokes are binarised at 50 % so soft brush edges and JPEG noise do not
    leave faint, half-regenerated areas; softness is reintroduced on purpose
    by :func:`blur_mask`. Resizing happens before binarising, which keeps the
    edges smooth. ``invert`` implements "Inpaint not masked". The notes tell
    the user about anything done silently (a mask of a different size).
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"mask size must be positive, got {width}x{height}")
    values = _painted_values(mask)
    notes: list[str] = []
    if values.size != (width, height):
        notes.append(f"mask resized from {values.width}x{values.height} to {width}x{height}")
        values = values.resize((width, height), Image.Resampling.BILINEAR)
    lookup = [255 if (level >= PAINTED_THRESHOLD) != invert else 0 for level in range(256)]
    return values.point(lookup), notes


def mask_is_empty(mask: Image.Image) -> bool:
    """True when nothing is painted (every pixel 0), e.g. the user pressed Generate without drawing."""
    return _painted_values(mask).getbbox() is None


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """Gaussian-blur the mask (A1111's "Mask blur"; ``radius`` is the standard deviation in pixels).

    A soft mask edge lets :func:`composite` fade the generated pixels into the
    original instead of leaving a visible seam. 0 returns the mask unchanged.
    """
    if radius < 0:
        raise ValueError(f"mask blur radius must not be negative, got {radius}")
    values = _painted_values(mask)
    if radius == 0:
        return values.copy()
    return values.filter(ImageFilter.GaussianBlur(radius))


def crop_region(mask: Image.Image, padding: int) -> Region | None:
    """Bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the painted pixels, grown by ``padding``.

    Used by "Inpaint area: Only masked", which regenerates just this box at
    full resolution; the padding gives the model context around the strokes.
    The box is clamped to the image. ``None`` for an empty mask, where there
    is no region to inpaint and the caller must decide (A1111 falls back to
    the whole picture).
    """
    if padding < 0:
        raise ValueError(f"padding must not be negative, got {padding}")
    values = _painted_values(mask)
    box = values.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return (
        max(x0 - padding, 0), max(y0 - padding, 0), min(x1 + padding, values.width), min(y1 + padding, values.height)
    )


def expand_to_aspect(region: Region, width: int, height: int, image_size: tuple[int, int]) -> Region:
    """Grow ``region`` to the aspect ratio of ``width`` x ``height``, staying inside the image.

    "Only masked" scales the cropped region to the generation size; without
    matching aspect ratios the crop would be distorted. The region grows
    symmetrically on the short axis and slides inwards when it hits an image
    edge; if the image itself is too small on that axis, the region stops at
    the image's full extent (the aspect can then not be matched exactly).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    image_width, image_height = image_size
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= image_width and 0 <= y0 < y1 <= image_height):
        raise ValueError(f"region {region} is empty or outside the {image_width}x{image_height} image")
    target_ratio = width / height
    region_width, region_height = x1 - x0, y1 - y0
    if region_width / region_height > target_ratio:
        wanted = min(round(region_width / target_ratio), image_height)
        y0, y1 = _grow_span(y0, y1, wanted, image_height)
    elif region_width / region_height < target_ratio:
        wanted = min(round(region_height * target_ratio), image_width)
        x0, x1 = _grow_span(x0, x1, wanted, image_width)
    return (x0, y0, x1, y1)


def _grow_span(start: int, end: int, wanted: int, limit: int) -> tuple[int, int]:
    """Widen ``[start, end)`` to ``wanted`` length around its centre, shifted to fit in ``[0, limit)``."""
    growth = max(wanted - (end - start), 0)
    start -= growth // 2
    end += growth - growth // 2
    if start < 0:
        end -= start
        start = 0
    if end > limit:
        start = max(start - (end - limit), 0)
        end = limit
    return start, end


def composite(original: Image.Image, generated: Image.Image, blurred_mask: Image.Image) -> Image.Image:
    """Paste the generated pixels over the original through the (blurred) mask.

    The VAE round trip subtly changes every pixel, even unmasked ones, so the
    result takes pixels where the mask is 0 from ``original`` bit for bit,
    where it is 255 from ``generated``, and blends in between. The result has
    the original's mode (RGB, RGBA or L; other modes are converted to RGB).
    """
    if not (original.size == generated.size == blurred_mask.size):
        raise ValueError(
            f"sizes differ: original {original.width}x{original.height}, generated "
            f"{generated.width}x{generated.height}, mask {blurred_mask.width}x{blurred_mask.height}"
        )
    if original.mode not in ("RGB", "RGBA", "L"):
        original, _ = to_rgb(original)
    if generated.mode != original.mode:
        generated = to_rgb(generated)[0].convert(original.mode)
    return Image.composite(generated, original, _painted_values(blurred_mask))


def _cell_bounds(pixels: int, cells: int) -> list[tuple[int, int]]:
    """Pixel span ``[start, end)`` of each of ``cells`` equal cells; neighbouring spans may share a pixel."""
    bounds = []
    for index in range(cells):
        start = index * pixels // cells
        end = max(-(-(index + 1) * pixels // cells), start + 1)
        bounds.append((start, min(end, pixels)))
    return bounds


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int) -> np.ndarray:
    """The mask at latent resolution as float32 ``[latent_height, latent_width]`` in 0..1.

    Each latent cell takes the *maximum* of the mask pixels it covers: a latent
    value decodes to the whole 8x8 block, so any painted pixel inside a cell
    means the cell must be regenerated. Averaging (or A1111's average then
    round) would drop thin strokes and leave their pixels unchanged.
    """
    if latent_width <= 0 or latent_height <= 0:
        raise ValueError(f"latent size must be positive, got {latent_width}x{latent_height}")
    values = np.asarray(_painted_values(mask), dtype=np.float32) / 255.0
    height, width = values.shape
    column_cells = [values[:, start:end].max(axis=1) for start, end in _cell_bounds(width, latent_width)]
    per_column = np.stack(column_cells, axis=1)
    row_cells = [per_column[start:end].max(axis=0) for start, end in _cell_bounds(height, latent_height)]
    return np.stack(row_cells, axis=0)


def _box_blur(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)-wide window along both image axes, treating outside pixels as zero.

    Cumulative sums make the cost independent of the radius. Zero padding is
    right for the normalised blur of :func:`fill_masked_area`: the known-pixel
    weights are padded alike, so the border bias cancels out.
    """
    window = 2 * radius + 1
    for axis in (0, 1):
        padding = [(0, 0)] * values.ndim
        padding[axis] = (radius + 1, radius)
        sums = np.cumsum(np.pad(values, padding), axis=axis, dtype=np.float32)
        ahead = [slice(None)] * values.ndim
        behind = [slice(None)] * values.ndim
        ahead[axis] = slice(window, None)
        behind[axis] = slice(None, -window)
        values = (sums[tuple(ahead)] - sums[tuple(behind)]) / window
    return values


def _smooth(values: np.ndarray, radius: int) -> np.ndarray:
    """Three box blurs in a row, a close approximation of a Gaussian, for a 2-D float32 array.

    Wide blurs are computed on a downscaled copy and scaled back: the result
    is smooth anyway, and it keeps a megapixel fill well under a second.
    """
    height, width = values.shape
    factor = radius // SMOOTH_DETAIL_RADIUS
    if factor >= 2:
        small_size = (max(1, -(-width // factor)), max(1, -(-height // factor)))
        small = np.asarray(Image.fromarray(values).resize(small_size, Image.Resampling.BOX))
        small = _smooth(small, max(1, round(radius / factor)))
        return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))
    for _ in range(3):
        values = _box_blur(values, radius)
    return values


def fill_masked_area(
    image: Image.Image, mask: Image.Image, mode: MaskedContent | int | str = MaskedContent.FILL
) -> Image.Image:
    """Prepare the pixels under the mask according to A1111's "Masked content" setting.

    For "fill", the masked area is replaced by a heavily blurred extension of
    the colours around it, so at moderate denoising the model starts from
    plausible colours instead of the object the user wants removed. It works
    from coarse to fine: blurs of decreasing radius, each normalised by how
    much unmasked image it saw, are layered so that far inside the mask only
    the wide averages remain and near its edge the nearby colours win.
    Unmasked pixels are returned unchanged. The other modes leave the pixels
    alone ("original" uses them as they are; the latent modes act after
    encoding). Returns RGB.
    """
    content = MaskedContent.from_value(mode)
    rgb, _ = to_rgb(image)
    if content != MaskedContent.FILL:
        return rgb
    if mask.size != rgb.size:
        raise ValueError(f"mask is {mask.width}x{mask.height} but the image is {rgb.width}x{rgb.height}")

    pixels = np.asarray(rgb, dtype=np.float32)
    known = 1.0 - np.asarray(_painted_values(mask), dtype=np.float32)[..., None] / 255.0
    known_total = float(known.sum())
    start_colour = (pixels * known).reshape(-1, 3).sum(axis=0) / known_total if known_total else NEUTRAL_FILL
    filled = np.broadcast_to(np.asarray(start_colour, dtype=np.float32), pixels.shape).copy()

    premultiplied = pixels * known
    radius = max(rgb.size) // 2
    while radius >= 1:
        coverage = _smooth(known[..., 0], radius)[..., None]
        colour_sum = np.stack([_smooth(premultiplied[..., channel], radius) for channel in range(3)], axis=-1)
        filled = colour_sum + (1.0 - coverage) * filled
        radius //= 2

    result = known * pixels + (1.0 - known) * filled
    return Image.fromarray(np.clip(np.rint(result), 0, 255).astype(np.uint8))
