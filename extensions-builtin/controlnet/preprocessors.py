"""ControlNet preprocessors that need no weights, each a small function, and the table that names them.

Every preprocessor takes the control image (PIL, already resized to the generation's size by the unit's
resize mode), the resolution it works at (pixel perfect: the generation's; else the unit's "Processor
Res"), its two parameters (sd-webui-controlnet's threshold A / B; -1 = the preprocessor's default) and a
seed, and returns the control map as an RGB image of the input's size. Names are sd-webui-controlnet's,
so API clients and pasted infotexts keep working.

Annotators that need weights (depth, normal, openpose, lineart, HED ...) are in `annotators.py` (through
`controlnet_aux`, when it imports and the weight files are there); `canonical` maps every name to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from webui.extensions import api

from . import annotators

ANNOTATOR_FOLDER = "models/ControlNet/annotators"   # under the data folder (the app says where: Services)


Preprocessor = Callable[[Image.Image, int, float, float, int], Image.Image]


@dataclass(frozen=True)
class Module:
    """A preprocessor with sd-webui-controlnet's name and its parameters' defaults."""

    name: str
    run: Preprocessor
    default_a: float = -1
    default_b: float = -1
    label_a: str = ""
    label_b: str = ""


_gray, _rgb = api.gray_map, api.map_to_rgb


def none(image: Image.Image, resolution: int, a: float, b: float, seed: int) -> Image.Image:
    """The image as it is (an already made map)."""
    return image.convert("RGB")


def canny(image: Image.Image, resolution: int, low: float, high: float, seed: int) -> Image.Image:
    """Canny edges (the product's `canny`, which the shipped toy ControlNet was trained on)."""
    return api.canny_edges(image, resolution, low, high)


def invert(image: Image.Image, resolution: int, a: float, b: float, seed: int) -> Image.Image:
    """Black lines on white (a drawing) -> white lines on black (what line ControlNets take)."""
    return _rgb(1.0 - _gray(image), image.size)


def scribble_threshold(image: Image.Image, resolution: int, threshold: float, b: float, seed: int) -> Image.Image:
    """A drawing's dark strokes (darker than `threshold` of 0..255) as white scribbles on black."""
    return _rgb((_gray(image) * 255.0 < threshold).astype(np.float32), image.size)


def threshold(image: Image.Image, resolution: int, level: float, b: float, seed: int) -> Image.Image:
    """Binary: white where brighter than `level` (0..255), else black."""
    return _rgb((_gray(image) * 255.0 > level).astype(np.float32), image.size)


def tile_resample(image: Image.Image, resolution: int, down: float, b: float, seed: int) -> Image.Image:
    """The tile ControlNet's input: the image with its detail removed by shrinking it `down` times."""
    factor = max(1.0, down)
    small = image.convert("RGB").resize((max(1, round(image.width / factor)), max(1, round(image.height / factor))),
                                        Image.Resampling.LANCZOS)
    return small.resize(image.size, Image.Resampling.BICUBIC)


def blur_gaussian(image: Image.Image, resolution: int, sigma: float, b: float, seed: int) -> Image.Image:
    """The image blurred by a Gaussian of `sigma` pixels (tile/blur ControlNets)."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(max(0.0, sigma)))


def shuffle(image: Image.Image, resolution: int, a: float, b: float, seed: int) -> Image.Image:
    """Content shuffle: pixels moved along a smooth random flow field (reproducible from the seed)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    generator = np.random.default_rng(seed)
    flows = [ndimage.gaussian_filter(generator.uniform(0, 1, (h, w)), max(h, w) / 16) for _ in range(2)]
    flows = [(flow - flow.min()) / max(float(np.ptp(flow)), 1e-6) for flow in flows]
    rows, cols = (flows[0] * (h - 1)).astype(np.float32), (flows[1] * (w - 1)).astype(np.float32)
    out = np.stack([ndimage.map_coordinates(rgb[..., c], [rows, cols], order=1) for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def color_segments(image: Image.Image, resolution: int, colors: float, b: float, seed: int) -> Image.Image:
    """Segmentation by colour: the image reduced to `colors` flat colour regions (median-cut quantisation,
    then a mode filter so regions have clean edges) — a stand-in for a segmentation map of flat scenes."""
    count = int(min(max(colors, 2), 256))
    quantised = image.convert("RGB").quantize(colors=count, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return quantised.filter(ImageFilter.ModeFilter(3)).convert("RGB")


def inpaint_mask(image: Image.Image, resolution: int, a: float, b: float, seed: int) -> Image.Image:
    """The inpaint ControlNet's input: the image with the masked area (transparent pixels of an RGBA image,
    where the mask was drawn) black, and the mask itself kept in the alpha channel for `control_tensor`."""
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    rgb = np.asarray(rgba.convert("RGB")).copy()
    rgb[alpha < 128] = 0
    out = Image.fromarray(rgb, "RGB").convert("RGBA")
    out.putalpha(Image.fromarray(np.where(alpha < 128, 0, 255).astype(np.uint8), "L"))
    return out


MODULES: dict[str, Module] = {module.name: module for module in (
    Module("none", none),
    Module("canny", canny, 100, 200, "Canny low threshold", "Canny high threshold"),
    Module("invert", invert),
    Module("scribble_threshold", scribble_threshold, 128, -1, "Threshold"),
    Module("threshold", threshold, 127, -1, "Binarization threshold"),
    Module("tile_resample", tile_resample, 4, -1, "Down sampling rate"),
    Module("blur_gaussian", blur_gaussian, 9, -1, "Sigma"),
    Module("shuffle", shuffle),
    Module("seg_color_quantize", color_segments, 8, -1, "Colours"),
    Module("inpaint_only", inpaint_mask),
)}
# sd-webui-controlnet's other names for the same preprocessors.
ALIASES = {"invert (from white bg & black line)": "invert", "binary": "threshold", "tile": "tile_resample",
           "blur": "blur_gaussian", "inpaint": "inpaint_only", "inpaint_global_harmonious": "inpaint_only",
           "scribble": "scribble_threshold", "segmentation": "seg_color_quantize"}


class UnknownModuleError(ValueError):
    """A preprocessor name that is not built in; the message lists those that are, or why it is missing."""


def canonical(name: str) -> str:
    """A preprocessor name (or one of sd-webui-controlnet's other names for it) as this extension names it."""
    wanted = (name or "none").strip()
    return ALIASES.get(wanted) or annotators.ALIASES.get(wanted) or wanted


def needs_weights(name: str) -> bool:
    """Whether `name` is an annotator that needs weight files (annotators.py runs those)."""
    wanted = canonical(name)
    return wanted in annotators.ANNOTATORS or wanted in annotators.NOT_RUN


def find_module(name: str) -> Module:
    """The weightless preprocessor `name`."""
    wanted = canonical(name)
    if wanted in MODULES:
        return MODULES[wanted]
    if needs_weights(wanted):
        raise UnknownModuleError(f"preprocessor {wanted!r} needs annotator weights (lllyasviel/Annotators files in "
                                 f"{ANNOTATOR_FOLDER}): the app's annotators run it")
    raise UnknownModuleError(f"preprocessor {name!r} is unknown; preprocessors: "
                             f"{', '.join([*MODULES, *annotators.ANNOTATORS])}")


def run_module(name: str, image: Image.Image, resolution: int, a: float = -1, b: float = -1, seed: int = 0) -> Image.Image:
    """The control map of `image` by preprocessor `name` (parameters -1: its defaults)."""
    module = find_module(name)
    return module.run(image, max(64, int(resolution)), module.default_a if a == -1 else a,
                      module.default_b if b == -1 else b, seed)


def control_tensor(control_map: Image.Image) -> np.ndarray:
    """The map as the ControlNet's input: 3 x H x W floats in [0, 1]; masked pixels of an inpaint map
    (alpha 0) are -1, diffusers' convention for the inpaint ControlNet."""
    rgb = np.asarray(control_map.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if control_map.mode == "RGBA":
        masked = np.asarray(control_map.getchannel("A")) < 128
        rgb[:, masked] = -1.0
    return rgb
