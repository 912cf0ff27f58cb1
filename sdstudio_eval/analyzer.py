"""Measure what a toy-world image shows, attribute by attribute.

The analyzer is the judge for every generation and training feature: it reads
a (possibly imperfect) model output and reports shape, colour, background,
position, size, count and texture, or ``"unknown"`` where the picture does not
clearly show one of the toy world's values. It never raises on odd input.

Pipeline: the background is the dominant colour of the image border; objects
are connected regions that differ from it (specks ignored); each object is
described by geometric features of its mask (bounding-box fill, convex-hull
solidity, the harmonics of its radial outline) and by the colours inside it.
Colours are compared in CIELAB, where distances roughly match what people see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from sdstudio_eval import toy_world
from sdstudio_eval.toy_world import ATTRIBUTES, Scene

UNKNOWN = "unknown"

# Input: everything is measured on a square ANALYSIS_SIZE image.
ANALYSIS_SIZE = toy_world.NATIVE_SIZE
MIN_INPUT_SIDE = 16
MAX_ASPECT_DEVIATION = 0.05
PRE_SMOOTHING = 0.7  # Gaussian sigma (pixels) against pixel noise before anything is measured

# Colour distances are CIELAB delta E (1976) units.
BORDER_WIDTH = 3  # pixels of the image edge that sample the background
BORDER_UNIFORMITY = 12.0  # median border distance from its own median colour; noise images are far above
BORDER_MAJORITY = 0.5  # share of border pixels that must be background-coloured
FOREGROUND_DISTANCE = 20.0  # a pixel this far from the background belongs to an object
COLOR_MATCH_DISTANCE = 32.0  # half the smallest palette gap; farther from every entry -> "unknown"
PALETTE_CAPTURE_DISTANCE = 16.0  # pixels this close to a palette colour vote for it ...
PALETTE_CAPTURE_SHARE = 0.2  # ... and a colour with this share of an object's pixels wins
MODE_SEEKING_RADIUS = 12.0  # fallback for off-palette colours
MODE_SEEKING_STEPS = 4

# Objects.
MIN_OBJECT_AREA = 0.0015  # fraction of the image; smaller regions are specks
RELATIVE_OBJECT_AREA = 0.25  # regions below this share of the largest object are debris
MAX_OBJECTS = 12  # more separate regions than this is clutter or noise, not a scene
POSITION_TOLERANCE = 0.15  # farther from every anchor (fraction of the side) -> "unknown" position
SIZE_THRESHOLD = float(np.sqrt(toy_world.SIZE_EXTENTS["small"] * toy_world.SIZE_EXTENTS["large"]))
SIZE_RANGE = (0.09, 0.5)  # object extents outside this range are neither small nor large

# Texture. Blurred edges mix object and background colours over ~3 px, so
# colour and texture are read further inside.
INTERIOR_DEPTHS = (3.0, 2.0, 1.0)  # pixels from the outline, deepest first
MIN_INTERIOR_PIXELS = 40
TEXTURE_SMOOTHING = 0.8  # Gaussian sigma (pixels)
# Stripes and dots differ from the object mostly in lightness; chroma is
# down-weighted because pixel noise on saturated blues and greens shows up
# mainly there.
CHROMA_WEIGHTS = np.array([1.0, 0.35, 0.35])
TEXTURE_CONTRAST = 5.0  # 90th-percentile weighted deviation from the main colour that counts as a pattern
STRIPE_COHERENCE = 0.7  # structure-tensor coherence above this -> stripes, below -> dots

# Shape.
SUPERSAMPLE = 4  # object outlines are traced at 4x for sub-pixel accuracy
RADIAL_BINS = 128
# Circle vs hexagon: 6th harmonic plus the hexagon's 0.87 bounding-box aspect.
HEXAGON_ASPECT_WEIGHT = 0.4
HEXAGON_THRESHOLD = 0.036


@dataclass(frozen=True)
class ShapeFeatures:
    """Scale-invariant geometry of one object mask (also the basis of subject similarity)."""

    fill: float  # area / bounding-box area
    solidity: float  # area / convex-hull area
    aspect: float  # bounding-box height / width
    harmonics: tuple[float, ...]  # |FFT| of the radial outline for k = 1..12, relative to the mean radius

    def vector(self) -> np.ndarray:
        """Flat numeric form for distance computations."""
        return np.array([self.fill, self.solidity, self.aspect, *self.harmonics], dtype=np.float64)


@dataclass(frozen=True)
class ObjectReport:
    """What the analyzer measured for one object."""

    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in analysis pixels (exclusive end)
    area: int
    center: tuple[float, float]  # bounding-box centre, fractions of the image side
    extent: float  # larger bounding-box side, fraction of the image side
    shape: str
    color: str
    texture: str
    features: ShapeFeatures | None
    color_distance: float
    texture_contrast: float
    texture_coherence: float
    # The traced outline at SUPERSAMPLE x resolution, cropped to the object; lets
    # fidelity metrics redraw the object at other sizes.
    outline: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Analysis:
    """The attributes an image shows; each a toy-world value or ``"unknown"``.

    ``diagnostics`` says why a value is unknown and holds the raw measurements
    (distances, feature values, per-object reports) for debugging.
    """

    shape: str = UNKNOWN
    color: str = UNKNOWN
    background: str = UNKNOWN
    position: str = UNKNOWN
    size: str = UNKNOWN
    count: int | str = UNKNOWN
    texture: str = UNKNOWN
    diagnostics: dict[str, object] = field(default_factory=dict, compare=False)

    def attributes(self) -> dict[str, object]:
        """The seven attributes as a dict."""
        return {attribute: getattr(self, attribute) for attribute in ATTRIBUTES}

    def matches(self, expected: Scene | Mapping[str, object]) -> dict[str, bool]:
        """Per attribute, whether the image shows what ``expected`` asks for.

        A mapping may name only some attributes (a hand-written prompt); only
        those are compared. "unknown" never matches.
        """
        wanted = expected.attributes() if isinstance(expected, Scene) else dict(expected)
        unknown_names = sorted(set(wanted) - set(ATTRIBUTES))
        if unknown_names:
            raise ValueError(f"unknown attribute(s) {', '.join(unknown_names)}; valid attributes: {', '.join(ATTRIBUTES)}")
        return {attribute: getattr(self, attribute) == value for attribute, value in wanted.items()}

    @property
    def objects(self) -> list[ObjectReport]:
        """Per-object measurements (empty when no object was found)."""
        reports = self.diagnostics.get("objects", [])
        return list(reports) if isinstance(reports, list) else []


# ---------------------------------------------------------------------------
# Colour


_SRGB_TO_XYZ = (
    (0.4124564 / 0.95047, 0.3575761 / 0.95047, 0.1804375 / 0.95047),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339 / 1.08883, 0.1191920 / 1.08883, 0.9503041 / 1.08883),
)  # rows already divided by the D65 white point


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0..255, any leading shape (float32: plenty for colour distances)."""
    linear = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    linear = np.where(linear <= 0.04045, linear / np.float32(12.92), ((linear + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4))
    xyz = linear @ np.array(_SRGB_TO_XYZ, dtype=np.float32).T
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / np.float32(3 * delta**2) + np.float32(4 / 29))
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
    return lab.astype(np.float64)


def palette_lab(names: tuple[str, ...]) -> np.ndarray:
    """Lab coordinates of named toy-world colours, one row per name."""
    return srgb_to_lab(np.array([toy_world.COLOR_RGB[name] for name in names], dtype=np.float64))


def nearest_color(lab: np.ndarray, names: tuple[str, ...]) -> tuple[str, float]:
    """Closest palette name to one Lab colour and its distance; "unknown" when too far."""
    distances = np.linalg.norm(palette_lab(names) - np.asarray(lab, dtype=np.float64), axis=1)
    best = int(np.argmin(distances))
    name = names[best] if distances[best] <= COLOR_MATCH_DISTANCE else UNKNOWN
    return name, float(distances[best])


# ---------------------------------------------------------------------------
# Input handling


def to_rgb_array(image: object) -> tuple[np.ndarray | None, str]:
    """The image as a square ANALYSIS_SIZE RGB float array, or None and the reason it cannot be read.

    Opaque RGBA/palette images are read as RGB; grayscale, transparent,
    non-square and tiny images are refused because their colours or geometry
    would be guesses.
    """
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim != 3 or array.shape[2] not in (3, 4) or array.size == 0:
            return None, f"array of shape {array.shape} is not an H x W x 3 colour image"
        if not np.all(np.isfinite(array)):
            return None, "array contains NaN or infinite values"
        if array.dtype != np.uint8:
            scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
            array = np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(array))  # H x W x 3 -> RGB, H x W x 4 -> RGBA
    if not isinstance(image, Image.Image):
        return None, f"not an image: {type(image).__name__}"
    width, height = image.size
    if min(width, height) < MIN_INPUT_SIDE:
        return None, f"image is {width}x{height}; at least {MIN_INPUT_SIDE} px a side is needed"
    if abs(width / height - 1) > MAX_ASPECT_DEVIATION:
        return None, f"image is {width}x{height}; toy-world images are square"
    if image.mode in ("L", "I", "I;16", "F", "1", "LA"):
        return None, f"{image.mode} image has no colour information"
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa", "PA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            return None, "image has transparent pixels; their colour is undefined"
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as error:
        return None, f"cannot convert {image.mode} image to RGB: {error}"
    if rgb.size != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        resample = Image.Resampling.BOX if width > ANALYSIS_SIZE else Image.Resampling.BICUBIC
        rgb = rgb.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), resample)
    return np.asarray(rgb, dtype=np.float64), ""


# ---------------------------------------------------------------------------
# Geometry


def _convex_hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of a mask's pixel squares (0 when degenerate).

    Only the outer corners of each row's first and last pixel can be hull
    vertices, which keeps the point set small.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) == 0:
        return 0.0
    first = np.argmax(mask[rows], axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
    points = np.concatenate(
        [
            np.stack([first, rows], axis=1),
            np.stack([first, rows + 1], axis=1),
            np.stack([last + 1, rows], axis=1),
            np.stack([last + 1, rows + 1], axis=1),
        ]
    ).astype(np.float64)
    try:
        return float(ConvexHull(points).volume)
    except QhullError:
        return 0.0


def shape_features(mask: np.ndarray) -> ShapeFeatures | None:
    """Geometry of a binary object mask; None when the mask is empty or degenerate.

    The radial outline (farthest mask pixel from the centroid per angle bin)
    captures corners: a circle has flat harmonics, a triangle a strong 3rd, a
    square a 4th, a star a 5th and a hexagon a 6th harmonic.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 12:
        return None
    width = xs.max() - xs.min() + 1
    height = ys.max() - ys.min() + 1
    area = float(len(xs))
    hull_area = _convex_hull_area(mask)
    if hull_area <= 0:
        return None
    by, bx = np.nonzero(mask & ~ndimage.binary_erosion(mask))  # outline pixels
    center_x, center_y = xs.mean() + 0.5, ys.mean() + 0.5
    px, py = bx + 0.5 - center_x, by + 0.5 - center_y
    angles = np.arctan2(py, px)
    radii = np.hypot(px, py) + 0.5
    bins = ((angles + np.pi) / (2 * np.pi) * RADIAL_BINS).astype(int) % RADIAL_BINS
    profile = np.zeros(RADIAL_BINS)
    np.maximum.at(profile, bins, radii)
    filled = profile > 0
    if filled.sum() < RADIAL_BINS // 2:
        return None
    if not filled.all():  # bins a small object's outline skipped: interpolate around the circle
        positions = np.arange(RADIAL_BINS)
        profile = np.interp(positions, positions[filled], profile[filled], period=RADIAL_BINS)
    spectrum = np.abs(np.fft.rfft(profile)) / RADIAL_BINS
    harmonics = tuple(float(2 * value / spectrum[0]) for value in spectrum[1:13])
    return ShapeFeatures(
        fill=area / float(width * height),
        solidity=min(1.0, area / hull_area),
        aspect=float(height) / float(width),
        harmonics=harmonics,
    )


def classify_shape(features: ShapeFeatures | None) -> str:
    """Name the toy-world shape that matches the features, or "unknown".

    Each shape has one dominant outline harmonic (triangle 3, square 4, star 5),
    backed by fill and solidity ranges; circle and hexagon are both round and
    differ in the 6th harmonic and the hexagon's flat top (aspect 0.87).
    Thresholds sit mid-way between the ranges measured on 1200 clean and
    blurred+noisy renders (see docs/TOY_WORLD.md).
    """
    if features is None:
        return UNKNOWN
    h3, h4, h5, h6 = features.harmonics[2:6]
    low_order = max(features.harmonics[:5])
    if h5 > 0.12 and h5 > 2.5 * max(h3, h4) and features.solidity < 0.88 and 0.38 < features.fill < 0.68:
        return "star"
    if features.solidity < 0.9:
        return UNKNOWN
    if h3 > 0.16 and h3 > 2.5 * max(h4, h5) and 0.47 < features.fill < 0.7 and h6 > 0.03:
        return "triangle"
    if h4 > 0.085 and h4 > 2.5 * max(h3, h5) and features.fill > 0.86 and 0.87 < features.aspect < 1.15:
        return "square"
    if low_order < 0.05 and 0.69 < features.fill < 0.83:
        hexagon_score = h6 + HEXAGON_ASPECT_WEIGHT * abs(1 - features.aspect)
        if hexagon_score > HEXAGON_THRESHOLD:
            return "hexagon" if 0.015 < h6 < 0.1 else UNKNOWN
        return "circle" if abs(1 - features.aspect) < 0.07 else UNKNOWN
    return UNKNOWN


# ---------------------------------------------------------------------------
# Analysis


def _unanimous(values: list[str]) -> str:
    """The value every object agrees on; "unknown" for mixed or empty lists.

    The toy world's objects are identical, so disagreement means the image does
    not show one clear value.
    """
    return values[0] if values and all(value == values[0] for value in values) else UNKNOWN


def _find_background(lab: np.ndarray, diagnostics: dict[str, object]) -> tuple[np.ndarray | None, str]:
    """Reference Lab colour of the background and its palette name (or "unknown")."""
    border = np.concatenate(
        [
            lab[:BORDER_WIDTH].reshape(-1, 3),
            lab[-BORDER_WIDTH:].reshape(-1, 3),
            lab[BORDER_WIDTH:-BORDER_WIDTH, :BORDER_WIDTH].reshape(-1, 3),
            lab[BORDER_WIDTH:-BORDER_WIDTH, -BORDER_WIDTH:].reshape(-1, 3),
        ]
    )
    median = np.median(border, axis=0)
    spread = float(np.median(np.linalg.norm(border - median, axis=1)))
    diagnostics["border_spread"] = spread
    if spread > BORDER_UNIFORMITY:
        diagnostics["reason"] = "the image border has no dominant colour (no flat background)"
        return None, UNKNOWN
    palette = palette_lab(toy_world.BACKGROUNDS)
    distances = np.linalg.norm(border[:, None, :] - palette[None, :, :], axis=2)
    nearest = np.argmin(distances, axis=1)
    close = distances[np.arange(len(border)), nearest] <= COLOR_MATCH_DISTANCE
    shares = np.bincount(nearest[close], minlength=len(palette)) / len(border)
    best = int(np.argmax(shares))
    diagnostics["background_share"] = float(shares[best])
    if shares[best] >= BORDER_MAJORITY:
        chosen = close & (nearest == best)
        reference = np.median(border[chosen], axis=0)
        name, distance = nearest_color(reference, toy_world.BACKGROUNDS)
        diagnostics["background_distance"] = distance
        return reference, name
    diagnostics["background_distance"] = float(np.min(np.linalg.norm(palette - median, axis=1)))
    return median, UNKNOWN


def _object_mask_supersampled(distance: np.ndarray, component: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """The object's outline traced at SUPERSAMPLE x resolution from the smooth background-distance map."""
    x0, y0, x1, y1 = bbox
    margin = 2
    top, left = max(0, y0 - margin), max(0, x0 - margin)
    bottom, right = min(distance.shape[0], y1 + margin), min(distance.shape[1], x1 + margin)
    crop = distance[top:bottom, left:right]
    region = ndimage.binary_dilation(component[top:bottom, left:right], iterations=1)
    fine = ndimage.zoom(crop, SUPERSAMPLE, order=1, mode="nearest", grid_mode=True)
    fine_region = np.kron(region, np.ones((SUPERSAMPLE, SUPERSAMPLE), dtype=bool))[: fine.shape[0], : fine.shape[1]]
    mask = ndimage.binary_fill_holes((fine > FOREGROUND_DISTANCE) & fine_region)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def _main_color(pixels: np.ndarray) -> np.ndarray:
    """The dominant colour among an object's pixels, robust to stripes, dots and blur.

    First choice: the palette colour that the most pixels lie close to (if at
    least a fifth do), refined to those pixels' median, so a small striped
    object whose pixels are half pattern and half blend still reads right.
    Otherwise (an off-palette colour) a mode-seeking median.
    """
    distances = np.linalg.norm(pixels[:, None, :] - palette_lab(toy_world.COLORS)[None, :, :], axis=2)
    captured = distances < PALETTE_CAPTURE_DISTANCE
    counts = captured.sum(axis=0)
    best = int(np.argmax(counts))
    if counts[best] >= PALETTE_CAPTURE_SHARE * len(pixels):
        return np.median(pixels[captured[:, best]], axis=0)
    estimate = np.median(pixels, axis=0)
    for _ in range(MODE_SEEKING_STEPS):
        near = pixels[np.linalg.norm(pixels - estimate, axis=1) < MODE_SEEKING_RADIUS]
        if len(near) == 0:
            break
        estimate = np.median(near, axis=0)
    return estimate


def _texture_measures(lab: np.ndarray, interior: np.ndarray, main_color: np.ndarray) -> tuple[float, float]:
    """Pattern contrast inside the object and its coherence (1 = parallel stripes, 0 = isotropic dots).

    Only interior pixels are read, then lightly blurred: pixel noise has no
    spatial structure and averages away, stripes and dots several pixels wide
    survive. For the contrast everything outside the interior counts as the
    main colour, which also damps the last traces of the blurred outline. For
    the coherence it is filled from the nearest interior pixel instead, so the
    cut ends of a stripe do not read as edges across it.
    """

    def deviation_from_main(filled: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(filled, sigma=(TEXTURE_SMOOTHING, TEXTURE_SMOOTHING, 0))
        return np.linalg.norm((smooth - main_color) * CHROMA_WEIGHTS, axis=2)

    contrast = float(np.percentile(deviation_from_main(np.where(interior[..., None], lab, main_color))[interior], 90))
    nearest = ndimage.distance_transform_edt(~interior, return_distances=False, return_indices=True)
    deviation = deviation_from_main(lab[nearest[0], nearest[1]])
    gx = ndimage.sobel(deviation, axis=1)
    gy = ndimage.sobel(deviation, axis=0)
    jxx, jyy, jxy = (gx * gx)[interior].sum(), (gy * gy)[interior].sum(), (gx * gy)[interior].sum()
    total = jxx + jyy
    coherence = 0.0 if total <= 1e-9 else float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / total)
    return contrast, coherence


def _interior(mask: np.ndarray) -> np.ndarray:
    """The part of an object mask far enough from its outline to show true colours.

    INTERIOR_DEPTH pixels in where that leaves at least MIN_INTERIOR_PIXELS;
    thin objects (a small star) get shallower interiors rather than none.
    """
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    for threshold in INTERIOR_DEPTHS:
        interior = depth > threshold
        if interior.sum() >= MIN_INTERIOR_PIXELS:
            return interior
    return mask


def _describe_object(lab: np.ndarray, distance: np.ndarray, component: np.ndarray, bbox: tuple[int, int, int, int]) -> ObjectReport:
    """Shape, colour and texture of one connected object (``component`` is its mask within ``bbox``)."""
    x0, y0, x1, y1 = bbox
    side = float(lab.shape[0])
    outline = _object_mask_supersampled(distance, component, bbox)
    features = shape_features(outline)
    margin = 2
    top, left = max(0, y0 - margin), max(0, x0 - margin)
    bottom, right = min(lab.shape[0], y1 + margin), min(lab.shape[1], x1 + margin)
    local_lab = lab[top:bottom, left:right]
    local_mask = component[top:bottom, left:right]
    interior = _interior(local_mask)
    main_color = _main_color(local_lab[interior])
    color, color_distance = nearest_color(main_color, toy_world.COLORS)
    contrast, coherence = _texture_measures(local_lab, interior, main_color)
    if contrast < TEXTURE_CONTRAST:
        texture = "solid"
    else:
        texture = "striped" if coherence > STRIPE_COHERENCE else "dotted"
    return ObjectReport(
        bbox=bbox,
        area=int(local_mask.sum()),
        center=((x0 + x1) / 2 / side, (y0 + y1) / 2 / side),
        extent=max(x1 - x0, y1 - y0) / side,
        shape=classify_shape(features),
        color=color,
        texture=texture,
        features=features,
        color_distance=color_distance,
        texture_contrast=contrast,
        texture_coherence=coherence,
        outline=_crop_to_content(outline),
    )


def _crop_to_content(mask: np.ndarray) -> np.ndarray | None:
    """The mask cut down to its bounding box (None when empty)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _classify_position(center: tuple[float, float]) -> str:
    """The anchor nearest the group centre, or "unknown" when it is between anchors."""
    names = list(toy_world.POSITION_ANCHORS)
    anchors = np.array([toy_world.POSITION_ANCHORS[name] for name in names])
    distances = np.linalg.norm(anchors - np.asarray(center), axis=1)
    best = int(np.argmin(distances))
    return names[best] if distances[best] <= POSITION_TOLERANCE else UNKNOWN


def _classify_size(extent: float) -> str:
    """Small or large by the larger bounding-box side, "unknown" when implausible."""
    if not SIZE_RANGE[0] <= extent <= SIZE_RANGE[1]:
        return UNKNOWN
    return "large" if extent >= SIZE_THRESHOLD else "small"


def analyze(image: object) -> Analysis:
    """Read the toy-world attributes an image shows; never raises on bad input.

    Accepts a PIL image or an H x W x 3 array (uint8 or floats in 0..1). Images
    that are not square RGB toy-world pictures come back all "unknown" with the
    reason in ``diagnostics["reason"]``.
    """
    try:
        rgb, reason = to_rgb_array(image)
        if rgb is None:
            return Analysis(diagnostics={"reason": reason})
        return _analyze_rgb(rgb)
    except Exception as error:  # an evaluation over many model outputs must not die on one odd image
        return Analysis(diagnostics={"reason": f"analysis failed: {type(error).__name__}: {error}"})


def _analyze_rgb(rgb: np.ndarray) -> Analysis:
    """The analysis proper, on an ANALYSIS_SIZE x ANALYSIS_SIZE RGB float array."""
    diagnostics: dict[str, object] = {}
    lab = srgb_to_lab(ndimage.gaussian_filter(rgb, sigma=(PRE_SMOOTHING, PRE_SMOOTHING, 0)))
    reference, background = _find_background(lab, diagnostics)
    if reference is None:
        return Analysis(diagnostics=diagnostics)
    distance = np.linalg.norm(lab - reference, axis=2)
    foreground = ndimage.binary_fill_holes(distance > FOREGROUND_DISTANCE)
    labels, found = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    side = lab.shape[0]
    if found == 0:
        diagnostics["reason"] = "no object differs from the background"
        return Analysis(background=background, diagnostics=diagnostics)
    areas = ndimage.sum_labels(foreground, labels, index=np.arange(1, found + 1))
    min_area = max(MIN_OBJECT_AREA * side * side, RELATIVE_OBJECT_AREA * float(areas.max()))
    kept = [index + 1 for index, area in enumerate(areas) if area >= min_area]
    diagnostics["components"] = int(found)
    diagnostics["ignored_specks"] = int(found - len(kept))
    diagnostics["object_count"] = len(kept)
    if not kept:
        diagnostics["reason"] = "only specks differ from the background"
        return Analysis(background=background, diagnostics=diagnostics)
    if len(kept) > MAX_OBJECTS:
        diagnostics["reason"] = f"{len(kept)} separate regions: not a toy-world scene"
        return Analysis(background=background, diagnostics=diagnostics)
    slices = ndimage.find_objects(labels)
    reports = []
    for label in kept:
        rows, cols = slices[label - 1]
        bbox = (cols.start, rows.start, cols.stop, rows.stop)
        reports.append(_describe_object(lab, distance, labels == label, bbox))
    diagnostics["objects"] = reports
    group_center = (float(np.mean([r.center[0] for r in reports])), float(np.mean([r.center[1] for r in reports])))
    mean_extent = float(np.mean([r.extent for r in reports]))
    diagnostics["group_center"] = group_center
    diagnostics["mean_extent"] = mean_extent
    return Analysis(
        shape=_unanimous([r.shape for r in reports]),
        color=_unanimous([r.color for r in reports]),
        background=background,
        position=_classify_position(group_center),
        size=_classify_size(mean_extent),
        count=len(reports) if len(reports) in toy_world.COUNTS else UNKNOWN,
        texture=_unanimous([r.texture for r in reports]),
        diagnostics=diagnostics,
    )


def validate_analyzer(
    n: int = 1000,
    seed: int = 0,
    *,
    size: int = toy_world.NATIVE_SIZE,
    blur_radius: float = 0.0,
    noise_sigma: float = 0.0,
    include_held_out: bool = True,
) -> dict[str, float]:
    """Accuracy per attribute (and "all") on ``n`` fresh random renders.

    Optional blur and noise (``toy_world.degrade``) imitate imperfect model
    outputs; ``size`` renders at another resolution (the analyzer resamples).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng([seed, 0xA7A])
    hits = dict.fromkeys(ATTRIBUTES, 0)
    all_hits = 0
    for index in range(n):
        scene = toy_world.random_scene(rng, include_held_out=include_held_out)
        image = toy_world.render(scene, size=size, seed=seed * 100_003 + index)
        if blur_radius > 0 or noise_sigma > 0:
            image = toy_world.degrade(image, blur_radius, noise_sigma, seed=seed * 100_003 + index)
        matches = analyze(image).matches(scene)
        for attribute, matched in matches.items():
            hits[attribute] += matched
        all_hits += all(matches.values())
    report = {attribute: hits[attribute] / n for attribute in ATTRIBUTES}
    report["all"] = all_hits / n
    return report
