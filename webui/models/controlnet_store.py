"""The ControlNet folder (`models/ControlNet`, A1111's name): what is there, and built modules kept in RAM.

Listing reads each file's tensors once to learn its family and layout (cached by path, size and mtime).
Titles are `name [hash]` the way sd-webui-controlnet's `/controlnet/model_list` shows them (A1111's old
8-digit model hash: sha256 of 64 KiB at 1 MiB into the file), and requests may name a model by title or by
name. Built modules are kept in a bounded LRU (like checkpoints: `--checkpoints-in-ram`), keyed by the
file's version, the checkpoint's UNet architecture, dtype and device, so units reuse them across jobs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from webui.models.controlnet_files import (
    DIFFUSERS_WEIGHTS,
    SUFFIXES,
    ControlNetFile,
    ControlNetFileError,
    build_controlnet,
    inspect_file,
)

NONE = "None"   # the model dropdown's "no model" entry, as sd-webui-controlnet lists it


class UnknownControlNetError(ValueError):
    """A model name that is not in the ControlNet folder; the message lists those that are."""


def legacy_hash(path: Path) -> str:
    """A1111's old model hash (8 hex digits), which sd-webui-controlnet shows in model titles."""
    target = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        handle.seek(0x100000)
        digest.update(handle.read(0x10000))
    return digest.hexdigest()[:8]


def _version(path: Path) -> tuple[int, float]:
    target = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    stat = target.stat()
    return stat.st_size, stat.st_mtime


class ControlNetStore:
    """The ControlNets of one folder; safe to share between workers."""

    def __init__(self, folder: Path, capacity: int = 2, shipped_folders: tuple[Path, ...] = ()):
        self.folder = folder
        # Read-only folders of models the app ships (the toy canny ControlNet), listed after the user's folder
        # so a user's file of the same name wins, as shipped upscalers are.
        self.shipped_folders = shipped_folders
        self.capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._inspected: dict[str, tuple[tuple[int, float], ControlNetFile | str, str]] = {}
        self._modules: OrderedDict[tuple, Any] = OrderedDict()
        self.builds = 0   # modules built so far (a reused one is not built again)

    def _candidates(self) -> list[Path]:
        found = []
        for folder in (self.folder, *self.shipped_folders):
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix in SUFFIXES and path.parent.joinpath(DIFFUSERS_WEIGHTS) != path:
                    found.append(path)
                elif path.is_dir() and (path / DIFFUSERS_WEIGHTS).is_file():
                    found.append(path)
        return found

    def _inspect(self, path: Path) -> tuple[ControlNetFile | str, str]:
        """(the file's description or the reason it cannot be used, its hash), cached per version."""
        key, version = str(path), _version(path)
        with self._lock:
            cached = self._inspected.get(key)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        try:
            described: ControlNetFile | str = inspect_file(path)
        except ControlNetFileError as error:
            described = str(error)
        short = legacy_hash(path)
        with self._lock:
            self._inspected[key] = (version, described, short)
        return described, short

    def scan(self) -> list[tuple[str, ControlNetFile | str]]:
        """(title, file or reason it is unusable) for everything in the folder, by name."""
        rows = []
        for path in self._candidates():
            described, short = self._inspect(path)
            name = path.name if path.is_dir() else path.stem
            rows.append((f"{name} [{short}]", described))
        return rows

    def usable(self, family: str | None = None) -> list[tuple[str, ControlNetFile]]:
        """(title, file) of the usable ControlNets (of one family when given)."""
        return [(title, found) for title, found in self.scan() if isinstance(found, ControlNetFile)
                and (family is None or found.family == family)]

    def titles(self) -> list[str]:
        return [title for title, _ in self.usable()]

    def find(self, wanted: str) -> ControlNetFile:
        """The ControlNet a request names: its title, its name, or a title whose hash changed since."""
        text = (wanted or "").strip()
        name = text.rsplit(" [", 1)[0] if text.endswith("]") else text
        rows = self.scan()
        for title, found in rows:
            if title == text or title.rsplit(" [", 1)[0] == name:
                if isinstance(found, str):
                    raise ControlNetFileError(found)
                return found
        listed = ", ".join(title for title, found in rows if isinstance(found, ControlNetFile)) or "none"
        raise UnknownControlNetError(f"ControlNet model {wanted!r} is not in {self.folder} (models there: {listed})")

    def describe(self, path: Path) -> ControlNetFile:
        """The usable ControlNet at `path` (a file or diffusers folder a model state names)."""
        described, _ = self._inspect(Path(path))
        if isinstance(described, str):
            raise ControlNetFileError(described)
        return described

    def load(self, wanted: str, family: str, unet_config: Mapping[str, Any], checkpoint_name: str,
             device: torch.device, dtype: torch.dtype) -> Any:
        """The ControlNet module `wanted` (title or name) for a checkpoint."""
        return self.module_for(self.find(wanted), family, unet_config, checkpoint_name, device, dtype)

    def module_for(self, found: ControlNetFile, family: str, unet_config: Mapping[str, Any], checkpoint_name: str,
                   device: torch.device, dtype: torch.dtype) -> Any:
        """The ControlNet module for a checkpoint (built once per file version, UNet, dtype and device;
        ControlNetFileError naming both when it is made for another family)."""
        key = (str(found.path), _version(found.path), family,
               json.dumps({k: unet_config.get(k) for k in sorted(unet_config) if not str(k).startswith("_")},
                          sort_keys=True, default=str), str(dtype), str(device))
        with self._lock:
            module = self._modules.get(key)
            if module is not None:
                self._modules.move_to_end(key)
                return module
        module = build_controlnet(found, family, unet_config, checkpoint_name, dtype).to(device)
        with self._lock:
            self.builds += 1
            self._modules[key] = module
            while len(self._modules) > self.capacity:
                self._modules.popitem(last=False)
        return module

    def built_paths(self, device: torch.device) -> frozenset[str]:
        """The files (paths) whose modules are kept built on `device`: what a worker there holds, for the
        scheduler's affinity. Quick (only the store's short lock)."""
        with self._lock:
            return frozenset(key[0] for key in self._modules if key[-1] == str(device))

    def cached_count(self) -> int:
        with self._lock:
            return len(self._modules)
