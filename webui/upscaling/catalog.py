"""Which upscalers exist: the built-in filters and the model files in the upscaler folders.

A model file is listed under its stem (what requests and infotext name), with the architecture and scale
spandrel detects from its weights, or as unusable with the reason: a pickle that needs arbitrary code
(refused by the weights-only reader, never run), weights no architecture claims, a corrupt file, spandrel
missing. Detecting means reading the whole file and building the model, so it is done lazily (when the
list is first asked for, not at start-up) and remembered per (path, mtime, size): a refresh re-reads only
files that are new or changed. The models built on the way are kept in a small RAM cache (`ModelCache`),
so the first upscale after a listing does not read the file again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.models.checkpoint_files import CheckpointReadError, read_weights_object
from webui.models.module_construction import ModuleConstructionBusy, constructing_modules
from webui.upscaling.detection_cache import DetectionCache, FileKey
from webui.upscaling.spandrel_architectures import SpandrelArchitectures, SpandrelMissingError, load_architectures

NONE_UPSCALER = "None"
BUILTIN_UPSCALERS = (NONE_UPSCALER, "Lanczos", "Nearest")  # A1111's non-model upscalers, in its order
UPSCALER_SUFFIXES = frozenset({".pth", ".pt", ".safetensors"})


@dataclass(frozen=True)
class UpscalerEntry:
    """One upscaler as lists show it. `scale` is the model's native factor (1 for the filters, None for
    "None"); `reason` says why an unusable file cannot be used."""

    name: str
    scale: int | None
    architecture: str = ""
    path: Path | None = None
    usable: bool = True
    reason: str = ""
    builtin: bool = False


BUILTIN_ENTRIES = tuple(UpscalerEntry(name, None if name == NONE_UPSCALER else 1, builtin=True)
                        for name in BUILTIN_UPSCALERS)



def file_key(path: Path) -> FileKey:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


class ModelCache:
    """The last few built models (spandrel descriptors on the CPU), by file key; least recently used go."""

    def __init__(self, capacity: int = 2):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[FileKey, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: FileKey) -> Any | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def put(self, key: FileKey, model: Any) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)


class UnusableUpscaler(Exception):
    """A model file that cannot be used; the message is the reason lists show."""


class UpscalerCatalog:
    """The upscaler folders' files, their detection results and the built-model cache.

    `folders` are scanned in order; a stem already taken by an earlier file is listed as unusable (a
    request could not tell them apart). `architectures` is how spandrel is reached (a test may pass a
    loader that raises SpandrelMissingError); `cache_file` keeps detection outcomes across restarts."""

    def __init__(self, folders: Sequence[Path], models_in_ram: int = 2,
                 architectures: Callable[[], SpandrelArchitectures] = load_architectures,
                 cache_file: Path | None = None):
        self.folders = tuple(Path(folder) for folder in folders)
        self.models = ModelCache(models_in_ram)
        self.detections = DetectionCache(cache_file)
        self._load_architectures = architectures
        self._architectures: SpandrelArchitectures | None = None
        self._lock = threading.RLock()
        self._files: list[Path] = []
        self._inspected: dict[FileKey, UpscalerEntry] = {}
        self._scanned_folders: tuple | None = None  # the folders' (path, mtime) when they were last listed

    # -- listing -------------------------------------------------------------------------------------
    def _folder_stamp(self) -> tuple:
        stamps = []
        for folder in self.folders:
            try:
                stamps.append((str(folder), folder.stat().st_mtime_ns))
            except OSError:
                stamps.append((str(folder), None))
        return tuple(stamps)

    def refresh(self) -> None:
        """Re-scan the folders (cheap: names and stat only; files are read when listed)."""
        stamp = self._folder_stamp()
        files = []
        for folder in self.folders:
            if folder.is_dir():
                files.extend(sorted((p for p in folder.iterdir()
                                     if p.suffix.lower() in UPSCALER_SUFFIXES and p.is_file()),
                                    key=lambda p: p.name.lower()))
        with self._lock:
            self._files = files
            self._scanned_folders = stamp

    def entries(self) -> list[UpscalerEntry]:
        """Built-ins first (A1111's order), then every model file sorted by name, usable or not. A folder
        whose modification time changed (a file added, removed or renamed) is scanned again first."""
        with self._lock:
            if self._scanned_folders != self._folder_stamp():
                self.refresh()
            files = list(self._files)
        taken: dict[str, Path] = {name.lower(): Path(name) for name in BUILTIN_UPSCALERS}
        models = []
        for path in files:
            stem = path.stem
            if stem.lower() in taken:
                other = taken[stem.lower()]
                models.append(UpscalerEntry(stem, None, path=path, usable=False,
                                            reason=f"another upscaler has the name {stem!r} ({other}); rename one"))
                continue
            taken[stem.lower()] = path
            models.append(self.inspect(path))
        models.sort(key=lambda entry: (entry.name.lower(), str(entry.path)))
        return [*BUILTIN_ENTRIES, *models]

    def inspect(self, path: Path) -> UpscalerEntry:
        """The entry for one file, read and detected once per (path, mtime, size)."""
        try:
            key = file_key(path)
        except OSError as error:
            return UpscalerEntry(path.stem, None, path=path, usable=False, reason=f"cannot be read ({error})")
        with self._lock:
            known = self._inspected.get(key)
            if known is None:
                try:
                    known = self._detect(path, key)
                except ModuleConstructionBusy as error:  # a passing state, never kept as the file's outcome
                    return UpscalerEntry(path.stem, None, path=path, usable=False, reason=str(error))
                self._inspected = {k: v for k, v in self._inspected.items() if k[0] != key[0]}
                self._inspected[key] = known
            return known

    def _detect(self, path: Path, key: FileKey) -> UpscalerEntry:
        """The file's entry from the kept outcomes, else by reading and building it (and keeping that)."""
        try:
            version = self.spandrel().version
        except UnusableUpscaler as error:  # spandrel missing: nothing to detect with, nothing to keep
            return UpscalerEntry(path.stem, None, path=path, usable=False, reason=str(error))
        kept = self.detections.get(key, version)
        if kept is not None:
            return UpscalerEntry(path.stem, kept.get("scale"), str(kept.get("architecture", "")), path,
                                 bool(kept.get("usable")), str(kept.get("reason", "")))
        try:
            descriptor = self._build(path)
        except UnusableUpscaler as error:
            entry = UpscalerEntry(path.stem, None, path=path, usable=False, reason=str(error))
        else:
            entry = UpscalerEntry(path.stem, int(descriptor.scale), descriptor.architecture.name, path)
            self.models.put(key, descriptor)
        self.detections.put(key, version, {"scale": entry.scale, "architecture": entry.architecture,
                                           "usable": entry.usable, "reason": entry.reason})
        return entry

    # -- models --------------------------------------------------------------------------------------
    def model(self, entry: UpscalerEntry) -> Any:
        """The built model (a spandrel ImageModelDescriptor on the CPU, fp32, eval mode) of a usable entry;
        UnusableUpscaler when the file changed into something unusable since it was listed."""
        assert entry.path is not None
        try:
            key = file_key(entry.path)
        except OSError as error:
            raise UnusableUpscaler(f"{entry.path} cannot be read ({error})") from None
        cached = self.models.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = self.models.get(key)
            if cached is not None:
                return cached
            try:
                descriptor = self._build(entry.path)
            except ModuleConstructionBusy as error:
                raise UnusableUpscaler(str(error)) from None
            self.models.put(key, descriptor)
            return descriptor

    def spandrel(self) -> SpandrelArchitectures:
        """spandrel's registry (imported once per catalog); UnusableUpscaler when spandrel is missing."""
        with self._lock:
            if self._architectures is None:
                try:
                    self._architectures = self._load_architectures()
                except SpandrelMissingError as error:
                    raise UnusableUpscaler(str(error)) from None
            return self._architectures

    def _build(self, path: Path) -> Any:
        architectures = self.spandrel()
        try:
            weights = read_weights_object(path)
        except CheckpointReadError as error:
            raise UnusableUpscaler(error.reason) from None
        if not isinstance(weights, dict) or not weights:
            raise UnusableUpscaler(f"holds a {type(weights).__name__}, not a dict of weights")
        try:
            with constructing_modules():  # spandrel builds the network, then loads the weights into it
                descriptor = architectures.load(weights)
        except architectures.unsupported_error:
            missing = ", ".join(sorted(architectures.unavailable))
            extra = f" (not importable here: {missing})" if missing else ""
            raise UnusableUpscaler(f"architecture not recognised by spandrel {architectures.version}{extra}") from None
        except ModuleConstructionBusy:
            raise
        except Exception as error:  # noqa: BLE001 - a detected architecture whose weights do not fit it
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise UnusableUpscaler(f"spandrel could not build it ({type(error).__name__}: {first_line})") from None
        return _checked_image_model(descriptor)


def _checked_image_model(descriptor: Any) -> Any:
    """Only image-to-image models with RGB in and out are upscalers here (no inpainting, no grayscale)."""
    purpose = getattr(descriptor, "purpose", "")
    if purpose not in ("SR", "FaceSR", "Restoration"):
        raise UnusableUpscaler(f"a {descriptor.architecture.name} model is not an upscaler ({purpose})")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnusableUpscaler(f"takes {descriptor.input_channels}-channel images and makes "
                               f"{descriptor.output_channels}-channel ones; only RGB models are supported")
    return descriptor.float().eval()
