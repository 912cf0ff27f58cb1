"""spandrel's architecture registry, available with or without torchvision.

spandrel is the library ComfyUI and Forge detect and run upscaler architectures with (ESRGAN, Real-ESRGAN's
compact SRVGG, SwinIR, DAT, HAT, ...). Its package initializer builds one registry from every architecture
it knows, and two of those (LaMa inpainting and RestoreFormer face restoration, neither an upscaler) import
torchvision. torchvision's PyPI wheel is built against the CUDA build of torch and cannot be imported beside
the CPU build ("operator torchvision::nms does not exist"), which is what CPU machines and this project's CI
run; spandrel's wheel also names torchvision as a requirement, so the installer adds spandrel without its
requirements (`webui/install.py`).

This module is the one seam for that. Where `import spandrel` works, its own registry is used. Where it
cannot (no torchvision, or a broken one), spandrel's package module is registered under its own name without
running its initializer, each architecture module is imported on its own (one whose import fails is kept
with the reason, so the upscaler list can say why a file is unusable), and a registry is assembled in
spandrel's order, which is read from spandrel's own `main_registry.py` (the order decides which architecture
claims a state dict first). Nothing in spandrel is modified. The consequence of the second route: in this
process, `import spandrel` then yields that bare package, so other code must take spandrel through here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SpandrelMissingError(RuntimeError):
    """spandrel is not installed: model upscalers cannot be used (the built-in ones still can)."""


@dataclass(frozen=True)
class SpandrelArchitectures:
    """The registry that detects an upscaler's architecture from its state dict, and what could not join it."""

    registry: Any                       # spandrel.ArchRegistry
    version: str
    unavailable: dict[str, str] = field(default_factory=dict)  # architecture module -> why it failed to import

    def load(self, state_dict: dict) -> Any:
        """A spandrel ModelDescriptor for the state dict (after spandrel's own key canonicalization);
        raises spandrel's UnsupportedModelError when no architecture claims it."""
        canonicalize = importlib.import_module("spandrel.__helpers.canonicalize").canonicalize_state_dict
        return self.registry.load(canonicalize(state_dict))

    @property
    def unsupported_error(self) -> type[Exception]:
        return importlib.import_module("spandrel.__helpers.registry").UnsupportedModelError


def load_architectures() -> SpandrelArchitectures:
    """Import spandrel (see the module docstring). Raises SpandrelMissingError when it is not installed."""
    package = sys.modules.get("spandrel")
    if package is not None and hasattr(package, "MAIN_REGISTRY"):
        return SpandrelArchitectures(package.MAIN_REGISTRY, _version())
    spec = importlib.util.find_spec("spandrel") if package is None else package.__spec__
    if spec is None or not spec.submodule_search_locations:
        raise SpandrelMissingError("spandrel is not installed (python launch.py installs it)")
    if package is None and importlib.util.find_spec("torchvision") is not None:
        try:
            full = importlib.import_module("spandrel")
            return SpandrelArchitectures(full.MAIN_REGISTRY, _version())
        except Exception:  # noqa: BLE001 - a torchvision that fails to import raises RuntimeError, not ImportError
            sys.modules.pop("spandrel", None)
    return _assemble_without_initializer(spec)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spandrel")
    except PackageNotFoundError:
        return "unknown"


def _assemble_without_initializer(spec: Any) -> SpandrelArchitectures:
    if "spandrel" not in sys.modules:
        sys.modules["spandrel"] = importlib.util.module_from_spec(spec)  # initializer deliberately not run
    registry_module = importlib.import_module("spandrel.__helpers.registry")
    registry = registry_module.ArchRegistry()
    unavailable: dict[str, str] = {}
    supports = []
    for module_name, class_name in registry_order(Path(spec.submodule_search_locations[0])):
        try:
            module = importlib.import_module(f"spandrel.architectures.{module_name}")
            supports.append(registry_module.ArchSupport.from_architecture(getattr(module, class_name)()))
        except Exception as error:  # noqa: BLE001 - any import failure makes just that architecture unusable
            unavailable[module_name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    registry.add(*supports)
    return SpandrelArchitectures(registry, _version(), unavailable)


def registry_order(package_dir: Path) -> list[tuple[str, str]]:
    """(architecture module, class) pairs in the order spandrel's main registry adds them, read from its source:
    every `ArchSupport.from_architecture(Module.ClassArch())` call, in order."""
    tree = ast.parse((package_dir / "__helpers" / "main_registry.py").read_text(encoding="utf-8"))
    order = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_architecture" and node.args
                and isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Attribute)
                and isinstance(node.args[0].func.value, ast.Name)):
            order.append((node.args[0].func.value.id, node.args[0].func.attr))
    return order
