"""ControlNet (sd-webui-controlnet's features) as a built-in extension, written only against
`webui.extensions.api`.

- An always-on script "ControlNet" with 3 units (accordion in txt2img and img2img; `alwayson_scripts:
  {"controlnet": {"args": [{unit}, ...]}}` in sd-webui-controlnet's format over HTTP).
- Flux.1 checkpoints: the same hook runs on each transformer call with Flux ControlNets (block residuals); a
  union ControlNet's control type is the unit's `union_control_type` (a name or index).
- Its UNet-residuals hook: for each UNet call, every enabled unit of non-zero weight whose step window
  holds the call adds its ControlNet's residuals (`api.Services.controlnet` loads the model for the job's
  checkpoint and refuses one of another family). A unit of weight 0 adds nothing at all.
- Routes `/controlnet/model_list`, `/controlnet/module_list`, `/controlnet/detect` (sd-webui-controlnet's).
- Annotators that need weights (annotators.py, through controlnet_aux) run on the job's device inside a job;
  the detect route and the UI preview are not jobs, so they run them on the CPU (GPU work goes through the
  scheduler only).
- The models of the units that act join the job's model state (`add_control_models`): the worker builds them
  for the checkpoint when it takes the job and keeps them for the next jobs.
- Each unit's `hr_option` (Both / Low res only / High res only): the hires-fix pass it acts in.
- Infotext lines `ControlNet 0: "Module: ..., Model: ..., Weight: ..."` and paste-back; X/Y/Z axes for
  unit 0's weight, starting and ending step and model.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Request
from PIL import Image

from webui.extensions import api

from . import annotators, preprocessors, units

CACHE_SIZE = 8   # control maps kept per server (a map is reused by every UNet call of a job)


class ControlNetRuntime:
    """What the extension keeps while the app runs: the app's services (once started) and recent control
    maps. One object per setup, so nothing is shared between app instances."""

    def __init__(self) -> None:
        self.services: api.Services | None = None
        self._maps: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()   # workers (one per GPU) run jobs at once
        # Where annotator weights are read from: the app's folders once it starts (Services.annotator_folders).
        self.annotators = annotators.Annotators(Path(preprocessors.ANNOTATOR_FOLDER))

    def start(self, services: api.Services) -> None:
        self.services = services
        first, *others = services.annotator_folders()
        self.annotators = annotators.Annotators(first, tuple(others))

    def module_names(self) -> list[str]:
        """The preprocessors that can run now: the weightless ones and the annotators whose weights are here."""
        return [*preprocessors.MODULES, *self.annotators.usable()]

    def module_name(self, name: str) -> str:
        """A preprocessor's own name, if it can run here (an annotator with its weights and package);
        UnknownModuleError says why not."""
        if preprocessors.needs_weights(name):
            wanted = preprocessors.canonical(name)
            reason = self.annotators.reason(wanted)
            if reason:
                raise preprocessors.UnknownModuleError(reason)
            return wanted
        return units.weightless_module_name(name)

    def preprocess(self, name: str, image: Image.Image, resolution: int, a: float, b: float, seed: int,
                   device: torch.device) -> Image.Image:
        """The control map of `image` by preprocessor `name`, an RGB (or inpaint RGBA) image of its size;
        annotators that need weights run on `device`. UnknownModuleError / AnnotatorUnavailable say why not."""
        if preprocessors.needs_weights(name):
            return self.annotators.run(preprocessors.canonical(name), image, max(64, int(resolution)), a, b, device)
        return preprocessors.run_module(name, image, resolution, a, b, seed)

    def model_titles(self) -> list[str]:
        if self.services is None:
            return []
        return [info.title for info in self.services.controlnet_models() if not info.problem]

    def union_modes(self) -> list[str]:
        """The control types of the usable union ControlNets (the UI's choices), in their models' order."""
        if self.services is None:
            return []
        found = [mode for info in self.services.controlnet_models() if not info.problem for mode in info.union_modes]
        return list(dict.fromkeys(found))

    def source_image(self, unit: units.Unit, request: Any) -> Image.Image:
        if unit.image:
            return units.decode_image(unit.image)
        init_images = getattr(request, "init_images", ())
        if init_images:     # img2img: the unit without its own image controls with the img2img image
            return init_images[0]
        raise api.JobRefused(f"ControlNet unit {unit.index} has no control image")

    def control_map(self, unit: units.Unit, request: Any, device: torch.device) -> Image.Image:
        """The unit's preprocessed map at the request's size (annotators run on the job's `device`)."""
        image = units.resized(self.source_image(unit, request), request.width, request.height, unit.resize_mode)
        resolution = min(request.width, request.height) if unit.pixel_perfect else unit.processor_res
        try:
            return self.preprocess(unit.module, image, resolution, unit.threshold_a, unit.threshold_b,
                                   max(int(request.seed), 0), device)
        except (preprocessors.UnknownModuleError, annotators.AnnotatorUnavailable) as error:
            raise api.JobRefused(str(error)) from None

    def control_tensor(self, unit: units.Unit, request: Any, device: torch.device) -> torch.Tensor:
        """The map as a 1 x 3 x H x W tensor, cached: every UNet call of a job uses the same one."""
        image_key = hashlib.sha256(unit.image.encode()).hexdigest() if unit.image else id(getattr(
            request, "init_images", None))
        key = (image_key, unit.module, unit.resize_mode, unit.pixel_perfect, unit.processor_res, unit.threshold_a,
               unit.threshold_b, request.width, request.height, int(request.seed))
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
        control_map = self.control_map(unit, request, device)
        tensor = torch.from_numpy(preprocessors.control_tensor(control_map)).unsqueeze(0)
        with self._lock:
            self._maps[key] = tensor
            while len(self._maps) > CACHE_SIZE:
                self._maps.popitem(last=False)
        return tensor


def _build_ui(where: Any, runtime: ControlNetRuntime) -> Any:
    """The units' gradio accordion. gradio is imported only when a UI is built, so an app without one (the GPU
    machine's headless fidelity run, which has no gradio) still runs ControlNet units."""
    from .ui import build_units

    return build_units(where, runtime)


def setup(ext: api.ExtensionSetup) -> None:
    runtime = ControlNetRuntime()
    handle = ext.add_script(units.TITLE, units.ControlNetValues, alwayson=True,
                            ui=lambda where: _build_ui(where, runtime),
                            read_args=lambda args: units.read_args(args, runtime.model_titles, runtime.module_name),
                            write_infotext=units.infotext_lines, read_infotext=units.from_infotext)

    def started(app: api.AppStarted) -> None:
        runtime.start(app.services)

    def residuals(call: api.UNetCall) -> api.UNetResiduals | None:
        values = handle.values_of(call.request)
        if values is None or call.model is None or runtime.services is None:
            return None
        hires_enabled = bool(getattr(call.request, "enable_hr", False))
        active = [unit for unit in units.units_of(values) if unit.enabled and unit.weight != 0
                  and unit.acts_in(hires_enabled, call.hires)
                  and api.in_control_window(call, unit.guidance_start, unit.guidance_end)]
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        single: list[torch.Tensor] | None = None
        for unit in active:
            if unit.model == units.NO_MODEL:
                raise api.JobRefused(f"ControlNet unit {unit.index} is enabled but no model is chosen (models: "
                                     f"{', '.join(runtime.model_titles()) or 'none in models/ControlNet'})")
            controlnet = runtime.services.controlnet(unit.model, call.model)
            control = runtime.control_tensor(unit, call.request, call.model.device)
            added = controlnet.residuals(call, control, unit.weight, unit.control_mode, unit.union_mode)
            down = list(added.down) if down is None else [a + b for a, b in zip(down, added.down)]
            if added.mid is not None:
                mid = added.mid if mid is None else mid + added.mid
            if added.single:   # transformer ControlNets (Flux): per single-stream block
                single = list(added.single) if single is None else [a + b for a, b in zip(single, added.single)]
        if down is None:
            return None
        return api.UNetResiduals(tuple(down), mid, tuple(single or ()))

    ext.on_app_started(started)
    def applies(request: api.Txt2ImgRequest) -> bool:
        values = handle.values_of(request)
        return values is not None and any(unit.enabled and unit.weight != 0 for unit in units.units_of(values))

    def control_models(request: api.Txt2ImgRequest) -> list[str]:
        """The models of the units that will act: part of the job's model state (built with the checkpoint)."""
        values = handle.values_of(request)
        if values is None:
            return []
        return [unit.model for unit in units.units_of(values)
                if unit.enabled and unit.weight != 0 and unit.model != units.NO_MODEL]

    ext.add_unet_residuals(residuals, applies)
    ext.add_control_models(control_models)
    _add_axes(ext, handle)
    ext.add_router(_router(runtime), prefix="/controlnet")


def _add_axes(ext: api.ExtensionSetup, handle: api.ScriptHandle) -> None:
    """X/Y/Z axes on unit 0 (the unit must be enabled in the tab or the request)."""

    def axis(field: str, convert: Any) -> Any:
        def apply(request: api.Txt2ImgRequest, value: Any) -> api.Txt2ImgRequest:
            values = handle.values_of(request)
            if values is None or not values.unit0_enabled:
                raise api.JobRefused("the ControlNet X/Y/Z axes change unit 0: enable it first")
            changed = units.with_unit(values, 0, **{field: convert(value)})
            return request.with_changes(
                script_values={**request.script_values, units.TITLE: {
                    name: getattr(changed, name) for name in request.script_values[units.TITLE]}},
                infotext_fields={**request.infotext_fields, **units.infotext_lines(changed)})
        return apply

    ext.add_xyz_axis("ControlNet weight", axis("weight", float), "float")
    ext.add_xyz_axis("ControlNet start", axis("guidance_start", float), "float")
    ext.add_xyz_axis("ControlNet end", axis("guidance_end", float), "float")
    ext.add_xyz_axis("ControlNet model", axis("model", str), "str")


def _router(runtime: ControlNetRuntime) -> APIRouter:
    """sd-webui-controlnet's routes (under the app's login)."""
    router = APIRouter()

    @router.get("/model_list")
    def model_list(request: Request) -> dict[str, Any]:
        api.caller_of(request)
        return {"model_list": runtime.model_titles()}

    @router.get("/module_list")
    def module_list(request: Request, alias_names: bool = False) -> dict[str, Any]:
        api.caller_of(request)
        usable = runtime.module_names()
        known = {**preprocessors.MODULES, **annotators.ANNOTATORS}
        detail = {name: {"sliders": [label for label in (known[name].label_a, known[name].label_b) if label]}
                  for name in usable}
        # "unavailable": each annotator that cannot run here, with exactly what is missing (package or file).
        return {"module_list": usable, "module_detail": detail, "unavailable": runtime.annotators.unavailable()}

    @router.post("/detect")
    def detect(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        api.caller_of(request)
        images = body.get("controlnet_input_images") or body.get("controlnet_images") or []  # webuiapi's name
        if not isinstance(images, list) or not images:
            raise HTTPException(422, "controlnet_input_images must be a list of base64 images")
        try:
            name = str(body.get("controlnet_module") or "none")
            resolution = int(body.get("controlnet_processor_res", 512))
            a = float(body.get("controlnet_threshold_a", -1))
            b = float(body.get("controlnet_threshold_b", -1))
            decoded = [units.decode_image(str(text)) for text in images]
            # Not a job: annotators run on the CPU here (GPU work goes through the scheduler only).
            maps = [runtime.preprocess(name, image, resolution, a, b, 0, torch.device("cpu")) for image in decoded]
        except (ValueError, TypeError) as error:
            known = "" if "preprocessor" in str(error) else f" (preprocessors: {', '.join(runtime.module_names())})"
            raise HTTPException(422, f"{error}{known}") from None
        return {"images": [units.encode_image(_visible(image)) for image in maps], "info": "Success"}

    return router


def _visible(control_map: Image.Image) -> Image.Image:
    """A map as users look at it (an inpaint map's masked area shown black)."""
    if control_map.mode != "RGBA":
        return control_map
    return Image.fromarray(np.asarray(control_map.convert("RGB")), "RGB")
