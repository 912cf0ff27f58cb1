"""Infotext <-> txt2img field values: the mapping behind "Send to txt2img" and the paste button.

Kept as data (field name -> parser) so every tab that accepts pasted parameters uses one table.
"""

from __future__ import annotations

from typing import Any, Callable

from webui.generation.infotext import parse_infotext
from webui.generation.requests import NO_REFINER_CHOICE
from webui.generation.samplers import find_sampler, schedule_type_names

# txt2img control name -> (infotext key, converter)
TXT2IMG_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "prompt": ("Prompt", str),
    "negative_prompt": ("Negative prompt", str),
    "steps": ("Steps", int),
    "sampler_name": ("Sampler", lambda value: find_sampler(value).name),
    "scheduler": ("Schedule type", lambda value: value if value in schedule_type_names() else "Automatic"),
    "cfg_scale": ("CFG scale", float),
    "distilled_cfg_scale": ("Distilled CFG Scale", float),
    "shift": ("Shift", float),
    "seed": ("Seed", int),
    "width": ("Size-1", int),
    "height": ("Size-2", int),
    "subseed": ("Variation seed", int),
    "subseed_strength": ("Variation seed strength", float),
    "clip_skip": ("Clip skip", int),
    "denoising_strength": ("Denoising strength", float),
    "enable_hr": ("Hires upscaler", lambda value: True),
    "hr_upscaler": ("Hires upscaler", str),
    "hr_scale": ("Hires upscale", float),
    "hr_second_pass_steps": ("Hires steps", int),
    "hr_distilled_cfg": ("Hires Distilled CFG Scale", float),
    "mask_blur": ("Mask blur", int),
    "refiner_checkpoint": ("Refiner", str),
    "refiner_switch_at": ("Refiner switch at", float),
}

# Values A1111 leaves out of the infotext when they are at their default.
DEFAULTS_WHEN_ABSENT = {"negative_prompt": "", "scheduler": "Automatic", "subseed": -1, "subseed_strength": 0.0, "clip_skip": 1,
                        "enable_hr": False, "script": "None", "refiner_checkpoint": NO_REFINER_CHOICE}


def txt2img_values_from_infotext(text: str, table: dict[str, tuple[str, Callable[[str], Any]]] | None = None
                                 ) -> dict[str, Any]:
    """Field values for every control the infotext determines (unparseable values skipped). `table` is a
    tab's own field table (`tab_fields`: these fields plus its scripts'); default: these fields."""
    parsed = parse_infotext(text)
    values: dict[str, Any] = {}
    for name, (key, convert) in (TXT2IMG_FIELDS if table is None else table).items():
        if key in parsed:
            try:
                values[name] = convert(parsed[key])
            except (TypeError, ValueError):
                continue
        elif name in DEFAULTS_WHEN_ABSENT and "Steps" in parsed:
            values[name] = DEFAULTS_WHEN_ABSENT[name]
    return values


def tab_fields(extra: dict[str, tuple[str, Callable[[str], Any]]] | None) -> dict[str, tuple[str, Callable[[str], Any]]]:
    """A tab's infotext-field registry: the fields above plus what the tab adds (its scripts' controls)."""
    return {**TXT2IMG_FIELDS, **(extra or {})}
