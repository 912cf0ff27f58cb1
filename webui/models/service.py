"""Model use cases: list, refresh, select and merge checkpoints; VAE choices.

The UI, the HTTP API and other services ask this service rather than the catalog or a manager, so a
rule such as "a Hub id is refused before anything is queued" or "a merge runs on a worker" holds for
every front end. GPU work (loading, merging) is queued as jobs in turn with generation.

With several workers each holds its own model; the checkpoint a user selects is the service's
`selected` title, which requests without a checkpoint of their own get when they are queued, so every
worker draws them with the same model (the worker already holding it is preferred).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKind, JobSpec
from webui.jobs.worker import Worker
from webui.models.catalog import CheckpointCatalog, CheckpointRecord
from webui.generation.family_fields import sampling_shift
from webui.models.checkpoint_files import CheckpointReadError
from webui.models.checkpoint_loading import CheckpointLoadError, scheduler_config_of
from webui.models.checkpoint_settings import CheckpointSetting, CheckpointSettingError, CheckpointSettings
from webui.models.embeddings import EmbeddingCatalog
from webui.models.families import DEFAULT_FAMILY, ModelFamily, family_named
from webui.models.manager import AUTOMATIC_VAE, CHECKPOINT_VAE, ModelManager
from webui.models.merger import MergeRecipe, merge_state_dicts, save_merged
from webui.models.vae import read_vae_state_dict, scan_vaes


LOAD_CHECKPOINT = "load-checkpoint"
MERGE_CHECKPOINTS = "merge-checkpoints"


@dataclass(frozen=True)
class CheckpointLoad:
    """A load-checkpoint job: the title to load (None: the configured or first usable one)."""

    wanted: str | None = None


@dataclass(frozen=True)
class MergeJob:
    recipe: MergeRecipe
    output_name: str


@dataclass
class ModelService:
    catalog: CheckpointCatalog
    scheduler: Scheduler
    managers: list[ModelManager]  # one per worker; the first answers "what is loaded" before any selection
    checkpoint_folder: Path
    vae_folder: Path
    selected: str | None = field(default=None)  # the title users chose (UI dropdown, /sdapi/v1/options)
    checkpoint_settings: CheckpointSettings | None = None  # per-checkpoint user settings (prediction type)

    # ---- checkpoints ----
    def checkpoint_titles(self) -> list[str]:
        return [record.title for record in self.catalog.usable_records()]

    def current_checkpoint_title(self) -> str | None:
        """The checkpoint requests without one of their own use: the one users selected, else the configured
        default (`sd_model_checkpoint` in config.json, else the first usable). A request's own checkpoint
        (A1111's override_settings) never changes it."""
        if self.selected:
            return self.selected
        try:
            return self.managers[0].default_record().title
        except CheckpointLoadError:  # no usable checkpoint at all: requests get that error when they run
            return None

    def current_record(self) -> CheckpointRecord | None:
        """The record of `current_checkpoint_title()`, None when there is none (or it is a Hub id)."""
        return self.catalog_record(None)

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """(what the dropdown shows, title) per usable checkpoint: the title with its family or variant, e.g.
        `model [0123456789] (SDXL)`; the value stays the A1111 title every other caller uses."""
        return [(f"{record.title} ({record.architecture.label})" if record.architecture else record.title, record.title)
                for record in self.catalog.usable_records()]

    def catalog_record(self, wanted: str | None) -> CheckpointRecord | None:
        """The catalog's record of the checkpoint a title names (None: the current one); None when no such
        local checkpoint is known (a Hub id, a removed file)."""
        title = wanted or self.current_checkpoint_title()
        if not title:
            return None
        try:
            return self.catalog.find(title)
        except LookupError:
            return None

    def family_of(self, wanted: str | None) -> ModelFamily | None:
        """The family of the checkpoint a title names (None: the current one); None when no such local
        checkpoint is known or it could not be classified (a broken file)."""
        record = self.catalog_record(wanted)
        return family_named(record.architecture.family) if record is not None and record.architecture else None

    def default_sampler(self, wanted: str | None) -> str:
        """The sampler a request on this checkpoint (None: the current one) uses when it names none: its
        family's (Euler for flow-matching families, whose pipelines cannot drive every sampler)."""
        return (self.family_of(wanted) or DEFAULT_FAMILY).default_sampler

    def default_shift(self, wanted: str | None) -> float | None:
        """The flow shift the checkpoint (None: the current one) samples with unless a request sets one: its
        scheduler config's, as loading builds it; None for families without a shift or an unreadable file."""
        family = self.family_of(wanted)
        if family is None or not family.flow_matching:
            return None
        try:
            config = scheduler_config_of(self.catalog.find(wanted or self.current_checkpoint_title() or ""))
        except (LookupError, CheckpointReadError, OSError, ValueError):
            return None
        return sampling_shift(family, None, config)

    def refresh_checkpoints(self) -> list[CheckpointRecord]:
        return self.catalog.refresh()

    def refresh_trained_models(self) -> None:
        """Make new LoRAs, embeddings and checkpoints usable without a restart."""
        self.catalog.refresh()  # LoRA files are rescanned on every listing already
        embeddings: EmbeddingCatalog | None = self.managers[0].embedding_catalog  # one catalog, shared
        if embeddings is not None:
            embeddings.refresh()

    def check_usable(self, wanted: str) -> CheckpointRecord | None:
        """The record a request names, refused with the reason when it cannot load; None for a Hub id
        the owner allowed (`--allow-hub`), which only the worker can fetch."""
        record = self.catalog.check_available(wanted)
        if record is not None and not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return record

    def model_key(self, wanted: str | None) -> str | None:
        """The file a checkpoint name stands for (None: any), for the scheduler's worker affinity."""
        try:
            return str(self.catalog.find(wanted).path) if wanted else None
        except LookupError:
            return wanted

    def control_keys(self, names: Sequence[str]) -> tuple[str, ...]:
        """The files ControlNet names stand for (unknown ones left out), for the scheduler's affinity."""
        return self.managers[0].control_keys(names)  # one ControlNet folder, shared by every worker

    def select_checkpoint(self, wanted: str, owner: str | None = None) -> CheckpointRecord:
        """Make a checkpoint the selected one and load it on a worker, in turn with other GPU work."""
        record = self.check_usable(wanted)
        loaded = self.scheduler.run(JobSpec(LOAD_CHECKPOINT, CheckpointLoad(wanted if record is None else record.title),
                                            owner))
        self.selected = loaded.title
        return loaded

    def warm_start(self) -> None:
        """Load the configured checkpoint on a worker at start, as A1111 does, without waiting for it."""
        self.scheduler.submit(JobSpec(LOAD_CHECKPOINT, CheckpointLoad(None)))

    def merge_checkpoints(self, recipe: MergeRecipe, output_name: str, owner: str | None = None) -> CheckpointRecord:
        """Merge on a worker (it reads whole checkpoints), save beside the others, list it at once."""
        self._merge_inputs(recipe)
        return self.scheduler.run(JobSpec(MERGE_CHECKPOINTS, MergeJob(recipe, output_name), owner))

    def _merge_inputs(self, recipe: MergeRecipe) -> tuple[list[CheckpointRecord], str | Path | None]:
        names = [recipe.primary, recipe.secondary] + ([recipe.tertiary] if recipe.tertiary else [])
        records = [self.catalog.find(name) for name in names]
        for record in records:
            if not record.usable:
                raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return records, self.resolve_vae(recipe.baked_vae) if recipe.baked_vae else None

    # ---- per-checkpoint settings (callers check that the user is an admin: they change a shared model) ----
    def checkpoint_setting(self, wanted: str) -> tuple[CheckpointRecord, CheckpointSetting]:
        """The checkpoint a title/name/hash names and its settings; LookupError for an unknown one."""
        record = self.catalog.find(wanted)
        store = self.checkpoint_settings
        return record, store.get(record.name) if store is not None else CheckpointSetting()

    def set_checkpoint_setting(self, wanted: str,
                               setting: CheckpointSetting) -> tuple[CheckpointRecord, CheckpointSetting]:
        """Store a checkpoint's settings (CheckpointSettingError for a bad value); the next job uses them."""
        record = self.catalog.find(wanted)
        if self.checkpoint_settings is None:
            raise CheckpointSettingError("this server keeps no checkpoint settings")
        return record, self.checkpoint_settings.set(record.name, setting.check())

    # ---- jobs ----
    def job_kinds(self) -> list[JobKind]:
        return [
            JobKind(LOAD_CHECKPOINT, run=self._run_load, encode=lambda load: {"wanted": load.wanted},
                    decode=lambda data: CheckpointLoad(data.get("wanted")),
                    model_key=lambda load: self.model_key(load.wanted),
                    summary=lambda load: f"load {load.wanted or 'the default checkpoint'}",
                    result_record=lambda record: {"checkpoint": record.title}),
            JobKind(MERGE_CHECKPOINTS, run=self._run_merge,
                    encode=lambda job: {"recipe": dataclasses.asdict(job.recipe), "output_name": job.output_name},
                    decode=lambda data: MergeJob(MergeRecipe(**data["recipe"]), data["output_name"]),
                    summary=lambda job: f"merge {job.recipe.primary} + {job.recipe.secondary} -> {job.output_name}",
                    result_record=lambda record: {"checkpoint": record.title}),
        ]

    @staticmethod
    def _run_load(worker: Worker, load: CheckpointLoad, control: JobControl) -> CheckpointRecord:
        return worker.resources.select(load.wanted)

    def _run_merge(self, worker: Worker, job: MergeJob, control: JobControl) -> CheckpointRecord:
        manager: ModelManager = worker.resources
        records, vae_path = self._merge_inputs(job.recipe)
        weights = [manager.weights_of(record) for record in records]
        recipe = job.recipe
        merged = merge_state_dicts(recipe, weights[0], weights[1], weights[2] if len(weights) > 2 else None)
        if isinstance(vae_path, Path):
            merged["vae"] = read_vae_state_dict(vae_path, weights[0].configs["vae"])
        path = save_merged(recipe, merged, weights[0], self.checkpoint_folder, job.output_name)
        self.catalog.refresh()
        return next(r for r in self.catalog.records() if r.path == path)

    # ---- VAEs ----
    def vae_names(self) -> list[str]:
        """Choices for the VAE dropdown: A1111's Automatic and None, then the usable files in models/VAE."""
        return [AUTOMATIC_VAE, CHECKPOINT_VAE] + [r.name for r in scan_vaes(self.vae_folder) if r.error is None]

    def resolve_vae(self, name: str) -> str | Path:
        """A dropdown/API VAE name -> what the manager reconciles to; unknown or broken files raise."""
        if name in (AUTOMATIC_VAE, CHECKPOINT_VAE):
            return name
        records = {record.name: record for record in scan_vaes(self.vae_folder)}
        record = records.get(name) or next((r for r in records.values() if Path(r.name).stem == name), None)
        if record is None:
            raise RequestError(f"VAE {name!r} not found; available: {', '.join(self.vae_names())}")
        if record.error:
            raise RequestError(f"VAE {record.name} cannot be used: {record.error}")
        return record.path
