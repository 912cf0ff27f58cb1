"""Model use cases: list, refresh, select and merge checkpoints; VAE choices.

The UI, the HTTP API and other services ask this service rather than the catalog or the manager, so a
rule such as "a Hub id is refused before anything is queued" or "a merge runs on the worker" holds for
every front end. GPU work (loading, merging) is queued in turn with generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl
from webui.jobs.queue import JobQueue
from webui.models.catalog import CheckpointCatalog, CheckpointRecord
from webui.models.embeddings import EmbeddingCatalog
from webui.models.manager import AUTOMATIC_VAE, CHECKPOINT_VAE, ModelManager
from webui.models.merger import MergeRecipe, merge_state_dicts, save_merged
from webui.models.vae import read_vae_state_dict, scan_vaes


@dataclass
class ModelService:
    catalog: CheckpointCatalog
    manager: ModelManager
    queue: JobQueue
    checkpoint_folder: Path
    vae_folder: Path

    # ---- checkpoints ----
    def checkpoint_titles(self) -> list[str]:
        return [record.title for record in self.catalog.usable_records()]

    def current_checkpoint_title(self) -> str | None:
        current = self.manager.current
        return current.title if current else None

    def refresh_checkpoints(self) -> list[CheckpointRecord]:
        return self.catalog.refresh()

    def refresh_trained_models(self) -> None:
        """Make new LoRAs, embeddings and checkpoints usable without a restart."""
        self.catalog.refresh()  # LoRA files are rescanned on every listing already
        embeddings: EmbeddingCatalog | None = self.manager.embedding_catalog
        if embeddings is not None:
            embeddings.refresh()

    def check_usable(self, wanted: str) -> CheckpointRecord | None:
        """The record a request names, refused with the reason when it cannot load; None for a Hub id
        the owner allowed (`--allow-hub`), which only the worker can fetch."""
        record = self.catalog.check_available(wanted)
        if record is not None and not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return record

    def select_checkpoint(self, wanted: str, owner: str | None = None) -> CheckpointRecord:
        """Load a checkpoint as the current one, in turn with other GPU work."""
        record = self.check_usable(wanted)
        title = wanted if record is None else record.title
        return self.queue.run("load-checkpoint", lambda control: self.manager.select(title), owner=owner)

    def merge_checkpoints(self, recipe: MergeRecipe, output_name: str, owner: str | None = None) -> CheckpointRecord:
        """Merge on the worker (it reads whole checkpoints), save beside the others, list it at once."""
        names = [recipe.primary, recipe.secondary] + ([recipe.tertiary] if recipe.tertiary else [])
        records = [self.catalog.find(name) for name in names]
        for record in records:
            if not record.usable:
                raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        vae_path = self.resolve_vae(recipe.baked_vae) if recipe.baked_vae else None

        def work(control: JobControl) -> CheckpointRecord:
            weights = [self.manager.weights_of(record) for record in records]
            merged = merge_state_dicts(recipe, weights[0], weights[1], weights[2] if len(weights) > 2 else None)
            if isinstance(vae_path, Path):
                merged["vae"] = read_vae_state_dict(vae_path, weights[0].configs["vae"])
            path = save_merged(recipe, merged, weights[0], self.checkpoint_folder, output_name)
            self.catalog.refresh()
            return next(r for r in self.catalog.records() if r.path == path)

        return self.queue.run("merge-checkpoints", work, owner=owner)

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
