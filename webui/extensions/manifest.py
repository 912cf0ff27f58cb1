"""`extension.toml`: what an extension says about itself before any of its code runs.

    name = "wildcards"                 # unique; letters, digits, '-', '_' (the folder name is not used)
    version = "1.2.0"                  # the extension's own version, shown in the Extensions tab
    api = ">=1.0, <2"                  # the range of webui.extensions.api versions it was written for
    description = "..."
    entry = "extension.py"             # the module that defines `setup(ext)`; this is the default
    load_after = ["other-extension"]   # hints: load after these when they are present
    requirements = ["somepkg>=1.2"]    # pip requirement lines, installed only after a conflict check

Everything is checked here, so that a broken manifest becomes one clear line in the Extensions tab.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

MANIFEST_FILE = "extension.toml"
DEFAULT_ENTRY = "extension.py"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FIELDS = {"name", "version", "api", "description", "entry", "load_after", "requirements"}


class ManifestError(ValueError):
    """The manifest is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class ExtensionManifest:
    name: str
    version: str
    api: SpecifierSet
    description: str = ""
    entry: str = DEFAULT_ENTRY
    load_after: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()

    def supports(self, api_version: str) -> bool:
        return self.api.contains(Version(api_version), prereleases=True)


def read_manifest(folder: Path) -> ExtensionManifest:
    """The folder's manifest, checked field by field; ManifestError says what is wrong."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{folder.name}: no {MANIFEST_FILE}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE} cannot be read: {error}") from None

    def text(field: str, required: bool = True, default: str = "") -> str:
        value = data.get(field, None if required else default)
        if not isinstance(value, str) or (required and not value.strip()):
            raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: '{field}' must be a non-empty string")
        return value.strip()

    def strings(field: str) -> tuple[str, ...]:
        value = data.get(field, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: '{field}' must be a list of strings")
        return tuple(item.strip() for item in value if item.strip())

    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(_FIELDS))}")
    name = text("name")
    if not _NAME.match(name):
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: name {name!r} may hold only letters, digits, '-' "
                            "and '_' (at most 64)")
    version = text("version")
    try:
        Version(version)
    except InvalidVersion:
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: version {version!r} is not a version number") from None
    api_text = text("api")
    try:
        api = SpecifierSet(api_text)
    except InvalidSpecifier:
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: api {api_text!r} is not a version range "
                            "such as \">=1.0, <2\"") from None
    entry = text("entry", required=False, default=DEFAULT_ENTRY) or DEFAULT_ENTRY
    if Path(entry).is_absolute() or ".." in Path(entry).parts or not entry.endswith(".py"):
        raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: entry {entry!r} must be a .py file inside the folder")
    requirements = strings("requirements")
    for line in requirements:
        try:
            Requirement(line)
        except InvalidRequirement:
            raise ManifestError(f"{folder.name}/{MANIFEST_FILE}: requirement {line!r} is not a pip "
                                "requirement") from None
    return ExtensionManifest(name=name, version=version, api=api, description=text("description", False),
                             entry=entry, load_after=strings("load_after"), requirements=requirements)
