"""Extension scripts in a generation tab: their entries in the Script dropdown, their controls, the
always-on scripts' accordions, what "paste parameters" restores, and how a chosen script is queued.

A script's controls come from its values dataclass (`webui.ui.typed_controls`, one control per field)
or from its own builder (`ui=`, called through the registry). Component names in the tab's inputs are
`script:<title>:<field>`, so the submit handler reads them back by field name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import gradio as gr

from webui.context import AppContext
from webui.extensions import api
from webui.extensions.registry import HookFailure
from webui.extensions.script_values import ScriptDefinition
from webui.extensions.scripts import SCRIPT_KEY, ExtensionScripts
from webui.generation.requests import Txt2ImgRequest
from webui.jobs.job import Job
from webui.ui.typed_controls import control_for, typed_value
from webui.security.identity import User

PasteField = tuple[str, Callable[[str], Any]]


def input_name(title: str, field_name: str) -> str:
    return f"script:{title}:{field_name}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.casefold())


@dataclass
class ScriptControls:
    """One tab's extension scripts and their components."""

    selectable: list[ScriptDefinition] = field(default_factory=list)
    alwayson: list[ScriptDefinition] = field(default_factory=list)
    groups: list[gr.Group] = field(default_factory=list)      # one per selectable script, in that order
    inputs: dict[str, gr.components.Component] = field(default_factory=dict)
    paste_fields: dict[str, PasteField] = field(default_factory=dict)

    @property
    def titles(self) -> list[str]:
        return [definition.title for definition in self.selectable]

    def visibility(self, chosen: str) -> list:
        """Updates showing the chosen script's group only."""
        return [gr.update(visible=definition.title == chosen) for definition in self.selectable]

    def _values(self, definition: ScriptDefinition, named: dict[str, Any]) -> dict[str, Any]:
        return {spec.key: typed_value(spec, named[input_name(definition.title, spec.key)]) for spec in definition.specs
                if input_name(definition.title, spec.key) in named}

    def prepare(self, ctx: AppContext, request: Txt2ImgRequest, named: dict[str, Any]) -> Txt2ImgRequest:
        """The request with the always-on scripts' values the user changed from their defaults."""
        changed = {}
        for definition in self.alwayson:
            values = self._values(definition, named)
            if not definition.is_default(definition.parse(values)):
                changed[definition.title] = values
        return ExtensionScripts(ctx.extensions).with_alwayson(request, changed)

    def submit(self, ctx: AppContext, request: Txt2ImgRequest, named: dict[str, Any], owner: User) -> Job | None:
        """Queue the chosen extension script (None when the dropdown names none of them)."""
        definition = next((d for d in self.selectable if d.title == named.get("script")), None)
        if definition is None:
            return None
        return ExtensionScripts(ctx.extensions).submit(ctx.scripts, definition.title, request,
                                                       self._values(definition, named), owner)


def script_titles(ctx: AppContext, is_img2img: bool) -> list[str]:
    """The extension scripts the tab's Script dropdown offers."""
    return [definition.title for definition in ExtensionScripts(ctx.extensions).selectable(is_img2img)]


def build_script_controls(ctx: AppContext, prefix: str, is_img2img: bool, builtin: list[str],
                          dropdown: gr.Dropdown) -> ScriptControls:
    """Groups (hidden until chosen) for the selectable scripts, accordions for the always-on ones.
    `builtin` are the dropdown's own entries (a pasted `Script:` may name them too); a script whose
    builder fails is taken out of `dropdown` again."""
    catalog = ExtensionScripts(ctx.extensions)
    controls = ScriptControls()
    for definition in catalog.selectable(is_img2img):
        with gr.Group(visible=False, elem_id=f"{prefix}_script_{_slug(definition.title)}") as group:
            built = _build_fields(ctx, definition, prefix)
        if built is None:
            group.visible = False
            continue
        controls.selectable.append(definition)
        controls.groups.append(group)
        controls.inputs.update(built)
    for definition in catalog.alwayson(is_img2img):
        with gr.Accordion(definition.title, open=False, elem_id=f"{prefix}_alwayson_{_slug(definition.title)}") as box:
            built = _build_fields(ctx, definition, prefix)
        if built is None:
            box.visible = False
            continue
        controls.alwayson.append(definition)
        controls.inputs.update(built)
    for definition in controls.selectable + controls.alwayson:
        for spec, key in zip(definition.specs, definition.infotext_keys):
            controls.paste_fields[input_name(definition.title, spec.key)] = (key, _paste_converter(definition, spec.key))
    titles = [*builtin, *controls.titles]
    dropdown.choices = [(title, title) for title in titles]
    controls.paste_fields["script"] = (SCRIPT_KEY, lambda value: _known_title(value, titles))
    return controls


def _build_fields(ctx: AppContext, definition: ScriptDefinition, prefix: str) -> dict[str, Any] | None:
    """Components by input name; None when the script's own builder failed (its extension is off)."""
    if definition.ui is None:
        return {input_name(definition.title, spec.key): control_for(
                    spec, spec.default, f"{prefix}_script_{_slug(definition.title)}_{spec.key}")
                for spec in definition.specs}
    row = next(row for row in ctx.extensions.rows(api.SCRIPT) if row.payload is definition)
    ui_row = replace(row, function=definition.ui, returns=dict)  # called like a hook: isolated and timed
    try:
        built = ctx.extensions.call_one(ui_row, api.ScriptUi(prefix, f"{prefix}_script_{_slug(definition.title)}"))
    except HookFailure:
        return None
    if set(built) != set(definition.field_names) or not all(isinstance(c, gr.components.Component)
                                                             for c in built.values()):
        ctx.extensions.fail(definition.extension, f"script {definition.title!r}: its ui builder must return one "
                            f"gradio component per field ({', '.join(definition.field_names)})", "")
        return None
    return {input_name(definition.title, name): component for name, component in built.items()}


def _paste_converter(definition: ScriptDefinition, field_name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        values = definition.values_from_infotext({key: text for key, spec in zip(definition.infotext_keys,
                                                                                 definition.specs)
                                                  if spec.key == field_name})
        if field_name not in values:
            raise ValueError(f"{text!r} does not fit {definition.title}'s {field_name}")
        return values[field_name]
    return convert


def _known_title(value: str, titles: list[str]) -> str:
    if value not in titles:
        raise ValueError(f"script {value!r} is not installed")
    return value
