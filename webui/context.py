"""The composition root of the engine: builds every service once from Settings.

This module only wires (folders, catalogs, the model manager, the queue, the services); the use cases
live in the services (`generation/service.py`, `models/service.py`, `training/service.py`,
`xyz/service.py`). The gradio UI, the HTTP API and extensions receive the context and call its services.
"""

from __future__ import annotations

from dataclasses import dataclass

from webui.generation.requests import GenerationLimits
from webui.generation.service import GenerationService
from webui.generation.styles import StyleDatabase
from webui.jobs.queue import JobQueue
from webui.models.catalog import CheckpointCatalog
from webui.models.default_model import ensure_default_model
from webui.models.embeddings import EmbeddingCatalog
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraCatalog
from webui.models.manager import ModelManager, resolve_device, resolve_dtype
from webui.models.service import ModelService
from webui.security.limits import RequestLimits
from webui.security.network import NetworkPolicy
from webui.security.paths import FileAccess
from webui.settings import Settings
from webui.training.loop import TrainingPaths
from webui.training.service import TrainingService


@dataclass
class AppContext:
    """The services and the shared objects they were built from (for adapters that only read them)."""

    settings: Settings
    catalog: CheckpointCatalog
    manager: ModelManager
    queue: JobQueue
    styles: StyleDatabase
    loras: LoraCatalog
    files: FileAccess        # where user-supplied paths may point (webui.security.paths)
    network: NetworkPolicy   # whether a request may reach the Hugging Face Hub (webui.security.network)
    request_limits: RequestLimits
    models: ModelService
    generation: GenerationService
    training: TrainingService

    @property
    def limits(self) -> GenerationLimits:
        return self.request_limits.generation


def build_context(settings: Settings) -> AppContext:
    """Create folders, the default model if needed, and every engine service."""
    for folder in (settings.checkpoint_folder, settings.lora_folder, settings.vae_folder,
                   settings.embeddings_folder, settings.outputs_folder, settings.cache_folder,
                   settings.datasets_folder):
        folder.mkdir(parents=True, exist_ok=True)
    ensure_default_model(settings.checkpoint_folder)
    hash_cache = HashCache(settings.cache_folder / "hashes.json")
    network = NetworkPolicy.from_settings(settings)
    catalog = CheckpointCatalog(settings.checkpoint_folder, hash_cache, network)
    catalog.refresh()
    device = resolve_device(settings.device)
    manager = ModelManager(
        catalog, device, resolve_dtype(settings.precision, device),
        checkpoints_in_ram=settings.checkpoints_in_ram,
        preferred_checkpoint=settings.extra.get("sd_model_checkpoint"),
        embedding_catalog=EmbeddingCatalog(settings.embeddings_folder),
    )
    request_limits = RequestLimits.from_settings(settings)
    queue = JobQueue(preview_every_n_steps=settings.preview_every_n_steps, max_jobs=request_limits.max_queue,
                     max_jobs_per_owner=request_limits.max_queue_per_user)
    files = FileAccess.from_settings(settings)
    styles = StyleDatabase(settings.styles_file)
    loras = LoraCatalog(settings.lora_folder, hash_cache)
    models = ModelService(catalog, manager, queue, checkpoint_folder=settings.checkpoint_folder,
                          vae_folder=settings.vae_folder)
    generation = GenerationService(models, manager, queue, styles, loras, files, request_limits,
                                   outputs_folder=settings.outputs_folder)
    training = TrainingService(models, manager, queue, files, loras, network, paths=TrainingPaths(
        lora_dir=settings.lora_folder, embeddings_dir=settings.embeddings_folder,
        checkpoints_dir=settings.checkpoint_folder, work_dir=settings.training_folder))
    return AppContext(settings=settings, catalog=catalog, manager=manager, queue=queue, styles=styles, loras=loras,
                      files=files, network=network, request_limits=request_limits, models=models,
                      generation=generation, training=training)
