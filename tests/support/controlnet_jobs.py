"""Generation jobs with ControlNet units, through the app's queue and the shipped controlnet extension, as the
engine tests of each family's ControlNets run them."""

from __future__ import annotations

from typing import Any

import numpy as np

from webui.extensions.scripts import ExtensionScripts
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest


def run_with_units(ctx: Any, fields: dict[str, Any], units: Any = None, kind: type = Txt2ImgRequest) -> Any:
    """The finished job of a txt2img (or img2img) request with `fields` and, when given, these ControlNet units
    (sd-webui-controlnet's unit objects, or the script's flat fields as the UI sends them)."""
    request = kind(**fields)
    if units is not None:
        request = ExtensionScripts(ctx.extensions).with_alwayson(request, {"controlnet": units})
    submit = ctx.generation.submit_img2img if kind is Img2ImgRequest else ctx.generation.submit_txt2img
    return submit(request).result(timeout=300)


def pixels(result: Any) -> np.ndarray:
    """The job's first image as signed RGB values (differences do not wrap)."""
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)
