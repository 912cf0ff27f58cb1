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


def canny(image: Image.Image, resolution: int, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """Canny edges as white lines on black, at the input's size: smoothed gradients, thinned to their ridge,
    kept where strong or connected to strong ones (thresholds on 0..255 gradient magnitude, as
    sd-webui-controlnet's sliders); computed with the shorter side at `resolution`."""
    grayscale = gray(at_resolution(image, resolution)) * 255.0
    smooth = ndimage.gaussian_filter(grayscale, 0.7)
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)   # OpenCV's scale: a black-to-white step gives about 4 x 255
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    direction = np.digitize(angle, [22.5, 67.5, 112.5, 157.5]) % 4   # 0: horizontal gradient, 1: 45, 2: 90, 3: 135
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    ridge = np.zeros_like(magnitude, dtype=bool)
    for code, (dy, dx) in offsets.items():
        forward = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        backward = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        ridge |= (direction == code) & (magnitude >= forward) & (magnitude > backward)  # ties: one side
    thin = magnitude * ridge
    strong, weak = thin >= high, thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return map_to_rgb(keep[labels].astype(np.float32), image.size)
