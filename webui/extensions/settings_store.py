"""Extension settings: declared by extensions at start, changed in the Settings tab, kept across restarts.

Values live in `<data>/extension_settings.json` as {extension: {key: value}}. A stored value that no
longer fits its declaration (a choice that was removed, a number now out of range) falls back to the
default, so an extension update never sees a value it did not declare. Every change is checked against
the declaration; a refusal is a `SettingError` (a ValueError: 422 over HTTP, gr.Error in the UI).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sdstudio.extensions")
SETTINGS_FILE = "extension_settings.json"
SettingValue = bool | int | float | str


class SettingError(ValueError):
    """A setting that is unknown, declared twice or given a value its declaration refuses."""


@dataclass(frozen=True)
class SettingSpec:
    """One setting as an extension declares it (exported by the API as `Setting`)."""

    key: str
    label: str
    default: SettingValue
    choices: tuple[str, ...] = ()       # a dropdown when given; the default must be one of them
    minimum: float | None = None        # for numbers
    maximum: float | None = None
    help: str = ""

    def check(self, value: object) -> SettingValue:
        """The value converted to the default's type, or SettingError saying why it is refused."""
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{self.label}: expected true or false, got {value!r}")
            return value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise SettingError(f"{self.label}: expected a number, got {value!r}")
            try:
                number = kind(float(value)) if kind is float else int(str(value).strip())
            except (TypeError, ValueError):
                raise SettingError(f"{self.label}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
            if isinstance(number, float) and not math.isfinite(number):
                raise SettingError(f"{self.label}: {value!r} is not a finite number")
            if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
                raise SettingError(f"{self.label}: {number} is outside {self.minimum} .. {self.maximum}")
            return number
        if not isinstance(value, str):
            raise SettingError(f"{self.label}: expected text, got {value!r}")
        if self.choices and value not in self.choices:
            raise SettingError(f"{self.label}: {value!r} is not one of {', '.join(self.choices)}")
        return value

    def validate_declaration(self) -> None:
        if not self.key or not self.key.replace("_", "").replace("-", "").isalnum():
            raise SettingError(f"setting key {self.key!r} may hold only letters, digits, '-' and '_'")
        if not isinstance(self.default, (bool, int, float, str)):
            raise SettingError(f"setting {self.key!r}: the default must be a bool, int, float or str")
        if self.choices and not isinstance(self.default, str):
            raise SettingError(f"setting {self.key!r}: a setting with choices needs a text default")
        self.check(self.default)


class ExtensionSettings:
    """Declared settings and their current values, one JSON file for all extensions (none: kept in memory,
    for a registry built outside the app, e.g. by a test)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._specs: dict[tuple[str, str], SettingSpec] = {}
        self._lock = threading.Lock()
        self._stored = self._read()

    def _read(self) -> dict[str, dict[str, object]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("%s cannot be read (%s); extension settings start from their defaults", self.path, error)
            return {}
        return {name: values for name, values in data.items() if isinstance(values, dict)} if isinstance(data, dict) else {}

    def declare(self, extension: str, spec: SettingSpec) -> None:
        spec.validate_declaration()
        with self._lock:
            if (extension, spec.key) in self._specs:
                raise SettingError(f"setting {spec.key!r} is declared twice")
            self._specs[(extension, spec.key)] = spec

    def forget(self, extension: str) -> None:
        """Drop the declarations of an extension whose setup failed."""
        with self._lock:
            self._specs = {key: spec for key, spec in self._specs.items() if key[0] != extension}

    def declared(self) -> list[tuple[str, SettingSpec]]:
        """(extension, spec) in declaration order: what the Settings tab shows."""
        with self._lock:
            return [(extension, spec) for (extension, _), spec in self._specs.items()]

    def spec(self, extension: str, key: str) -> SettingSpec:
        try:
            return self._specs[(extension, key)]
        except KeyError:
            raise SettingError(f"extension {extension!r} declares no setting {key!r}") from None

    def value(self, extension: str, key: str) -> SettingValue:
        spec = self.spec(extension, key)
        with self._lock:
            stored = self._stored.get(extension, {}).get(key, spec.default)
        try:
            return spec.check(stored)
        except SettingError:
            return spec.default

    def dotted_values(self) -> dict[str, SettingValue]:
        """Every declared setting as `<extension>.<key>`: value (how /sdapi/v1/options lists them)."""
        return {f"{extension}.{spec.key}": self.value(extension, spec.key) for extension, spec in self.declared()}

    def dotted_changes(self, items: Mapping[str, object]) -> dict[tuple[str, str], object]:
        """The `<extension>.<key>` items that name declared settings; other keys are left out, as A1111
        ignores options it does not know."""
        declared = {f"{extension}.{spec.key}": (extension, spec.key) for extension, spec in self.declared()}
        return {declared[name]: value for name, value in items.items() if name in declared}

    def set(self, extension: str, key: str, value: object) -> SettingValue:
        """Check, store and return the new value (written at once, atomically)."""
        return self.set_many({(extension, key): value})[(extension, key)]

    def set_many(self, changes: Mapping[tuple[str, str], object]) -> dict[tuple[str, str], SettingValue]:
        """Check every change first, then store them all in one write: one refused value (SettingError
        naming each refused setting and its extension) stores nothing."""
        checked: dict[tuple[str, str], SettingValue] = {}
        problems = []
        for (extension, key), value in changes.items():
            try:
                checked[(extension, key)] = self.spec(extension, key).check(value)
            except SettingError as error:
                problems.append(f"{extension}: {error}")
        if problems:
            raise SettingError("; ".join(problems))
        with self._lock:
            for (extension, key), value in checked.items():
                self._stored.setdefault(extension, {})[key] = value
            if self.path is None or not checked:
                return checked
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".json.partial")
            partial.write_text(json.dumps(self._stored, indent=2, sort_keys=True), encoding="utf-8")
            partial.replace(self.path)
        return checked
