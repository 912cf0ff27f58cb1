"""Extension scripts as the app uses them: the catalog the UI and the HTTP API read, and the runners the
engine's `ScriptService` calls (`webui.generation.scripts`).

The catalog is read from the registry each time, so a script whose extension failed disappears from the
dropdown and the API at once. A selectable script is submitted with its values checked and written into
the request's infotext fields (`Script: <title>` plus one pair per field); always-on scripts' values go
into `request.script_values[title]` (and the infotext) where the hooks of their extension read them.
A script's run is called through the registry (isolated and timed); raising `api.ExtensionError` in it
refuses the request with that message and keeps the extension on, anything else switches it off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from webui.extensions import api
from webui.extensions.registry import ExtensionRegistry, HookFailure, Registration
from webui.extensions.script_values import ScriptArgsError, ScriptDefinition
from webui.generation.requests import Txt2ImgRequest
from webui.generation.scripts import InlineGeneration, ScriptOutput, ScriptService
from webui.security.identity import User

SCRIPT_KEY = "Script"   # A1111's infotext key naming the selectable script that made an image


class ScriptUnavailable(ValueError):
    """The script's extension failed (now or before): the request cannot run; the message says why."""


class ExtensionScripts:
    """The extension scripts in the registry, for one app."""

    def __init__(self, registry: ExtensionRegistry):
        self.registry = registry

    def definitions(self) -> list[ScriptDefinition]:
        return [row.payload for row in self.registry.rows(api.SCRIPT)]

    def selectable(self, is_img2img: bool) -> list[ScriptDefinition]:
        return [d for d in self.definitions() if not d.alwayson and d.shows_on(is_img2img)]

    def alwayson(self, is_img2img: bool) -> list[ScriptDefinition]:
        return [d for d in self.definitions() if d.alwayson and d.shows_on(is_img2img)]

    def find(self, title: str, is_img2img: bool, alwayson: bool) -> ScriptDefinition | None:
        wanted = title.strip().casefold()
        found = self.alwayson(is_img2img) if alwayson else self.selectable(is_img2img)
        return next((d for d in found if d.title.casefold() == wanted), None)

    def submit(self, service: ScriptService, title: str, request: Txt2ImgRequest, args: Any,
               owner: User | None = None, webhook_url: str | None = None):
        """Check the script's values and the request, then queue the script's ONE job."""
        is_img2img = hasattr(request, "init_images")
        definition = self.find(title, is_img2img, alwayson=False)
        if definition is None:
            known = ", ".join(d.title for d in self.selectable(is_img2img)) or "none"
            raise ScriptArgsError(f"script {title!r} is unknown on {'img2img' if is_img2img else 'txt2img'}; "
                                  f"extension scripts there: {known}")
        values = definition.parse(args)
        request = request.with_changes(infotext_fields={**request.infotext_fields, SCRIPT_KEY: definition.title,
                                                        **definition.infotext_pairs(values)})
        return service.submit(definition.title, request, definition.as_dict(values), owner, webhook_url)

    def with_alwayson(self, request: Txt2ImgRequest, scripts: Mapping[str, Any]) -> Txt2ImgRequest:
        """The request carrying always-on scripts' values ({title: args}); unknown titles are refused."""
        if not scripts:
            return request
        is_img2img = hasattr(request, "init_images")
        values, infotext = dict(request.script_values), dict(request.infotext_fields)
        for title, args in scripts.items():
            definition = self.find(title, is_img2img, alwayson=True)
            if definition is None:
                known = ", ".join(d.title for d in self.alwayson(is_img2img)) or "none"
                raise ScriptArgsError(f"always-on script {title!r} is unknown; always-on scripts here: {known}")
            parsed = definition.parse(args)
            values[definition.title] = definition.as_dict(parsed)
            infotext.update(definition.infotext_pairs(parsed))
        return request.with_changes(script_values=values, infotext_fields=infotext)

    def runners(self) -> dict[str, "ExtensionScriptRunner"]:
        """The engine's table: every selectable script of an active extension, by lower-case title."""
        return {row.payload.title.casefold(): ExtensionScriptRunner(self.registry, row)
                for row in self.registry.rows(api.SCRIPT) if not row.payload.alwayson}


@dataclasses.dataclass(frozen=True)
class _Refusal:
    message: str


class ExtensionScriptRunner:
    """Runs one extension script inside its job (the engine's `ScriptRunner`)."""

    def __init__(self, registry: ExtensionRegistry, row: Registration):
        self.registry, self.row = registry, row
        self.title = row.payload.title

    def run(self, request: Txt2ImgRequest, values: dict[str, Any], inline: InlineGeneration) -> ScriptOutput:
        definition: ScriptDefinition = self.row.payload
        if not self.registry.records[definition.extension].active:
            raise ScriptUnavailable(f"script {self.title!r} is off: its extension {definition.extension!r} failed "
                                    f"({self.registry.records[definition.extension].problem})")

        def generate(sub_request: Txt2ImgRequest) -> api.JobOutcome:
            result = inline.generate(sub_request)
            return api.JobOutcome(list(result.images), list(result.infotexts), list(result.warnings))

        context = api.ScriptContext(request, definition.parse(values), hasattr(request, "init_images"), generate,
                                    inline.set_message, lambda: inline.interrupted)
        extension_run = self.row.function

        def guarded(script_context: api.ScriptContext) -> Any:
            try:
                return extension_run(script_context)
            except api.ExtensionError as error:  # the script refuses this request; the extension stays on
                return _Refusal(str(error))

        row = dataclasses.replace(self.row, function=guarded, returns=(api.ScriptResult, _Refusal))
        warnings: list[str] = []
        try:
            result = self.registry.call_one(row, context, warnings=warnings)
        except HookFailure:
            raise ScriptUnavailable(warnings[0] if warnings else f"script {self.title!r} failed") from None
        if isinstance(result, _Refusal):
            raise ScriptArgsError(f"{self.title}: {result.message}")
        if len(result.infotexts) != len(result.images):
            self.registry.fail(definition.extension, f"script {self.title!r} returned {len(result.images)} images "
                               f"but {len(result.infotexts)} infotexts", "")
            raise ScriptUnavailable(f"script {self.title!r} returned one infotext per image too few or too many; "
                                    f"its extension {definition.extension!r} is switched off until restart")
        return ScriptOutput(list(result.images), list(result.infotexts), result.grid)
