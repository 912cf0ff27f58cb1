"""The model manager: one object that owns the loaded pipeline and serializes all use of it.

Callers declare what they want as one value, a :class:`~webui.models.state.ModelState` (checkpoint,
VAE, LoRAs, embeddings; build it with :meth:`ModelManager.state_for`), and
``with manager.checkout(state) as model:`` reconciles: nothing to do when it is already loaded, copy
weights into the resident modules when the new checkpoint has the same layout, rebuild only when the
architecture differs; LoRAs and embeddings are patches over the untouched base weights
(:mod:`webui.models.patches`). Recently used checkpoints stay in CPU RAM (a bounded LRU) so switching
back and forth never re-reads files and never grows memory. A switch asked for during a generation
waits for the lock that the generation holds.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from webui.jobs.errors import WorkerStartError
from webui.models.catalog import CheckpointCatalog, CheckpointRecord, UnknownCheckpointError
from webui.models.families import family_named
from webui.models.checkpoint_settings import CheckpointSettings
from webui.models.controlnet_store import ControlNetStore
from webui.models.hashing import HashCache
from webui.models.embeddings import EmbeddingCatalog, EmbeddingInjector
from webui.models.lora import ForeignLoraError, LoraApplier, LoraFile
from webui.models.lora_catalog import LoraUse
from webui.models.patches import ModelPatcher, PatchSet, token_patches
from webui.models.state import LoraChoice, ModelFile, ModelState, build_state
from webui.models.vae import read_vae_state_dict, vae_beside_checkpoint
from webui.models.checkpoint_loading import (
    CheckpointLoadError,
    CheckpointWeights,
    build_pipeline,
    copy_weights_into,
    read_checkpoint_weights,
)

AUTOMATIC_VAE = "Automatic"  # a `<checkpoint>.vae.safetensors` beside the checkpoint, else its own VAE
CHECKPOINT_VAE = "None"      # always the checkpoint's own VAE


@dataclass(frozen=True)
class LoadedModel:
    """What a generation gets while it holds the manager: the pipeline and what it was built from.

    ``state`` is the wanted state the model was reconciled to and ``state_key`` its content key
    (:meth:`ModelState.key`): the scheduler can compare a job's state key with the key a worker holds
    to prefer the worker that needs no switch at all (today it compares checkpoint paths only).
    """

    pipeline: Any
    record: CheckpointRecord
    family: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    loras: tuple[LoraUse, ...] = ()
    embeddings: EmbeddingInjector | None = None
    vae_path: Path | None = None  # an external VAE file in use; None = the checkpoint's own
    warnings: tuple[str, ...] = ()  # things the user should know, e.g. LoRA keys that matched no layer
    hashes: HashCache | None = None  # sha256 of model files, computed once per file version
    state: ModelState | None = None
    state_key: str | None = None
    # txt2img's Refiner for this job (a second resident pipeline, or this one when the same checkpoint).
    refiner: "LoadedModel | None" = None
    # The state's ControlNet modules on this device and dtype, by the file's path (str), built for the checkpoint.
    controls: Mapping[str, Any] = field(default_factory=dict)


def _weight_modules(pipeline: Any, family: str) -> dict[str, torch.nn.Module]:
    """The modules LoRAs change: the family's denoiser (UNet or transformer) and every text encoder it has."""
    model_family = family_named(family)
    names = (model_family.denoiser, *model_family.text_encoders)
    return {name: getattr(pipeline, name) for name in names if getattr(pipeline, name, None) is not None}


class CheckpointRamCache:
    """LRU of checkpoint weights in CPU memory, keyed by file path, version and dtype.

    One cache can serve several model managers (one per worker): weights read once are shared, not
    duplicated, and two workers asking for the same file at once read it once (the second waits).
    """

    def __init__(self, capacity: int, pin_memory: bool):
        self.capacity = max(1, capacity)
        self._pin = pin_memory
        self._entries: OrderedDict[tuple, CheckpointWeights] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    @staticmethod
    def key(record: CheckpointRecord, dtype: torch.dtype) -> tuple:
        stat = record.path.stat()
        return (str(record.path), stat.st_size, stat.st_mtime, str(dtype))

    def get_or_load(self, record: CheckpointRecord, dtype: torch.dtype,
                    load: Callable[[], CheckpointWeights]) -> CheckpointWeights:
        """The cached weights, else `load()` (once per key, even when several workers ask together)."""
        key = self.key(record, dtype)
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                weights = self._entries.get(key)
                if weights is not None:
                    self._entries.move_to_end(key)
                    return weights
            try:
                weights = load()  # may raise: nothing is cached then
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            if self._pin:
                for component, state_dict in weights.state_dicts.items():
                    weights.state_dicts[component] = {k: v.pin_memory() for k, v in state_dict.items()}
            with self._lock:
                self._entries[key] = weights
                self._entries.move_to_end(key)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            return weights

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class ModelManager:
    """Owns the one resident pipeline; every use of it goes through `checkout`."""

    def __init__(self, catalog: CheckpointCatalog, device: torch.device, dtype: torch.dtype,
                 checkpoints_in_ram: int = 2, preferred_checkpoint: str | None = None,
                 embedding_catalog: EmbeddingCatalog | None = None,
                 on_model_loaded: Callable[[CheckpointRecord, str], None] | None = None,
                 ram_cache: CheckpointRamCache | None = None,
                 checkpoint_settings: CheckpointSettings | None = None,
                 controlnets: ControlNetStore | None = None):
        self.catalog = catalog
        self._controlnets = controlnets  # models/ControlNet; built modules are kept there (bounded, shared)
        self.device = device
        self.dtype = dtype
        self.preferred_checkpoint = preferred_checkpoint
        self._on_model_loaded = on_model_loaded
        self._checkpoint_settings = checkpoint_settings  # per-checkpoint user choices (v-prediction ...)
        self._lock = threading.RLock()
        # Pass one `ram_cache` to several managers (one per worker) to share the weights they read.
        self._ram = ram_cache if ram_cache is not None else CheckpointRamCache(
            checkpoints_in_ram, pin_memory=device.type == "cuda")
        self._pipeline: Any = None
        self._weights: CheckpointWeights | None = None
        self._lora: LoraApplier | None = None  # reads LoRA files into patches for the resident modules
        self._embedding_catalog = embedding_catalog
        self._embeddings: EmbeddingInjector | None = None
        self._patches: ModelPatcher | None = None  # LoRA and embedding patches over the base weights
        self._state_key: str | None = None
        self._vae_path: Path | None = None
        self._vae_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        # txt2img's Refiner: a second pipeline, held only while jobs ask for one (see `_reconcile_refiner`).
        self._refiner_pipeline: Any = None
        self._refiner_weights: CheckpointWeights | None = None
        self.switch_count = {"copied": 0, "rebuilt": 0}

    @property
    def embedding_catalog(self) -> EmbeddingCatalog | None:
        return self._embedding_catalog

    @property
    def current(self) -> CheckpointRecord | None:
        weights = self._weights
        return weights.record if weights else None

    @property
    def held_state_key(self) -> str | None:
        """The key of the state the resident model was last reconciled to (None before any checkout)."""
        return self._state_key

    @property
    def lora_reads(self) -> int:
        """How many LoRA files were parsed for the resident pipeline (re-weighting parses none)."""
        return self._lora.reads if self._lora is not None else 0

    @property
    def encoder_widths(self) -> dict[str, int] | None:
        """Text-encoder widths of the loaded model (which embeddings fit it); None before any load."""
        injector = self._embeddings
        return injector.encoder_widths if injector is not None else None

    def default_record(self) -> CheckpointRecord:
        if self.preferred_checkpoint:
            try:
                return self.catalog.find(self.preferred_checkpoint)
            except LookupError:
                pass
        usable = self.catalog.usable_records() or [r for r in self.catalog.refresh() if r.usable]
        if not usable:
            raise CheckpointLoadError(f"no usable checkpoint in {self.catalog.folder}")
        return usable[0]

    def _weights_for(self, record: CheckpointRecord) -> CheckpointWeights:
        return self._ram.get_or_load(record, self.dtype, lambda: read_checkpoint_weights(
            record, self.dtype, self.catalog.text_encoder_folder, self.catalog.vae_folder))

    def weights_of(self, record: CheckpointRecord) -> CheckpointWeights:
        """A checkpoint's weights in CPU memory (from the RAM cache when recent), e.g. for merging."""
        with self._lock:
            return self._weights_for(self.catalog.with_hash(record))

    def _switch_to(self, record: CheckpointRecord) -> None:
        record = self.catalog.with_hash(record)
        weights = self._weights_for(record)  # may raise; the resident model is untouched until here
        weights.record = record
        self._state_key = None
        if self._patches is not None:
            # Merged LoRAs must not survive into the next checkpoint's weights, and the token tables must
            # have the checkpoint's shape to be copied into.
            self._patches.remove()
        if self._pipeline is not None and self._weights is not None and (
            weights.layout_signature == self._weights.layout_signature
        ):
            copy_weights_into(self._pipeline, weights)
            self.switch_count["copied"] += 1
        else:
            self._pipeline = self._lora = self._embeddings = self._patches = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._pipeline = build_pipeline(weights, self.device, self.dtype)
            self.switch_count["rebuilt"] += 1
            # New modules need new appliers; after a copy the old ones (restored, cleared) keep their caches.
            self._lora = LoraApplier(_weight_modules(self._pipeline, weights.architecture.family),
                                     weights.architecture.family)
            self._embeddings = EmbeddingInjector(self._pipeline, weights.architecture.family)
            self._patches = ModelPatcher(self._lora.patcher, self._embeddings)
        self._weights = weights
        self._vae_path = None  # copying or rebuilding put the checkpoint's own VAE in place
        if self._on_model_loaded:  # (record, family): e.g. extensions' model-loaded hooks
            self._on_model_loaded(record, weights.architecture.family)

    def _reconcile_vae(self, path: Path | None) -> None:
        """Copy the wanted VAE's weights into the resident VAE (None: the checkpoint's own, from the RAM cache)."""
        assert self._weights is not None
        if path == self._vae_path:
            return
        if path is None:
            state = self._weights.state_dicts["vae"]
        else:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime)
            state = self._vae_cache.get(key)
            if state is None:
                state = {k: v.to(self.dtype) if v.is_floating_point() else v
                         for k, v in read_vae_state_dict(path, self._weights.configs["vae"]).items()}
                self._vae_cache[key] = state
                while len(self._vae_cache) > 2:
                    self._vae_cache.popitem(last=False)
        self._pipeline.vae.load_state_dict(state, strict=True)
        self._vae_path = path

    def state_for(self, wanted: str | None = None, loras: Sequence[LoraUse] = (),
                  vae: str | Path = AUTOMATIC_VAE, controls: Sequence[str] = ()) -> ModelState:
        """The wanted state for what callers know today: a checkpoint title/name/hash (None: the loaded
        one, else the default), the LoRAs of a prompt's tags, a VAE choice (``AUTOMATIC_VAE``,
        ``CHECKPOINT_VAE`` or a file) and the ControlNets (titles or names) of the job's units. A Hub id is
        downloaded here when allowed; every file is hashed once per version (see :mod:`webui.models.state`)."""
        if wanted:
            record = self.catalog.find_or_fetch(wanted)
        else:
            record = self.current or self.default_record()
        if vae == AUTOMATIC_VAE:
            vae_path = vae_beside_checkpoint(record.path)
        else:
            vae_path = None if vae == CHECKPOINT_VAE else Path(vae)
        embeddings = None
        if self._embedding_catalog is not None:
            # Like A1111, every embedding in the folder is usable by its file name (those that fit the
            # checkpoint's text encoders are injected).
            self._embedding_catalog.refresh()
            embeddings = self._embedding_catalog.embeddings
        return build_state(record, self.catalog.hashes, loras, vae_path, embeddings, self._control_files(controls))

    def control_keys(self, names: Sequence[str]) -> tuple[str, ...]:
        """The files (paths) the ControlNet names stand for, for the scheduler's affinity; a name not found
        is left out (the job reports it when it runs)."""
        if self._controlnets is None:
            return ()
        keys = []
        for name in names:
            try:
                keys.append(str(self._controlnets.find(name).path))
            except (LookupError, ValueError):
                continue
        return tuple(keys)

    def held_control_keys(self) -> frozenset[str]:
        """The ControlNet files built on this manager's device (kept by the shared store): never waits for
        a checkout, so the scheduler may ask it at any time."""
        return self._controlnets.built_paths(self.device) if self._controlnets is not None else frozenset()

    def _control_files(self, names: Sequence[str]) -> list[tuple[str, Path]]:
        """(name, path) of each ControlNet named (UnknownControlNetError lists the folder's models)."""
        if not names:
            return []
        if self._controlnets is None:
            raise CheckpointLoadError("ControlNets were asked for but this app has no ControlNet folder")
        found = [self._controlnets.find(name) for name in names]
        return [(item.name, item.path) for item in found]

    def _reconcile_controls(self, state: ModelState) -> dict[str, Any]:
        """The state's ControlNet modules for the resident checkpoint, on its device and dtype. The store
        keeps built modules (bounded, shared by workers), so a ControlNet that the last jobs used is not
        built again; one made for another family raises ControlNetFileError naming both."""
        if not state.controls:
            return {}
        assert self._controlnets is not None and self._weights is not None and self._pipeline is not None
        family = self._weights.architecture.family
        denoiser = getattr(self._pipeline, family_named(family).denoiser)
        unet_config = dict(denoiser.config)
        return {str(control.path): self._controlnets.module_for(
                    self._controlnets.describe(control.path), family, unet_config, self._weights.record.name,
                    self.device, self.dtype) for control in state.controls}

    def _record_of(self, checkpoint: ModelFile) -> CheckpointRecord:
        """The catalog's record of a state's checkpoint file, with the state's content hash."""
        for attempt in range(2):
            for record in self.catalog.records():
                if record.path == checkpoint.path:
                    record = self.catalog.with_hash(record)  # the catalog's titles show the hash from now on
                    if record.sha256 != checkpoint.sha256:  # the catalog's hash predates a change of the file
                        record = dataclasses.replace(record, sha256=checkpoint.sha256)
                    return record
            if attempt == 0:
                self.catalog.refresh()
        raise UnknownCheckpointError(f"checkpoint {checkpoint.name!r} ({checkpoint.path}) is no longer in the catalog")
    def scheduler_config_of(self, weights: CheckpointWeights) -> dict:
        """The checkpoint's scheduler config with its user settings on top (read at every checkout, so a
        changed setting applies to the next job without reloading the weights)."""
        overrides = (self._checkpoint_settings.scheduler_overrides(weights.record.name)
                     if self._checkpoint_settings is not None else {})
        return {**weights.scheduler_config, **overrides}

    def _reconcile_refiner(self, wanted: str | None) -> "LoadedModel | None":
        """The job's refiner as a second resident pipeline, built from the RAM cache's weights (the refiner
        and the base both stay in CPU RAM: the cache holds two checkpoints by default). Holding two pipelines
        costs the refiner's modules in device memory (an SDXL refiner: about 6 GB in fp16) for as long as jobs
        ask for it; a job without a refiner lets it go. A refiner that is the loaded checkpoint itself is the
        resident pipeline (A1111 does not switch then either)."""
        if not wanted:
            self._refiner_pipeline = self._refiner_weights = None
            return None
        assert self._weights is not None
        record = self.catalog.with_hash(self.catalog.find(wanted))
        if record.path == self._weights.record.path:
            pipeline, weights = self._pipeline, self._weights
        else:
            current = self._refiner_weights
            if current is None or current.record.path != record.path:
                weights = self._weights_for(record)
                weights.record = record
                if self._refiner_pipeline is not None and current is not None and (
                        weights.layout_signature == current.layout_signature):
                    copy_weights_into(self._refiner_pipeline, weights)
                else:
                    self._refiner_pipeline = None
                    gc.collect()
                    self._refiner_pipeline = build_pipeline(weights, self.device, self.dtype)
                self._refiner_weights = weights
            pipeline, weights = self._refiner_pipeline, self._refiner_weights
        return LoadedModel(pipeline=pipeline, record=weights.record, family=weights.architecture.family,
                           scheduler_config=self.scheduler_config_of(weights), device=self.device, dtype=self.dtype,
                           hashes=self.catalog.hashes)

    def select(self, wanted: str | None = None) -> CheckpointRecord:
        """Make `wanted` (a title/name/hash; None = keep current or default) the loaded checkpoint."""
        with self.checkout(self.state_for(wanted)) as model:
            return model.record

    @contextmanager
    def checkout(self, state: ModelState | None = None, refiner: str | None = None) -> Iterator[LoadedModel]:
        """Hold the model for one job reconciled to ``state`` (None: ``state_for()``, the loaded or default
        checkpoint with nothing patched on it) and, for txt2img's Refiner, the ``refiner`` checkpoint as a second
        resident pipeline (None: none); other callers wait until the block ends.

        The checkpoint is switched when its file or content differs from the loaded one; the VAE is
        copied in when it differs; exactly the state's LoRAs (in order, at their weights) and its
        embeddings that fit the text encoders are patched on. LoRA files are parsed once per file
        version; changing only weights re-merges from the kept originals and never reloads anything,
        and the same patches as last time touch nothing. LoRAs and embeddings apply to the checkpoint, not
        to the refiner.
        """
        if state is not None and not isinstance(state, ModelState):
            raise TypeError(f"checkout takes a ModelState (build one with state_for(name, loras, vae)), "
                            f"not {type(state).__name__}")
        with self._lock:
            if state is None:
                state = self.state_for()
            record = self._record_of(state.checkpoint)
            current = self.current
            if current is None or record.path != current.path or record.sha256 != current.sha256:
                self._switch_to(record)
            assert self._weights is not None and self._lora is not None and self._patches is not None
            self._reconcile_vae(state.vae.path if state.vae is not None else None)
            controls = self._reconcile_controls(state)
            refiner_model = self._reconcile_refiner(refiner)
            files, used, skipped = self._read_loras(state)
            weights = self._lora.patches([(file, lora.te_weight, lora.unet_weight)
                                          for file, lora in zip(files, used)])
            tokens = ()
            if self._embedding_catalog is not None and self._embeddings is not None:
                fitting = self._embedding_catalog.compatible(self._embeddings.encoder_widths)
                wanted = {file.name: fitting[file.name] for file in state.embeddings if file.name in fitting}
                tokens = token_patches(wanted, {file.name: file.sha256 for file in state.embeddings})
            self._state_key = None
            self._patches.apply(PatchSet(weights, tokens))
            self._state_key = state.key()
            warnings = self._weights.notes + skipped + tuple(
                f"LoRA {file.name}: {len(file.unmatched_keys)} key(s) matched no layer and were ignored: "
                + ", ".join(file.unmatched_keys[:5]) + (" ..." if len(file.unmatched_keys) > 5 else "")
                for file in files if file.unmatched_keys
            )
            yield LoadedModel(
                pipeline=self._pipeline,
                record=self._weights.record,
                family=self._weights.architecture.family,
                scheduler_config=self.scheduler_config_of(self._weights),
                device=self.device,
                dtype=self.dtype,
                loras=tuple(lora.use for lora in used),
                embeddings=self._embeddings,
                vae_path=self._vae_path,
                warnings=warnings,
                hashes=self.catalog.hashes,
                state=state,
                state_key=self._state_key,
                refiner=refiner_model,
                controls=controls,
            )


    def _read_loras(self, state: ModelState) -> tuple[list[LoraFile], list[LoraChoice], tuple[str, ...]]:
        """The state's LoRA files parsed for the loaded model. One made for another family or architecture is
        left out with a warning naming both (the generation goes on without it, as A1111 does); any other
        unusable file (unreadable, not a LoRA) still fails the job with its reason."""
        assert self._lora is not None
        files: list[LoraFile] = []
        used: list[LoraChoice] = []
        skipped: list[str] = []
        for lora in state.loras:
            try:
                files.append(self._lora.read(lora.file.path))
            except ForeignLoraError as error:
                skipped.append(f"{error}; generated without it")
                continue
            used.append(lora)
        return files, used, tuple(skipped)


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; only called when the app is built. A CUDA device that torch
    does not see (no CUDA, or an index past the last GPU) raises `WorkerStartError` naming `flag`: one line at
    start-up, before any model loads, instead of a CUDA error at the first job."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise WorkerStartError(f"{flag} asks for {name}, but torch sees no CUDA device on this machine")
        if device.index is not None and device.index >= count:
            raise WorkerStartError(
                f"{flag} asks for GPU {device.index}, but this machine has {count} (numbered 0 to {count - 1})")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA/MPS (half the memory, full speed) and fp32 on CPU (fp16 is slow there)."""
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if precision == "auto":
        return torch.float16 if device.type in {"cuda", "mps"} else torch.float32
    return table[precision]
