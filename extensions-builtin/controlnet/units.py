"""ControlNet units as data: the script's values (3 units x 13 fields), sd-webui-controlnet's request format,
its infotext lines, and the control image's resize modes.

The always-on script's values are flat fields (`unit0_weight`, ...), which is what the app stores in a
request and shows as controls; `read_args` turns sd-webui-controlnet's `{"args": [{unit}, ...]}` into them,
`infotext_lines` / `from_infotext` write and read `ControlNet 0: "Module: canny, Model: ..., Weight: 1, ..."`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from webui.extensions import api

from . import preprocessors

TITLE = "ControlNet"
UNITS = 3
NO_MODEL = "None"
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
# sd-webui-controlnet's older names and ints for the same modes.
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Envelope (Outer Fit)": "Resize and Fill", "Scale to Fit (Inner Fit)": "Crop and Resize"}
# sd-webui-controlnet's `hr_option`: in which pass of hires fix a unit acts (without hires fix there is one
# pass and the unit acts in it whatever the option says).
HR_OPTIONS = ("Both", "Low res only", "High res only")
MAX_IMAGE_PIXELS = 4096 * 4096
# Keys sd-webui-controlnet clients send that have no effect here.
IGNORED_KEYS = {"lowvram", "low_vram", "guessmode", "guess_mode", "processor_res_", "save_detected_map",
                "control_type", "advanced_weighting", "inpaint_crop_input_image", "is_ui", "input_mode", "batch_images",
                "output_dir", "loopback", "effective_region_mask", "ipadapter_input", "animatediff_batch",
                "batch_modifiers", "batch_image_files", "batch_keyframe_idx", "pulid_mode", "mask"}


@dataclass(frozen=True)
class Unit:
    """One unit's settings (index: its place, 0..2, as the infotext numbers it)."""

    index: int
    enabled: bool
    image: str
    module: str
    model: str
    weight: float
    guidance_start: float
    guidance_end: float
    control_mode: str
    resize_mode: str
    pixel_perfect: bool
    processor_res: int
    threshold_a: float
    threshold_b: float
    hr_option: str = HR_OPTIONS[0]
    union_mode: str = ""   # a union ControlNet's control type (name or index; sd-webui-controlnet's union_control_type)

    def acts_in(self, hires_enabled: bool, hires_pass: bool) -> bool:
        """Whether the unit acts in this pass: with hires fix, "Low res only" keeps it out of the second
        pass and "High res only" out of the first."""
        if not hires_enabled or self.hr_option == HR_OPTIONS[0]:
            return True
        return hires_pass == (self.hr_option == HR_OPTIONS[2])


UNIT_FIELDS = [f.name for f in dataclasses.fields(Unit) if f.name != "index"]


def _unit_fields(index: int) -> list[tuple[str, type, Any]]:
    key = f"ControlNet {index}"

    def field(default: Any, label: str, **options: Any) -> Any:
        return api.script_field(default, f"Unit {index} {label}", infotext=key, **options)

    return [
        (f"unit{index}_enabled", bool, field(False, "enabled")),
        (f"unit{index}_image", str, field("", "control image (base64 PNG)")),
        (f"unit{index}_module", str, field("none", "preprocessor")),
        (f"unit{index}_model", str, field(NO_MODEL, "model")),
        (f"unit{index}_weight", float, field(1.0, "control weight", minimum=0.0, maximum=2.0)),
        (f"unit{index}_guidance_start", float, field(0.0, "starting control step", minimum=0.0, maximum=1.0)),
        (f"unit{index}_guidance_end", float, field(1.0, "ending control step", minimum=0.0, maximum=1.0)),
        (f"unit{index}_control_mode", str, field(api.CONTROL_MODES[0], "control mode", choices=api.CONTROL_MODES)),
        (f"unit{index}_resize_mode", str, field(RESIZE_MODES[1], "resize mode", choices=RESIZE_MODES)),
        (f"unit{index}_pixel_perfect", bool, field(False, "pixel perfect")),
        (f"unit{index}_processor_res", int, field(512, "preprocessor resolution", minimum=64, maximum=2048)),
        (f"unit{index}_threshold_a", float, field(-1.0, "threshold A (-1: the preprocessor's default)")),
        (f"unit{index}_threshold_b", float, field(-1.0, "threshold B (-1: the preprocessor's default)")),
        (f"unit{index}_hr_option", str, field(HR_OPTIONS[0], "hires fix pass", choices=HR_OPTIONS)),
        (f"unit{index}_union_mode", str, field("", "union control type (union ControlNets: canny, tile, depth, ... "
                                                   "or the mode index; empty for other ControlNets)")),
    ]


ControlNetValues = dataclasses.make_dataclass(
    "ControlNetValues", [item for index in range(UNITS) for item in _unit_fields(index)], frozen=True)


def units_of(values: Any) -> list[Unit]:
    return [Unit(index, *(getattr(values, f"unit{index}_{name}") for name in UNIT_FIELDS)) for index in range(UNITS)]


def with_unit(values: Any, index: int, **changes: Any) -> Any:
    """The values with unit `index` changed."""
    return dataclasses.replace(values, **{f"unit{index}_{name}": value for name, value in changes.items()})


# ---- images ---------------------------------------------------------------------------------------------
def decode_image(text: str) -> Image.Image:
    """A base64 image (a data URL prefix is fine), refused before decoding when it has too many pixels."""
    if "," in text[:100] and text.lstrip().startswith("data:"):
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("the control image is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Exception:
        raise ValueError("the control image is not an image Pillow can read") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"the control image is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS:,} pixels "
                         "are accepted")
    image.load()
    return image


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def with_mask(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with the mask (white = to repaint) as transparency, the inpaint preprocessor's input."""
    rgba = image.convert("RGBA")
    alpha = mask.convert("L").resize(rgba.size).point(lambda value: 0 if value >= 128 else 255)
    rgba.putalpha(alpha)
    return rgba


def resized(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """The control image at the generation's size: stretched (Just Resize), scaled to cover and cut at
    the centre (Crop and Resize) or scaled to fit and padded with black, i.e. no control (Resize and Fill)."""
    if mode == RESIZE_MODES[0]:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    cover = mode == RESIZE_MODES[1]
    scale = (max if cover else min)(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.LANCZOS)
    if cover:
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new(scaled.mode, (width, height))
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


# ---- sd-webui-controlnet's request format ---------------------------------------------------------------
def _choice(value: Any, names: tuple[str, ...], aliases: Mapping[str, str], what: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a name or a number, not {value!r}")
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(names):
        return names[int(value)]
    text = aliases.get(str(value), str(value))
    match = next((name for name in names if name.casefold() == text.casefold()), None)
    if match is None:
        raise ValueError(f"{what} {value!r} is unknown; use one of {', '.join(names)} or 0-{len(names) - 1}")
    return match


def weightless_module_name(name: str) -> str:
    """`name` as this extension names it, if it is a built-in preprocessor; UnknownModuleError otherwise."""
    return preprocessors.find_module(name).name


def read_unit(index: int, unit: Any, model_titles: Callable[[], list[str]],
              module_name: Callable[[str], str] = weightless_module_name) -> dict[str, Any]:
    """One sd-webui-controlnet unit object -> this script's unit fields (ValueError: a 422 with the reason)."""
    if not isinstance(unit, Mapping):
        raise ValueError(f"unit {index} must be an object of unit settings, got {type(unit).__name__}")
    known = {"enabled", "image", "input_image", "mask", "mask_image", "module", "model", "weight", "guidance_start",
             "guidance_end", "control_mode", "resize_mode", "pixel_perfect", "processor_res", "threshold_a",
             "threshold_b", "hr_option", "union_control_type"}
    unknown = sorted(set(unit) - known - IGNORED_KEYS)
    if unknown:
        raise ValueError(f"unit {index}: unknown key(s) {', '.join(unknown)}; keys: {', '.join(sorted(known))}")
    out: dict[str, Any] = {"enabled": bool(unit.get("enabled", True))}
    image = unit.get("image", unit.get("input_image"))
    mask = unit.get("mask_image") or unit.get("mask")
    if isinstance(image, Mapping):     # sd-webui-controlnet's {"image": b64, "mask": b64}
        image, mask = image.get("image"), mask or image.get("mask")
    if image:
        if not isinstance(image, str):
            raise ValueError(f"unit {index}: image must be a base64 string")
        decoded = decode_image(image)
        if mask:
            decoded = with_mask(decoded, decode_image(str(mask)))
        out["image"] = encode_image(decoded)
    if "module" in unit:
        out["module"] = module_name(str(unit["module"] or "none"))
    if "model" in unit:
        model = str(unit["model"] or NO_MODEL)
        if model != NO_MODEL:
            titles = model_titles()
            names = {title.rsplit(" [", 1)[0] for title in titles}
            if model not in titles and model.rsplit(" [", 1)[0] not in names:
                raise ValueError(f"unit {index}: ControlNet model {model!r} is unknown; models: "
                                 f"{', '.join(titles) or 'none (put them in models/ControlNet)'}")
        out["model"] = model
    if out["enabled"] and out.get("model", NO_MODEL) == NO_MODEL:
        raise ValueError(f"unit {index} is enabled but names no model; models: {', '.join(model_titles()) or 'none'}")
    for key in ("weight", "guidance_start", "guidance_end", "threshold_a", "threshold_b"):
        if key in unit:
            out[key] = unit[key]
    if "processor_res" in unit:
        out["processor_res"] = 512 if unit["processor_res"] in (-1, None) else unit["processor_res"]
    if "control_mode" in unit:
        out["control_mode"] = _choice(unit["control_mode"], api.CONTROL_MODES, {}, f"unit {index}: control_mode")
    if "resize_mode" in unit:
        out["resize_mode"] = _choice(unit["resize_mode"], RESIZE_MODES, RESIZE_ALIASES, f"unit {index}: resize_mode")
    if "pixel_perfect" in unit:
        out["pixel_perfect"] = bool(unit["pixel_perfect"])
    if "hr_option" in unit:
        out["hr_option"] = _choice(unit["hr_option"], HR_OPTIONS, {}, f"unit {index}: hr_option")
    if "union_control_type" in unit:   # checked against the model when the unit runs (the names are the model's)
        mode = "" if unit["union_control_type"] is None else unit["union_control_type"]
        if isinstance(mode, bool) or not isinstance(mode, (str, int)) or (isinstance(mode, int) and mode < 0):
            raise ValueError(f"unit {index}: union_control_type must be a control type name or index, got {mode!r}")
        out["union_mode"] = str(mode).strip()
    return {f"unit{index}_{key}": value for key, value in out.items()}


def read_args(args: Any, model_titles: Callable[[], list[str]],
              module_name: Callable[[str], str] = weightless_module_name) -> dict[str, Any]:
    """sd-webui-controlnet's `args`: a list of up to 3 unit objects (or one object). `module_name` gives a
    preprocessor's own name or raises UnknownModuleError with why it cannot run (the app's runtime knows which
    annotators have their weights)."""
    units = [args] if isinstance(args, Mapping) else args
    if not isinstance(units, (list, tuple)):
        raise ValueError(f"args must be a list of unit objects, got {type(args).__name__}")
    if len(units) > UNITS:
        raise ValueError(f"at most {UNITS} ControlNet units, got {len(units)}")
    values: dict[str, Any] = {}
    for index, unit in enumerate(units):
        values.update(read_unit(index, unit, model_titles, module_name))
    return values


# ---- infotext ----------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:g}"


def infotext_lines(values: Any) -> dict[str, str]:
    """`ControlNet i` -> its settings, for every enabled unit (as sd-webui-controlnet writes them)."""
    lines = {}
    for unit in units_of(values):
        if not unit.enabled:
            continue
        lines[f"ControlNet {unit.index}"] = ", ".join([
            f"Module: {unit.module}", f"Model: {unit.model}", f"Weight: {_number(unit.weight)}",
            f"Resize Mode: {unit.resize_mode}", f"Processor Res: {unit.processor_res}",
            f"Threshold A: {_number(unit.threshold_a)}", f"Threshold B: {_number(unit.threshold_b)}",
            f"Guidance Start: {_number(unit.guidance_start)}", f"Guidance End: {_number(unit.guidance_end)}",
            f"Pixel Perfect: {unit.pixel_perfect}", f"Control Mode: {unit.control_mode}",
            *([f"Hr Option: {unit.hr_option}"] if unit.hr_option != HR_OPTIONS[0] else []),
            *([f"Union Control Type: {unit.union_mode}"] if unit.union_mode else [])])
    return lines


_INFOTEXT_KEYS = {"Module": ("module", str), "Model": ("model", str), "Weight": ("weight", float),
                  "Resize Mode": ("resize_mode", str), "Processor Res": ("processor_res", int),
                  "Threshold A": ("threshold_a", float), "Threshold B": ("threshold_b", float),
                  "Guidance Start": ("guidance_start", float), "Guidance End": ("guidance_end", float),
                  "Pixel Perfect": ("pixel_perfect", lambda text: text == "True"),
                  "Control Mode": ("control_mode", str), "Union Control Type": ("union_mode", str),
                  "Hr Option": ("hr_option", lambda text: _choice(text, HR_OPTIONS, {}, "Hr Option"))}


def from_infotext(parameters: Mapping[str, str]) -> dict[str, Any]:
    """The unit fields `ControlNet i` lines record (the image is not in an infotext)."""
    values: dict[str, Any] = {}
    for index in range(UNITS):
        text = parameters.get(f"ControlNet {index}")
        if not text:
            continue
        values[f"unit{index}_enabled"] = True
        values[f"unit{index}_hr_option"] = HR_OPTIONS[0]   # not written when "Both"
        values[f"unit{index}_union_mode"] = ""              # not written for other ControlNets
        for part in text.split(", "):
            key, _, value = part.partition(": ")
            if key in _INFOTEXT_KEYS:
                name, convert = _INFOTEXT_KEYS[key]
                try:
                    values[f"unit{index}_{name}"] = convert(value.strip())
                except ValueError:
                    continue
    return values
