"""Find, order and load extensions: `extensions-builtin/` (shipped) and `<data>/extensions/` (the user's).

A folder is an extension when it holds `extension.toml`. Problems are never fatal: a folder with a bad
manifest, an API range this app does not provide, a name another folder already uses, an import error
or a failing `setup` becomes a record with its reason (and traceback), and the app starts without it.
Which extensions the user switched off is remembered in `<data>/extensions.json`.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webui.extensions.manifest import ExtensionManifest, ManifestError, read_manifest
from webui.extensions.registry import DISABLED, FAILED, LOADED, REFUSED, ExtensionRecord, ExtensionRegistry

log = logging.getLogger("sdstudio.extensions")
SWITCHES_FILE = "extensions.json"
MODULE_PREFIX = "sdstudio_extension_"


@dataclass(frozen=True)
class ExtensionFolder:
    path: Path
    builtin: bool


class ExtensionSwitches:
    """Which extensions the user switched off (by name), kept in a small JSON file under the data folder."""

    def __init__(self, path: Path):
        self.path = path

    def disabled(self) -> set[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as error:
            log.warning("%s cannot be read (%s); every extension is on", self.path, error)
            return set()
        names = data.get("disabled", []) if isinstance(data, dict) else []
        return {name for name in names if isinstance(name, str)}

    def set_enabled(self, name: str, enabled: bool) -> None:
        disabled = self.disabled()
        (disabled.discard if enabled else disabled.add)(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"disabled": sorted(disabled)}, indent=2), encoding="utf-8")
        partial.replace(self.path)


def discover(roots: list[tuple[Path, bool]]) -> list[ExtensionFolder]:
    """Every sub-folder holding a manifest (or trying to: any folder is listed, so a missing manifest is
    reported), builtin roots first; hidden folders and `__pycache__` are skipped."""
    found = []
    for root, builtin in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir(), key=lambda p: p.name.casefold()):
            if path.is_dir() and not path.name.startswith((".", "_")):
                found.append(ExtensionFolder(path, builtin))
    return found


def load_order(manifests: dict[str, ExtensionManifest]) -> tuple[list[str], list[str]]:
    """Names in load order: an extension comes after those it names in `load_after` (when present), ties
    broken by name. Returns (order, names caught in a cycle), the latter loaded by name at the end."""
    remaining = dict(sorted(manifests.items(), key=lambda item: item[0].casefold()))
    order: list[str] = []
    while remaining:
        ready = [name for name, manifest in remaining.items()
                 if not any(after in remaining for after in manifest.load_after if after != name)]
        if not ready:
            cycle = list(remaining)
            return order + cycle, cycle
        order.append(ready[0])
        del remaining[ready[0]]
    return order, []


def load_extensions(registry: ExtensionRegistry, roots: list[tuple[Path, bool]], switches: ExtensionSwitches,
                    make_setup: Callable[[ExtensionRecord], object], *, load_user_extensions: bool = True,
                    load_any: bool = True) -> ExtensionRegistry:
    """Fill the registry: a record per folder, and the registrations of every extension that loads.

    `make_setup(record)` builds the object handed to the extension's `setup` (webui.extensions.api's
    `ExtensionSetup`); `load_user_extensions`/`load_any` follow --disable-extra-extensions and
    --disable-all-extensions (the records are still listed, as disabled)."""
    disabled = switches.disabled()
    manifests: dict[str, ExtensionManifest] = {}
    for folder in discover(roots):
        record = ExtensionRecord(name=folder.path.name, folder=folder.path, builtin=folder.builtin)
        try:
            record.manifest = manifest = read_manifest(folder.path)
        except ManifestError as error:
            _refuse(registry, record, str(error))
            continue
        record.name = manifest.name
        if manifest.name in registry.records:
            other = registry.records[manifest.name]
            record.name = f"{manifest.name} ({folder.path.name})"
            _refuse(registry, record, f"the name {manifest.name!r} is already used by {other.folder}; rename one "
                                      "of them in its extension.toml")
            continue
        if not manifest.supports(registry.api_version):
            _refuse(registry, record, f"needs extension API {manifest.api}; this SD Studio provides "
                                      f"{registry.api_version}")
            continue
        switched_off = (manifest.name in disabled or not load_any or (not folder.builtin and not load_user_extensions))
        record.state = DISABLED if switched_off else LOADED
        registry.add_record(record)
        if not switched_off:
            manifests[manifest.name] = manifest
    order, cycle = load_order(manifests)
    if cycle:
        log.warning("extensions %s name each other in load_after; loading them by name", ", ".join(cycle))
    for name in order:
        _import_and_setup(registry, registry.records[name], make_setup)
    return registry


def _refuse(registry: ExtensionRegistry, record: ExtensionRecord, problem: str) -> None:
    record.state, record.problem = REFUSED, problem
    registry.add_record(record)
    log.warning("extension folder %s not loaded: %s", record.folder, problem)


def module_name(extension: str) -> str:
    return MODULE_PREFIX + extension.replace("-", "_")


def _import_and_setup(registry: ExtensionRegistry, record: ExtensionRecord,
                      make_setup: Callable[[ExtensionRecord], object]) -> None:
    """Import the entry module as part of a package named after the extension (so the extension's own
    modules import each other with relative imports), then call its `setup`."""
    assert record.manifest is not None
    entry = record.folder / record.manifest.entry
    package = module_name(record.name)
    started = time.perf_counter()
    try:
        if not entry.is_file():
            raise FileNotFoundError(f"entry file {record.manifest.entry} does not exist in {record.folder}")
        for loaded in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
            del sys.modules[loaded]  # a fresh load (a second app in one process must not get stale modules)
        namespace = types.ModuleType(package)
        namespace.__path__ = [str(record.folder)]
        sys.modules[package] = namespace
        module = importlib.import_module(f"{package}.{Path(record.manifest.entry).stem}")
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise TypeError(f"{record.manifest.entry} defines no setup(ext) function")
        setup(make_setup(record))
    except (Exception, SystemExit) as error:  # an extension's import must never stop the app
        registry.forget(record.name)
        record.state, record.problem = FAILED, f"{type(error).__name__}: {error}"
        record.traceback = traceback.format_exc()
        log.error("extension %s failed to load: %s\n%s", record.name, record.problem, record.traceback)
    finally:
        record.import_seconds = time.perf_counter() - started
