"""A1111's scripts over HTTP: `GET /scripts`, `GET /script-info`, and `script_name` + `script_args` /
`alwayson_scripts` in txt2img and img2img bodies.

The one selectable script is A1111's "X/Y/Z plot". Its `script_args` are A1111's positional arguments
(the order of the script's controls): axis type (an index into A1111's axis dropdown of the tab, see
`webui.xyz.a1111_axes`, or a label), values text and values list for X, Y and Z, then the plot options.
Two layouts are in use by A1111 versions and both are read:

- 16 (v1.10) or 15 (v1.6) items: ..., no_fixed_seeds, margin_size, csv_mode[, raw_mode]
- 19 items (v1.7-1.9): ..., no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode

Missing trailing items take A1111's UI defaults.

Extension scripts (`ext.add_script`) are listed beside it and called the same way: `script_name` is the
script's title (any case), `script_args` a dict of its argument names or, for A1111 clients, a list in
its arguments' order (`/script-info` gives the order, names and bounds). `alwayson_scripts` is A1111's
`{"<title>": {"args": [...] or {...}}}`; an unknown always-on script is refused with the list of known ones
rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException

from webui.extensions.script_values import ScriptDefinition
from webui.extensions.scripts import ExtensionScripts
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Txt2ImgRequest
from webui.generation.txt2img import GenerationResult
from webui.xyz.a1111_axes import a1111_axis_list, resolve_a1111_axis
from webui.xyz.axes import AxisRegistry, default_axis_registry
from webui.xyz.service import XyzOptions, XyzRun
from webui.xyz.plot import AxisSpec

XYZ_SCRIPT = "x/y/z plot"   # A1111's script name: its title, lower case
XYZ_TITLE = "X/Y/Z plot"
MAX_MARGIN = 500

# A1111 v1.10's argument list (what /script-info describes), after the nine axis arguments.
_OPTION_ARGS_V110 = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "margin_size",
                     "csv_mode", "raw_mode")
_OPTION_ARGS_V17 = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
                    "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")
_OPTION_DEFAULTS = {"draw_legend": True, "include_lone_images": False, "include_sub_grids": False,
                    "no_fixed_seeds": False, "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False,
                    "margin_size": 0, "csv_mode": False, "raw_mode": False}


@dataclass(frozen=True)
class XyzCall:
    """A txt2img/img2img body's X/Y/Z script call, read and checked."""

    x: AxisSpec
    y: AxisSpec
    z: AxisSpec
    options: XyzOptions


@dataclass(frozen=True)
class ExtensionScriptCall:
    """A body's call of an extension script: its title and its arguments as sent (checked when submitted)."""

    title: str
    args: Any


def alwayson_args(alwayson_scripts: dict[str, Any]) -> dict[str, Any]:
    """{title: args} from A1111's `{"<title>": {"args": [...]}}` (a bare list or dict of names is read too)."""
    found = {}
    for title, value in alwayson_scripts.items():
        found[title] = value.get("args") if isinstance(value, dict) and set(value) <= {"args"} else value
    return found


def check_alwayson_scripts(alwayson_scripts: dict[str, Any], is_img2img: bool,
                           scripts: ExtensionScripts | None) -> None:
    """422 naming the always-on scripts this server does not have, with the list of those it has."""
    unknown = [name for name in alwayson_scripts
               if scripts is None or scripts.find(name, is_img2img, alwayson=True) is None]
    if unknown:
        known = ", ".join(d.title for d in scripts.alwayson(is_img2img)) if scripts else ""
        raise HTTPException(422, f"alwayson_scripts: unknown script(s) {', '.join(map(repr, unknown))}; "
                                 f"always-on scripts on this server: {known or 'none'}")


def script_call(script_name: str | None, script_args: list[Any] | dict[str, Any], alwayson_scripts: dict[str, Any],
                is_img2img: bool, save_grid: bool, registry: AxisRegistry | None = None,
                scripts: ExtensionScripts | None = None) -> XyzCall | ExtensionScriptCall | None:
    """The script a body asks for (None: plain generation); 422 for unknown scripts or bad X/Y/Z arguments
    (an extension script's arguments are checked when it is submitted, always-on ones by
    `ExtensionScripts.with_alwayson`)."""
    check_alwayson_scripts(alwayson_scripts, is_img2img, scripts)
    name = (script_name or "").strip()
    if not name:
        return None
    if name.casefold() == XYZ_SCRIPT:
        if not isinstance(script_args, list):
            raise HTTPException(422, "script_args: X/Y/Z plot takes a list of A1111's positional arguments")
        return xyz_call(script_args, is_img2img, save_grid, registry or default_axis_registry())
    found = scripts.find(name, is_img2img, alwayson=False) if scripts is not None else None
    if found is None:
        known = [XYZ_SCRIPT] + [d.title.casefold() for d in (scripts.selectable(is_img2img) if scripts else [])]
        raise HTTPException(422, f"script_name {name!r} is unknown; scripts on this server's "
                                 f"{'img2img' if is_img2img else 'txt2img'}: {', '.join(known)}")
    return ExtensionScriptCall(found.title, script_args)


def xyz_call(args: list[Any], is_img2img: bool, save_grid: bool, registry: AxisRegistry) -> XyzCall:
    """A1111's positional X/Y/Z arguments -> our axis specs and options."""
    names = _OPTION_ARGS_V17 if len(args) >= 9 + len(_OPTION_ARGS_V17) else _OPTION_ARGS_V110
    if len(args) > 9 + len(names):
        raise HTTPException(422, f"script_args: X/Y/Z plot takes at most {9 + len(names)} arguments, got {len(args)}")
    option_values = {**_OPTION_DEFAULTS, **dict(zip(names, args[9:]))}
    for name, value in option_values.items():
        expected = int if name == "margin_size" else bool
        if isinstance(value, bool) is not (expected is bool) or not isinstance(value, expected):
            raise HTTPException(422, f"script_args: {name} must be {'a whole number' if expected is int else 'true or false'}, got {value!r}")
    varied = [name for name in ("vary_seeds_x", "vary_seeds_y", "vary_seeds_z") if option_values[name]]
    if varied:
        raise HTTPException(422, f"script_args: {', '.join(varied)} is not supported by this server")
    axis_args = list(args[:9]) + [None] * (9 - min(len(args), 9))
    specs = []
    for index, axis in enumerate("XYZ"):
        axis_type, text, listed = axis_args[3 * index: 3 * index + 3]
        if axis_type is None:
            axis_type = 1 if axis == "X" else 0  # A1111's defaults: X = Seed, Y and Z = Nothing
        specs.append(_axis_spec(axis, axis_type, text, listed, is_img2img, registry, option_values))
    options = XyzOptions(
        draw_legend=option_values["draw_legend"], keep_seeds=option_values["no_fixed_seeds"],
        include_sub_images=option_values["include_lone_images"],
        include_sub_grids=option_values["include_sub_grids"], margin=option_values["margin_size"], save_grid=save_grid,
    )
    return XyzCall(specs[0], specs[1], specs[2], options.validate())


def _axis_spec(axis: str, axis_type: Any, text: Any, listed: Any, is_img2img: bool, registry: AxisRegistry,
               option_values: dict[str, Any]) -> AxisSpec:
    label = resolve_a1111_axis(axis_type, is_img2img, registry, f"{axis} axis")
    if text is not None and not isinstance(text, str):
        raise HTTPException(422, f"script_args: {axis} values must be text, got {text!r}")
    if listed is not None and (not isinstance(listed, list) or not all(isinstance(item, str) for item in listed)):
        raise HTTPException(422, f"script_args: the {axis} values list must be a list of text items")
    # A1111 reads a choice axis from the list unless csv_mode is on; a text box is read otherwise.
    if registry.get(label).choices is not None and listed and not option_values["csv_mode"]:
        return AxisSpec(label, values=tuple(listed))
    text = text or ""
    if option_values["raw_mode"] and "\n" in text.strip():
        return AxisSpec(label, values=tuple(line for line in text.strip().split("\n")))
    return AxisSpec(label, values_text=text)


def xyz_info(request: Txt2ImgRequest, run: XyzRun) -> dict[str, Any]:
    """A1111's `info` for a plot: the grid first (`index_of_first_image` 1), the cells that ran."""
    plan = run.result.plan
    done = [cell for cell in plan.cells
            if run.result.cell_images[plan.grid_index(cell.x_index, cell.y_index, cell.z_index)] is not None]
    grid_parameters = parse_infotext(run.infotext)
    summary = GenerationResult(
        images=run.images, infotexts=run.infotexts, seeds=[cell.request.seed for cell in done],
        subseeds=[cell.request.subseed for cell in done], prompt=request.prompt,
        negative_prompt=request.negative_prompt, saved_paths=run.saved_paths, interrupted=run.interrupted,
        warnings=run.warnings, model_name=grid_parameters.get("Model"),
        model_hash=grid_parameters.get("Model hash"), vae_name=grid_parameters.get("VAE"),
        vae_hash=grid_parameters.get("VAE hash"), parameters=dict(plan.infotext_fields()),
    )
    info = summary.info(request)
    info.update(index_of_first_image=1, all_prompts=[cell.request.prompt for cell in done],
                all_negative_prompts=[cell.request.negative_prompt for cell in done])
    return info


def build_scripts_router(scripts_factory: Any = None, registry_factory: Any = default_axis_registry) -> APIRouter:
    """`/scripts` and `/script-info` (mounted under the API prefix by `build_api_router`);
    `scripts_factory()` gives the extension scripts (read per request: a failed extension's are gone)."""
    router = APIRouter()

    def extension_scripts() -> ExtensionScripts | None:
        return scripts_factory() if scripts_factory is not None else None

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        catalog = extension_scripts()
        listed = {}
        for tab, is_img2img in (("txt2img", False), ("img2img", True)):
            extra = [d.title.casefold() for d in catalog.selectable(is_img2img)] if catalog else []
            listed[tab] = [XYZ_SCRIPT, *extra]
        return listed

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        registry = registry_factory()
        catalog = extension_scripts()
        infos = [_xyz_script_info(is_img2img, registry) for is_img2img in (False, True)]
        for is_img2img in (False, True):
            for definition in (catalog.definitions() if catalog else []):
                if definition.shows_on(is_img2img):
                    infos.append(extension_script_info(definition, is_img2img))
        return infos

    return router


def extension_script_info(definition: ScriptDefinition, is_img2img: bool) -> dict[str, Any]:
    """A1111's ScriptInfo for an extension script: its arguments in order, each with its `name` (the key
    `script_args` may use instead of the position)."""
    args = []
    for spec in definition.specs:
        kind = type(spec.default)
        step = 1 if kind is int else None
        args.append({"label": spec.label, "name": spec.key, "value": spec.default, "minimum": spec.minimum,
                     "maximum": spec.maximum, "step": step, "choices": list(spec.choices) or None})
    return {"name": definition.title.casefold(), "is_alwayson": definition.alwayson, "is_img2img": is_img2img,
            "args": args}


def _xyz_script_info(is_img2img: bool, registry: AxisRegistry) -> dict[str, Any]:
    """A1111's ScriptInfo for one tab, describing the v1.10 argument list; unsupported axes keep their
    place (indices must match A1111's) and are refused when used."""
    labels = [label for label, _ in a1111_axis_list(is_img2img)]

    def arg(label: str, value: Any, choices: list[str] | None = None, minimum: Any = None, maximum: Any = None,
            step: Any = None) -> dict[str, Any]:
        return {"label": label, "value": value, "minimum": minimum, "maximum": maximum, "step": step,
                "choices": choices}

    axes = []
    for axis, default in (("X", 1), ("Y", 0), ("Z", 0)):
        axes += [arg(f"{axis} type", default, labels), arg(f"{axis} values", ""), arg(f"{axis} values", [])]
    return {
        "name": XYZ_SCRIPT, "is_alwayson": False, "is_img2img": is_img2img,
        "args": axes + [
            arg("Draw legend", True), arg("Include Sub Images", False), arg("Include Sub Grids", False),
            arg("Keep -1 for seeds", False), arg("Grid margins (px)", 0, minimum=0, maximum=MAX_MARGIN, step=2),
            arg("Use text inputs instead of dropdowns", False), arg("Use raw text lines", False),
        ],
    }
