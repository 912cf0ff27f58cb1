"""Control maps computed from pixels alone (no weights), shared by the ControlNet extension and training.

Why in the product rather than in the extension: a ControlNet only follows maps made the way its training
maps were made. The toy ControlNet's training script (tools/controlnet/) and the shipped controlnet extension's
`canny` preprocessor both call `canny` here, so the map a user's upload turns into is the map the model
learnt from. The extension reaches these through `webui.extensions.api`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

CANNY_LOW, CANNY_HIGH = 100.0, 200.0   # sd-webui-controlnet's default thresholds (0..255 gradient magnitude)


def gray(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32."""
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def at_resolution(image: Image.Image, resolution: int) -> Image.Image:
    """The image with its shorter side at `resolution` (where a preprocessor works)."""
    scale = resolution / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def map_to_rgb(mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A [0, 1] map as an RGB image of `size`. A binary map (edges, scribbles) stays binary: a thin line made
    at a higher resolution would fade to grey if averaged, so every target pixel it touches is kept white."""
    image = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8), "L")
    if image.size != size:
        binary = bool(np.isin(mask, (0.0, 1.0)).all())
        image = image.resize(size, Image.Resampling.BOX if binary else Image.Resampling.BILINEAR)
        if binary:
            image = image.point(lambda value: 255 if value > 0 else 0)
    return image.convert("RGB")


# tan(22.5 degrees) in 15-bit fixed point: the sector test of OpenCV's Canny, kept in integers so ties fall alike.
_TAN_22_5 = round(0.4142135623730950 * (1 << 15))


def canny(image: Image.Image, resolution: int, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """Canny edges as white lines on black, at the input's size, computed with the shorter side at `resolution`.

    The rules of OpenCV's `Canny(rgb, low, high)`, which sd-webui-controlnet's canny runs on the colour image:
    3x3 Sobel gradients of each colour channel (edges replicated, no smoothing), per pixel the channel with the
    largest |dx| + |dy|, non-maximum suppression along that gradient's sector, hysteresis (above `high`, or
    above `low` and 8-connected to such a pixel). On the colour image, an edge between two colours of equal
    brightness (red on blue, white on yellow) is found; a grey conversion first loses it.
    """
    pixels = np.asarray(at_resolution(image, resolution).convert("RGB"), dtype=np.int32)
    gx = np.stack([ndimage.sobel(pixels[..., c], axis=1, mode="nearest") for c in range(3)], axis=-1)
    gy = np.stack([ndimage.sobel(pixels[..., c], axis=0, mode="nearest") for c in range(3)], axis=-1)
    norms = np.abs(gx) + np.abs(gy)
    best = np.argmax(norms, axis=-1)[..., None]            # the first of equal channels, as OpenCV
    gx, gy = np.take_along_axis(gx, best, -1)[..., 0], np.take_along_axis(gy, best, -1)[..., 0]
    magnitude = np.take_along_axis(norms, best, -1)[..., 0]
    low, high = sorted((int(np.floor(low)), int(np.floor(high))))
    candidates = _ridge(magnitude, gx, gy) & (magnitude > low)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3)))
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[candidates & (magnitude > high)])] = True
    keep[0] = False
    return map_to_rgb(keep[labels].astype(np.float32), image.size)


def _ridge(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: a pixel is on the ridge if its magnitude beats its two neighbours across the
    edge (the gradient's sector: horizontal, vertical or one of the diagonals), with OpenCV's tie rules:
    strictly above the left / upper neighbour and at least the right / lower one, strictly above both on a
    diagonal. Outside the image the magnitude is 0."""
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def neighbour(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = np.abs(gx).astype(np.int64), np.abs(gy).astype(np.int64) << 15
    tan22x = ax * _TAN_22_5
    horizontal = ay < tan22x
    vertical = ~horizontal & (ay > tan22x + (ax << 16))
    diagonal = ~horizontal & ~vertical
    same_sign = (gx ^ gy) >= 0    # the gradient points down-right or up-left: the main diagonal
    return ((horizontal & (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1)))
            | (vertical & (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0)))
            | (diagonal & same_sign & (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1)))
            | (diagonal & ~same_sign & (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1))))
