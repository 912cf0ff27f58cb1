"""A script's values: one typed dataclass per script, passed BY NAME.

An extension declares its script's values as a dataclass whose fields all have defaults; the default's
type is the field's type (bool, int, float or str), and `api.script_field` adds a label, choices,
bounds, help and the infotext key. Each field becomes a `SettingSpec`, so a script value is checked by
the same rule as a setting (one place), and its control is built the same way.

Values arrive as a dict of field names (this app's clients, the UI) or, for A1111 clients, as a list in
the dataclass's field order; missing fields keep their defaults. Anything else is a `ScriptArgsError`
(a ValueError: 422 over HTTP, gr.Error in the UI) that names the script and the field.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webui.extensions.settings_store import SettingError, SettingSpec
from webui.generation.infotext import readable_key

FIELD_META = "sdstudio_script_field"   # dataclass field metadata key set by api.script_field
_INFOTEXT_KEY = re.compile(r"[^\w \-/]+")
RESERVED_TITLES = ("none", "x/y/z plot", "outpainting")


class ScriptArgsError(ValueError):
    """Script values that do not fit the script's dataclass."""


@dataclass(frozen=True)
class ScriptDefinition:
    """One script as an extension registered it (the payload of its registry row)."""

    extension: str
    title: str
    values_type: type
    specs: tuple[SettingSpec, ...]
    infotext_keys: tuple[str, ...]    # one per spec, same order
    alwayson: bool = False
    txt2img: bool = True
    img2img: bool = True
    run: Callable[..., Any] | None = None
    ui: Callable[..., Any] | None = None
    # An always-on script's own readers and writer (api.add_script's read_args / write_infotext /
    # read_infotext), for formats that are not one value per field (sd-webui-controlnet's unit objects).
    read_args: Callable[[Any], Mapping[str, Any]] | None = None
    write_infotext: Callable[[Any], Mapping[str, Any]] | None = None
    read_infotext: Callable[[Mapping[str, str]], Mapping[str, Any]] | None = None

    @property
    def field_names(self) -> list[str]:
        return [spec.key for spec in self.specs]

    def shows_on(self, is_img2img: bool) -> bool:
        return self.img2img if is_img2img else self.txt2img

    def parse(self, args: Any) -> Any:
        """The values dataclass from a dict by field name, a list in field order, or None (the defaults);
        a script with its own `read_args` reads anything that is not a dict of its field names first."""
        if self.read_args is not None and args is not None and not (
                isinstance(args, Mapping) and set(args) <= set(self.field_names)):
            args = self._own_reading(self.read_args, args)
        if args is None:
            given: dict[str, Any] = {}
        elif isinstance(args, Mapping):
            unknown = [name for name in args if name not in self.field_names]
            if unknown:
                raise ScriptArgsError(f"{self.title}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                                      f"its arguments: {', '.join(self.field_names) or 'none'}")
            given = dict(args)
        elif isinstance(args, (list, tuple)):
            if len(args) > len(self.specs):
                raise ScriptArgsError(f"{self.title} takes at most {len(self.specs)} arguments "
                                      f"({', '.join(self.field_names) or 'none'}), got {len(args)}")
            given = dict(zip(self.field_names, args))
        else:
            raise ScriptArgsError(f"{self.title}: arguments must be an object of argument names or a list, "
                                  f"got {type(args).__name__}")
        values = {}
        for spec in self.specs:
            try:
                values[spec.key] = spec.check(given[spec.key]) if spec.key in given else spec.default
            except SettingError as error:
                raise ScriptArgsError(f"{self.title}: {spec.key}: {error}") from None
        return self.values_type(**values)

    def _own_reading(self, reader: Callable[[Any], Any], given: Any) -> dict[str, Any]:
        """What the script's own reader makes of `given`; its refusals (and bugs) are the caller's 422."""
        try:
            read = reader(given)
        except Exception as error:  # the extension's message, never a traceback
            raise ScriptArgsError(f"{self.title}: {error}") from None
        if not isinstance(read, Mapping):
            raise ScriptArgsError(f"{self.title}: its argument reader returned {type(read).__name__}, not a dict")
        return dict(read)

    def as_dict(self, values: Any) -> dict[str, Any]:
        return {spec.key: getattr(values, spec.key) for spec in self.specs}

    def is_default(self, values: Any) -> bool:
        return all(getattr(values, spec.key) == spec.default for spec in self.specs)

    def infotext_pairs(self, values: Any) -> dict[str, Any]:
        """`Key: value` pairs for the images' infotext (PNG Info and send-to read them back)."""
        if self.write_infotext is not None:
            return {str(key): value for key, value in self._own_reading(self.write_infotext, values).items()}
        return {key: getattr(values, spec.key) for key, spec in zip(self.infotext_keys, self.specs)}

    def values_from_infotext(self, parameters: Mapping[str, str]) -> dict[str, Any]:
        """Field values an infotext records (parsed `Key: value` pairs); values that do not fit are skipped."""
        found = {}
        if self.read_infotext is not None:
            try:
                read = self._own_reading(self.read_infotext, dict(parameters))
            except ScriptArgsError:
                return {}
            for spec in self.specs:
                if spec.key in read:
                    try:
                        found[spec.key] = spec.check(read[spec.key])
                    except SettingError:
                        continue
            return found
        for key, spec in zip(self.infotext_keys, self.specs):
            if key in parameters:
                try:
                    found[spec.key] = spec.check(from_text(spec, parameters[key]))
                except (SettingError, ValueError):
                    continue
        return found


def from_text(spec: SettingSpec, text: str) -> Any:
    """An infotext value (always text) in the field's type."""
    kind = type(spec.default)
    if kind is bool:
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not True or False")
        return text == "True"
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def define_script(extension: str, title: str, values_type: type, *, alwayson: bool, txt2img: bool, img2img: bool,
                  run: Callable[..., Any] | None, ui: Callable[..., Any] | None,
                  read_args: Callable[[Any], Mapping[str, Any]] | None = None,
                  write_infotext: Callable[[Any], Mapping[str, Any]] | None = None,
                  read_infotext: Callable[[Mapping[str, str]], Mapping[str, Any]] | None = None) -> ScriptDefinition:
    """Check a script registration and describe it; ScriptArgsError says what is wrong."""
    title = (title or "").strip() if isinstance(title, str) else ""
    if not title or _INFOTEXT_KEY.search(title):
        raise ScriptArgsError(f"script title {title!r} must be non-empty letters, digits, spaces, '-' or '/'")
    if title.casefold() in RESERVED_TITLES:
        raise ScriptArgsError(f"script title {title!r} is the app's own")
    if not (isinstance(values_type, type) and dataclasses.is_dataclass(values_type)):
        raise ScriptArgsError(f"script {title!r}: values must be a dataclass type, got {values_type!r}")
    if alwayson and run is not None:
        raise ScriptArgsError(f"script {title!r}: an always-on script has no run (it acts through its hooks)")
    if not alwayson and not callable(run):
        raise ScriptArgsError(f"script {title!r}: a selectable script needs a run function")
    if ui is not None and not callable(ui):
        raise ScriptArgsError(f"script {title!r}: ui must be a function")
    if not (txt2img or img2img):
        raise ScriptArgsError(f"script {title!r} shows on neither txt2img nor img2img")
    specs, keys = [], []
    for item in dataclasses.fields(values_type):
        meta = item.metadata.get(FIELD_META, {})
        if item.default is dataclasses.MISSING:
            raise ScriptArgsError(f"script {title!r}: field {item.name!r} needs a default")
        spec = SettingSpec(item.name, meta.get("label") or item.name.replace("_", " ").capitalize(), item.default,
                           tuple(meta.get("choices", ())), meta.get("minimum"), meta.get("maximum"),
                           meta.get("help", ""))
        try:
            spec.validate_declaration()
        except SettingError as error:
            raise ScriptArgsError(f"script {title!r}: {error}") from None
        specs.append(spec)
        key = meta.get("infotext") or f"{title} {item.name.replace('_', ' ')}"
        if not readable_key(key):
            raise ScriptArgsError(f"script {title!r}: infotext key {key!r} cannot be read back (letters, digits, "
                                  "'_', spaces, '-' or '/', starting with a letter or digit)")
        keys.append(key)
    for name, reader in (("read_args", read_args), ("write_infotext", write_infotext),
                         ("read_infotext", read_infotext)):
        if reader is not None and not callable(reader):
            raise ScriptArgsError(f"script {title!r}: {name} must be a function")
    if (write_infotext is None) != (read_infotext is None):
        raise ScriptArgsError(f"script {title!r}: write_infotext and read_infotext go together (what one "
                              "writes, the other must read back)")
    return ScriptDefinition(extension, title, values_type, tuple(specs), tuple(keys), alwayson, txt2img, img2img,
                            run, ui, read_args, write_infotext, read_infotext)
