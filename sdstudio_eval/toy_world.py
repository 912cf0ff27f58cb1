"""A procedural image domain with exact captions: the "toy world".

Real Stable Diffusion weights cannot be downloaded here, so features such as
generation, LoRA, DreamBooth and textual inversion are judged on a small
SD1.x-architecture model trained on this domain instead. Every image is a flat
background with one to three identical objects; every attribute of the picture
is named in its caption, so a generated image can be checked attribute by
attribute (see ``sdstudio_eval.analyzer``).

Some shapes and one texture are *held out*: they never appear in the base
training set (``include_held_out=False``) and serve as new concepts for the
personalization features, the way DreamBooth teaches a model a new subject.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BASE_SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPES = ("hexagon", "star")
SHAPES = BASE_SHAPES + HELD_OUT_SHAPES
BASE_TEXTURES = ("solid", "striped")
HELD_OUT_TEXTURES = ("dotted",)
TEXTURES = BASE_TEXTURES + HELD_OUT_TEXTURES
# Colours sit far apart in CIELAB (every pair more than 60 units), so a slightly
# off colour from an imperfect model still has one clear nearest name.
COLOR_RGB: Mapping[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 80, 210),
    "yellow": (235, 205, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLORS = tuple(COLOR_RGB)
# Backgrounds reuse colour names (same RGB). Red is left out so that the darker
# stripe/dot shade of every object colour still contrasts with every background.
BACKGROUNDS = ("white", "black", "blue", "yellow", "green")
POSITIONS = ("left", "center", "right", "top", "bottom")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)

# Where a group of objects is centred, as fractions of the image side (x, y).
POSITION_ANCHORS: Mapping[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "center": (0.5, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
# Larger side of an object's bounding box, as a fraction of the image side. The
# same for every shape and count, so "large" means one thing everywhere; three
# large objects still fit in a column on the left or right.
SIZE_EXTENTS: Mapping[str, float] = {"small": 0.17, "large": 0.27}
SIZE_JITTER = 0.05  # extents vary by up to +-5 %
GROUP_GAP = 0.055  # empty space between neighbouring objects (7 px at 128: blur must not merge them)
ANCHOR_JITTER = 0.01
OBJECT_JITTER = 0.005
# Texture scale in pixels of a 128 px image (it scales with the image).
STRIPE_PERIOD = 11.0
STRIPE_SHADE_WIDTH = 4.5
DOT_SPACING = 9.5
DOT_RADIUS = 3.0
SHADE_DARKEN = 0.5  # stripes/dots are the object colour at half brightness ...
SHADE_LIGHTEN = 0.45  # ... or, for black, mixed 45 % towards white
SUPERSAMPLING = 4
NATIVE_SIZE = 128

COUNT_WORDS: Mapping[int, str] = {1: "a", 2: "two", 3: "three"}
POSITION_PHRASES: Mapping[str, str] = {
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
PLURAL_SHAPES: Mapping[str, str] = {shape: shape + "s" for shape in SHAPES}
ATTRIBUTES = ("shape", "color", "background", "position", "size", "count", "texture")
DEFAULT_ATTRIBUTES: Mapping[str, object] = {
    "shape": "circle",
    "color": "red",
    "background": "white",
    "position": "center",
    "size": "large",
    "count": 1,
    "texture": "solid",
}


def valid_values(attribute: str) -> tuple[object, ...]:
    """The allowed values of one scene attribute (held-out ones included)."""
    table: Mapping[str, tuple[object, ...]] = {
        "shape": SHAPES,
        "color": COLORS,
        "background": BACKGROUNDS,
        "position": POSITIONS,
        "size": SIZES,
        "count": COUNTS,
        "texture": TEXTURES,
    }
    if attribute not in table:
        raise ValueError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(ATTRIBUTES)}")
    return table[attribute]


@dataclass(frozen=True)
class Scene:
    """Everything a toy-world picture shows; captions and renders derive from it."""

    shape: str
    color: str
    background: str
    position: str = "center"
    size: str = "large"
    count: int = 1
    texture: str = "solid"

    def __post_init__(self) -> None:
        for attribute in ATTRIBUTES:
            value = getattr(self, attribute)
            allowed = valid_values(attribute)
            if attribute == "count" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"count must be an integer, one of {', '.join(map(str, COUNTS))}; got {value!r}")
            if value not in allowed:
                listing = ", ".join(str(option) for option in allowed)
                raise ValueError(f"invalid {attribute} {value!r}; valid values: {listing}")
        if self.color == self.background:
            raise ValueError(f"the object colour and the background are both {self.color!r}; they must differ")
        object.__setattr__(self, "count", int(self.count))  # numpy integers become plain ints (JSON, hashing)

    @property
    def is_held_out(self) -> bool:
        """Whether the scene uses a concept that base training data never shows."""
        return self.shape in HELD_OUT_SHAPES or self.texture in HELD_OUT_TEXTURES

    def attributes(self) -> dict[str, object]:
        """The scene as a plain dict (for JSON metadata and comparisons)."""
        return {attribute: getattr(self, attribute) for attribute in ATTRIBUTES}


def scene_from_attributes(**attributes: object) -> Scene:
    """Build a scene from keyword attributes, filling the rest with defaults.

    Unknown attribute names or values raise ``ValueError`` naming the valid
    ones. When only the colour is given and it equals the default background,
    the background falls back to black so the call still yields a valid scene.
    """
    unknown = sorted(set(attributes) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {', '.join(unknown)}; valid attributes: {', '.join(ATTRIBUTES)}")
    values = dict(DEFAULT_ATTRIBUTES)
    values.update(attributes)
    if isinstance(values["count"], str) and values["count"].strip().isdigit():
        values["count"] = int(values["count"])
    if "background" not in attributes and values["color"] == values["background"]:
        values["background"] = "black"
    return Scene(**values)  # type: ignore[arg-type]


def random_scene(rng: np.random.Generator, include_held_out: bool = False) -> Scene:
    """A uniformly random valid scene; held-out shapes/textures only when asked."""
    shapes = SHAPES if include_held_out else BASE_SHAPES
    textures = TEXTURES if include_held_out else BASE_TEXTURES
    color = COLORS[rng.integers(len(COLORS))]
    backgrounds = [name for name in BACKGROUNDS if name != color]
    return Scene(
        shape=shapes[rng.integers(len(shapes))],
        color=color,
        background=backgrounds[rng.integers(len(backgrounds))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
        size=SIZES[rng.integers(len(SIZES))],
        count=int(COUNTS[rng.integers(len(COUNTS))]),
        texture=textures[rng.integers(len(textures))],
    )


# ---------------------------------------------------------------------------
# Captions


def caption(scene: Scene) -> str:
    """The scene as an SD-style prompt, e.g. "two large striped green squares on the left, yellow background".

    Word order is fixed (count, size, texture, colour, shape, position,
    background) and "solid" is implied by omitting the texture word, so captions
    read naturally and parse back exactly.
    """
    noun = scene.shape if scene.count == 1 else PLURAL_SHAPES[scene.shape]
    words = [COUNT_WORDS[scene.count], scene.size]
    if scene.texture != "solid":
        words.append(scene.texture)
    words += [scene.color, noun, POSITION_PHRASES[scene.position]]
    return f"{' '.join(words)}, {scene.background} background"


_NUMBER_WORDS: Mapping[str, int] = {"a": 1, "an": 1, "one": 1, "single": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}
_SHAPE_WORDS: Mapping[str, tuple[str, bool]] = {
    **{shape: (shape, False) for shape in SHAPES},
    **{plural: (shape, True) for shape, plural in PLURAL_SHAPES.items()},
}
_POSITION_WORDS: Mapping[str, str] = {
    "left": "left",
    "right": "right",
    "center": "center",
    "centre": "center",
    "middle": "center",
    "centered": "center",
    "top": "top",
    "bottom": "bottom",
}
_SIZE_WORDS: Mapping[str, str] = {"small": "small", "large": "large", "big": "large"}
_TEXTURE_WORDS: Mapping[str, str] = {"solid": "solid", "plain": "solid", "striped": "striped", "dotted": "dotted"}


def _set_once(found: dict[str, object], attribute: str, value: object, text: str) -> None:
    """Record an attribute, refusing prompts that name two different values."""
    if attribute in found and found[attribute] != value:
        raise ValueError(f"prompt {text!r} names two different {attribute} values: {found[attribute]!r} and {value!r}")
    found[attribute] = value


_NOUN_PHRASE_WORDS = frozenset(COLOR_RGB) | frozenset(_SIZE_WORDS) | frozenset(_TEXTURE_WORDS) | frozenset(_NUMBER_WORDS)


def _leads_noun_phrase(tokens: list[str], index: int, shape_index: int) -> bool:
    """Whether only number, size, texture and colour words stand between ``tokens[index]`` and the shape."""
    return all(token in _NOUN_PHRASE_WORDS for token in tokens[index + 1:shape_index])


def parse_prompt(text: str) -> dict[str, object]:
    """Read whatever toy-world attributes a hand-written prompt names.

    Words the toy world does not know ("a photo of", "masterpiece", ...) are
    ignored; a colour right before "background" is the background, colour,
    size, texture and count words before the shape word describe the object.
    Only attributes the prompt actually names are returned, so a short prompt
    such as "a red hexagon" gives ``{"count": 1, "color": "red", "shape": "hexagon"}``.
    Contradictions (two object colours, "two ... circle" is fine) raise ValueError.
    """
    tokens = re.findall(r"[a-z0-9]+", text.lower())
    found: dict[str, object] = {}
    shape_index = next((i for i, token in enumerate(tokens) if token in _SHAPE_WORDS), None)
    for index, token in enumerate(tokens):
        next_token = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in COLOR_RGB and next_token == "background":
            if token not in BACKGROUNDS:
                raise ValueError(f"invalid background {token!r}; valid values: {', '.join(BACKGROUNDS)}")
            _set_once(found, "background", token, text)
        elif token in _POSITION_WORDS:
            _set_once(found, "position", _POSITION_WORDS[token], text)
        elif shape_index is not None and index < shape_index:
            if token in COLOR_RGB:
                _set_once(found, "color", token, text)
            elif token in _SIZE_WORDS:
                _set_once(found, "size", _SIZE_WORDS[token], text)
            elif token in _TEXTURE_WORDS:
                _set_once(found, "texture", _TEXTURE_WORDS[token], text)
            elif token in _NUMBER_WORDS and _leads_noun_phrase(tokens, index, shape_index):
                # Only a number word that starts the shape's noun phrase counts: "a photo of two circles"
                # is two, and the "a" of "a picture of red circles" names no count.
                found["count"] = _NUMBER_WORDS[token]
        elif index == shape_index:
            shape, plural = _SHAPE_WORDS[token]
            found["shape"] = shape
            if not plural and "count" not in found:
                found["count"] = 1
        elif token in _SHAPE_WORDS and _SHAPE_WORDS[token][0] != found.get("shape"):
            raise ValueError(f"prompt {text!r} names more than one shape")
    if found.get("count") == 1 and shape_index is not None and _SHAPE_WORDS[tokens[shape_index]][1]:
        raise ValueError(f"prompt {text!r} uses a plural shape with a count of one")
    return found


def parse_caption(text: str) -> Scene:
    """Turn a complete caption (ours or hand-written in the same words) back into a Scene.

    The texture may be left out (it means "solid"); shape, colour, background,
    position and size must be named, and a plural shape needs a number word.
    """
    found = parse_prompt(text)
    found.setdefault("texture", "solid")
    missing = [attribute for attribute in ATTRIBUTES if attribute not in found]
    if missing:
        raise ValueError(f"caption {text!r} does not name: {', '.join(missing)}")
    return Scene(**found)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class PlacedObject:
    """One object of a rendered scene, in fractions of the image side."""

    center_x: float
    center_y: float
    extent: float
    texture_phase_x: float
    texture_phase_y: float


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of a shape whose bounding box is centred on 0 with larger side 1 (y points down)."""
    if shape == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if shape == "triangle":
        half_height = np.sqrt(3) / 4
        return [(0.0, -half_height), (0.5, half_height), (-0.5, half_height)]
    if shape == "hexagon":  # flat top and bottom, pointy left and right
        return [(0.5 * np.cos(angle), 0.5 * np.sin(angle)) for angle in np.deg2rad(np.arange(0, 360, 60))]
    if shape == "star":
        outer = 0.5 / np.cos(np.deg2rad(18))  # width 2*R*sin(72) == 1
        inner = outer * 0.45
        points = []
        for index in range(10):
            radius = outer if index % 2 == 0 else inner
            angle = np.deg2rad(-90 + 36 * index)
            points.append((radius * np.cos(angle), radius * np.sin(angle)))
        shift = outer * (1 - np.cos(np.deg2rad(36))) / 2  # centre the bounding box vertically
        return [(x, y + shift) for x, y in points]
    raise ValueError(f"no outline for shape {shape!r}")


def shade_rgb(color: str) -> tuple[int, int, int]:
    """The stripe/dot colour of a textured object: darker, or lighter for black."""
    red, green, blue = COLOR_RGB[color]
    if color == "black":
        return tuple(int(round(c + (255 - c) * SHADE_LIGHTEN)) for c in (red, green, blue))  # type: ignore[return-value]
    return tuple(int(round(c * SHADE_DARKEN)) for c in (red, green, blue))  # type: ignore[return-value]


def layout(scene: Scene, seed: int = 0) -> list[PlacedObject]:
    """Where each object goes: the group is centred on its position anchor, with small seeded jitter.

    Groups on the left or right stand in a column, all others in a row, so three
    large objects fit anywhere.
    """
    rng = np.random.default_rng([seed, 0x70F])
    extent = SIZE_EXTENTS[scene.size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    anchor_x, anchor_y = POSITION_ANCHORS[scene.position]
    anchor_x += rng.uniform(-ANCHOR_JITTER, ANCHOR_JITTER)
    anchor_y += rng.uniform(-ANCHOR_JITTER, ANCHOR_JITTER)
    pitch = SIZE_EXTENTS[scene.size] * (1 + SIZE_JITTER) + GROUP_GAP
    vertical = scene.position in ("left", "right")
    placed = []
    for index in range(scene.count):
        offset = (index - (scene.count - 1) / 2) * pitch
        placed.append(
            PlacedObject(
                center_x=anchor_x + (0 if vertical else offset) + rng.uniform(-OBJECT_JITTER, OBJECT_JITTER),
                center_y=anchor_y + (offset if vertical else 0) + rng.uniform(-OBJECT_JITTER, OBJECT_JITTER),
                extent=extent,
                texture_phase_x=float(rng.uniform()),
                texture_phase_y=float(rng.uniform()),
            )
        )
    return placed


def _texture_tile(scene: Scene, width: int, height: int, obj: PlacedObject, pixel_scale: float) -> Image.Image:
    """The object's fill (plain colour, stripes or dots) for a box of the given size.

    ``pixel_scale`` is canvas pixels per pixel of a 128 px image, so textures
    keep their look at any output size.
    """
    tile = Image.new("RGB", (width, height), COLOR_RGB[scene.color])
    if scene.texture == "solid":
        return tile
    draw = ImageDraw.Draw(tile)
    shade = shade_rgb(scene.color)
    if scene.texture == "striped":
        period = STRIPE_PERIOD * pixel_scale
        band = STRIPE_SHADE_WIDTH * pixel_scale
        top = -obj.texture_phase_y * period
        while top < height:
            draw.rectangle([0, round(top), width, round(top + band) - 1], fill=shade)
            top += period
    elif scene.texture == "dotted":
        spacing = DOT_SPACING * pixel_scale
        radius = DOT_RADIUS * pixel_scale
        y = -obj.texture_phase_y * spacing
        while y < height + spacing:
            x = -obj.texture_phase_x * spacing
            while x < width + spacing:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=shade)
                x += spacing
            y += spacing
    return tile


def render(scene: Scene, size: int = NATIVE_SIZE, seed: int = 0) -> Image.Image:
    """Draw the scene as an RGB image of ``size`` x ``size`` pixels.

    Drawn at 4x and box-downsampled, so edges are anti-aliased like a real
    photo's. The same scene, size and seed always give identical pixels; the
    seed moves and resizes objects slightly so training images vary.
    """
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    canvas_side = size * SUPERSAMPLING
    pixel_scale = canvas_side / NATIVE_SIZE
    canvas = Image.new("RGB", (canvas_side, canvas_side), COLOR_RGB[scene.background])
    for obj in layout(scene, seed):
        side = obj.extent * canvas_side
        left = int(np.floor((obj.center_x - obj.extent / 2) * canvas_side)) - 2
        top = int(np.floor((obj.center_y - obj.extent / 2) * canvas_side)) - 2
        box_side = int(np.ceil(side)) + 5
        mask = Image.new("L", (box_side, box_side), 0)
        draw = ImageDraw.Draw(mask)
        center_x = obj.center_x * canvas_side - left
        center_y = obj.center_y * canvas_side - top
        if scene.shape == "circle":
            draw.ellipse([center_x - side / 2, center_y - side / 2, center_x + side / 2, center_y + side / 2], fill=255)
        else:
            outline = [(center_x + x * side, center_y + y * side) for x, y in _unit_outline(scene.shape)]
            draw.polygon(outline, fill=255)
        canvas.paste(_texture_tile(scene, box_side, box_side, obj, pixel_scale), (left, top), mask)
    return canvas.reduce(SUPERSAMPLING)


def degrade(image: Image.Image, blur_radius: float = 1.0, noise_sigma: float = 8.0, seed: int = 0) -> Image.Image:
    """Blur and add Gaussian noise, imitating an imperfect model output (for robustness checks)."""
    blurred = image.convert("RGB").filter(ImageFilter.GaussianBlur(blur_radius)) if blur_radius > 0 else image.convert("RGB")
    pixels = np.asarray(blurred, dtype=np.float32)
    noise = np.random.default_rng([seed, 0xD06]).normal(0.0, noise_sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------
# Datasets


def dataset_scenes(n: int, seed: int, include_held_out: bool = False,
                   exclude_captions: frozenset[str] = frozenset()) -> list[Scene]:
    """The scenes ``write_dataset`` would write, without rendering them.

    ``exclude_captions`` keeps whole attribute combinations out (the evaluation prompts), so the
    prompt-fidelity test measures combinations the model never saw.
    """
    rng = np.random.default_rng([seed, 0x5CE])
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = random_scene(rng, include_held_out)
        if caption(scene) not in exclude_captions:
            scenes.append(scene)
    return scenes


def contradicting_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with another base shape at another position, all else kept: a control map of ``scene``
    with this scene's caption as the prompt tells them apart (the ControlNet evaluation's prompts, and the
    toy ControlNet's training captions that teach it to keep the map's geometry against such a prompt)."""
    shapes = [shape for shape in BASE_SHAPES if shape != scene.shape]
    positions = [position for position in POSITIONS if position != scene.position]
    return replace(scene, shape=shapes[rng.integers(len(shapes))], position=positions[rng.integers(len(positions))])


EVALUATION_SEED = 7


def evaluation_scenes(count: int = 200, seed: int = EVALUATION_SEED) -> list[Scene]:
    """The base-concept scenes whose captions are the prompt-fidelity evaluation set.

    Distinct captions only; the training script excludes these combinations from the training set.
    """
    rng = np.random.default_rng([seed, 0xE7A1])
    scenes: dict[str, Scene] = {}
    while len(scenes) < count:
        scene = random_scene(rng)
        scenes.setdefault(caption(scene), scene)
    return list(scenes.values())


def write_dataset(folder: str | Path, n: int, seed: int, include_held_out: bool = False, size: int = NATIVE_SIZE) -> list[Path]:
    """Write ``n`` PNGs with ``.txt`` caption sidecars plus ``metadata.jsonl``; return the image paths.

    Sidecars are what kohya-style and A1111 trainers read; ``metadata.jsonl``
    (one JSON object per image: ``file_name``, ``text`` and every attribute) is
    what Hugging Face ``imagefolder`` reads and lets evaluations look up the true
    scene. The same seed always writes byte-identical files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    metadata_lines = []
    for index, scene in enumerate(dataset_scenes(n, seed, include_held_out)):
        stem = f"{index:05d}"
        image_path = folder / f"{stem}.png"
        text = caption(scene)
        render(scene, size=size, seed=_image_seed(seed, index)).save(image_path, format="PNG")
        (folder / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        metadata_lines.append(json.dumps({"file_name": image_path.name, "text": text, **scene.attributes()}))
        paths.append(image_path)
    (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in metadata_lines), encoding="utf-8")
    return paths


def read_dataset_scenes(folder: str | Path) -> dict[str, Scene]:
    """Map image file names to their scenes, from a folder written by ``write_dataset``."""
    scenes = {}
    for line in (Path(folder) / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            scenes[record["file_name"]] = Scene(**{attribute: record[attribute] for attribute in ATTRIBUTES})
    return scenes


def _image_seed(seed: int, index: int) -> int:
    """A per-image jitter seed that does not collide across dataset seeds."""
    return int(np.random.default_rng([seed, index, 0x1A6]).integers(2**31))


def concept_scenes(
    shape: str = "hexagon",
    n: int = 10,
    seed: int = 0,
    *,
    texture: str = "solid",
    color: str | None = None,
) -> list[Scene]:
    """Scenes showing one concept the way DreamBooth subject photos do.

    One large object in varied places, colours and backgrounds (fixed colour
    when ``color`` is given), so that what the images share is the shape (and
    texture), not the context.
    """
    if shape not in SHAPES:
        raise ValueError(f"invalid shape {shape!r}; valid values: {', '.join(SHAPES)}")
    if texture not in TEXTURES:
        raise ValueError(f"invalid texture {texture!r}; valid values: {', '.join(TEXTURES)}")
    if color is not None and color not in COLORS:
        raise ValueError(f"invalid color {color!r}; valid values: {', '.join(COLORS)}")
    rng = np.random.default_rng([seed, 0xC0C])
    scenes = []
    for _ in range(n):
        object_color = color or COLORS[rng.integers(len(COLORS))]
        backgrounds = [name for name in BACKGROUNDS if name != object_color]
        scenes.append(
            Scene(
                shape=shape,
                color=object_color,
                background=backgrounds[rng.integers(len(backgrounds))],
                position=POSITIONS[rng.integers(len(POSITIONS))],
                size="large",
                count=1,
                texture=texture,
            )
        )
    return scenes


def held_out_concept_images(
    shape: str = "hexagon",
    n: int = 10,
    seed: int = 0,
    *,
    texture: str = "solid",
    color: str | None = None,
    size: int = NATIVE_SIZE,
) -> list[Image.Image]:
    """Renders of ``concept_scenes(...)``: the training photos for a personalization test."""
    scenes = concept_scenes(shape, n, seed, texture=texture, color=color)
    return [render(scene, size=size, seed=_image_seed(seed, index)) for index, scene in enumerate(scenes)]
