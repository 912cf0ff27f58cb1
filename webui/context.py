"""The composition root of the engine: builds every service once from Settings.

This module only wires (folders, catalogs, one model manager per worker, the scheduler and its job
store, the services); the use cases live in the services (`generation/service.py`,
`models/service.py`, `training/service.py`, `xyz/service.py`), which also add their job kinds to the
scheduler's table. The gradio UI, the HTTP API and extensions receive the context and call its services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webui.extensions.generation_hooks import ExtensionGenerationHooks, extension_axes
from webui.extensions.host import load_for_app, switches_for
from webui.extensions.registry import ExtensionRegistry
from webui.extensions.service import ExtensionService
from webui.generation.extras_jobs import ExtrasService
from webui.generation.hooks import GenerationHooks
from webui.generation.remote import generation_remote_kinds
from webui.generation.requests import GenerationLimits
from webui.extensions.scripts import ExtensionScripts
from webui.generation.scripts import ScriptService
from webui.generation.server_options import CONFIG_FILE, ServerOptions, tile_settings
from webui.generation.service import IMG2IMG, TXT2IMG, GenerationService
from webui.generation.styles import StyleDatabase
from webui.jobs.queue_service import QueueService
from webui.jobs.remote import WorkerEngine
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKinds
from webui.jobs.store import JobStore, open_owned_store
from webui.jobs.webhooks import WebhookSender, read_webhook_secret
from webui.jobs.worker import Worker
from webui.models.catalog import CheckpointCatalog
from webui.models.controlnet_store import ControlNetStore
from webui.models.checkpoint_settings import CHECKPOINT_SETTINGS_FILE, CheckpointSettings
from webui.models.default_model import ensure_default_model
from webui.models.embeddings import EmbeddingCatalog
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraCatalog
from webui.models.manager import CheckpointRamCache, ModelManager, resolve_device, resolve_dtype
from webui.models.service import ModelService
from webui.security.limits import RequestLimits
from webui.security.network import NetworkPolicy
from webui.security.paths import FileAccess
from webui.settings import SHIPPED_CONTROLNETS_FOLDER, Settings
from webui.training.loop import TrainingPaths
from webui.training.service import TrainingService
from webui.upscaling.catalog import UpscalerCatalog
from webui.upscaling.service import UpscalerService
from webui.xyz.service import XyzService

if TYPE_CHECKING:
    import torch

JOB_STORE_FILE = "jobs.sqlite3"
UPSCALERS_IN_RAM = 2  # built upscaler models kept in RAM (an ESRGAN 4x is about 65 MB)
UPSCALER_CACHE_FILE = "upscalers.json"  # what spandrel detected in each upscaler file (webui.upscaling)


@dataclass
class AppContext:
    """The services and the shared objects they were built from (for adapters that only read them)."""

    settings: Settings
    catalog: CheckpointCatalog
    manager: ModelManager    # the first worker's (what "the loaded model" means with one worker)
    scheduler: Scheduler
    styles: StyleDatabase
    loras: LoraCatalog
    files: FileAccess        # where user-supplied paths may point (webui.security.paths)
    network: NetworkPolicy   # whether a request may reach the Hugging Face Hub (webui.security.network)
    request_limits: RequestLimits
    models: ModelService
    generation: GenerationService
    training: TrainingService
    xyz: XyzService
    webhooks: WebhookSender
    jobs: QueueService       # who sees and stops which job (job API, Queue tab)
    job_store: JobStore
    extensions: ExtensionRegistry  # what the loaded extensions registered (webui.extensions)
    extension_service: ExtensionService  # the Extensions tab's use cases: list, switch, install, update, uninstall
    # A1111's runtime options (POST /sdapi/v1/options, the Settings tab), kept in <data>/config.json
    options: ServerOptions = field(default_factory=ServerOptions)
    scripts: ScriptService | None = None  # the Script dropdown's extension scripts as jobs (webui.generation.scripts)
    controlnets: ControlNetStore | None = None  # models/ControlNet, built modules cached in RAM (webui.models)
    upscalers: UpscalerService | None = None  # built-in and model upscalers (webui.upscaling)
    extras: ExtrasService | None = None  # the Extras' upscaling as jobs (webui.generation.extras_jobs)
    ray_workers: Any = None  # workers on a Ray cluster (webui.jobs.ray_workers.RayWorkers), with --ray-address

    def close(self) -> None:
        """Stop the workers (running jobs are interrupted; queued ones stay stored for the next start)."""
        self.scheduler.shutdown(interrupt_running=True)
        if self.ray_workers is not None:
            self.ray_workers.close()
        self.job_store.close()

    @property
    def limits(self) -> GenerationLimits:
        return self.request_limits.generation


def build_context(settings: Settings, job_store: JobStore | None = None) -> AppContext:
    """Create folders, the default model if needed, and every engine service. `job_store`: the store to
    use instead of `<data>/jobs.sqlite3` (a Ray worker's engine keeps its jobs in memory)."""
    devices = worker_devices(settings)  # first: a GPU the machine lacks is refused before anything loads
    for folder in (settings.checkpoint_folder, settings.lora_folder, settings.vae_folder, settings.controlnet_folder,
                   settings.embeddings_folder, settings.outputs_folder, settings.cache_folder,
                   settings.datasets_folder):
        folder.mkdir(parents=True, exist_ok=True)
    ensure_default_model(settings.checkpoint_folder)
    extensions = load_for_app(settings)  # first: services are built with the hooks extensions registered
    hash_cache = HashCache(settings.cache_folder / "hashes.json")
    network = NetworkPolicy.from_settings(settings)
    catalog = CheckpointCatalog(settings.checkpoint_folder, hash_cache, network, settings.text_encoder_folder,
                                settings.vae_folder, settings.denoiser_folders)
    catalog.refresh()
    request_limits = RequestLimits.from_settings(settings)
    options = ServerOptions(settings.data_dir / CONFIG_FILE)
    upscalers = UpscalerService(UpscalerCatalog(settings.upscaler_folders, UPSCALERS_IN_RAM,
                                                cache_file=settings.cache_folder / UPSCALER_CACHE_FILE),
                                lambda: tile_settings(options.values()), request_limits.max_image_pixels)
    kinds = JobKinds()
    job_store = job_store or open_owned_store(settings.data_dir / JOB_STORE_FILE, settings.job_history,
                                              settings.job_history_days)
    scheduler = Scheduler(kinds, job_store,
                          max_jobs=request_limits.max_queue, max_jobs_per_owner=request_limits.max_queue_per_user,
                          preview_every_n_steps=settings.preview_every_n_steps, recover_stored_jobs=False,
                          split_jobs=settings.split_jobs)
    hooks = ExtensionGenerationHooks(extensions, request_limits.generation.max_images)
    checkpoint_settings = CheckpointSettings(settings.data_dir / CHECKPOINT_SETTINGS_FILE)
    # Built ControlNets stay in RAM like checkpoints; room for at least one job's three units.
    controlnets = ControlNetStore(settings.controlnet_folder, max(settings.checkpoints_in_ram, 3),
                                  (SHIPPED_CONTROLNETS_FOLDER,))
    managers = _worker_managers(settings, devices, catalog, hooks, checkpoint_settings, controlnets)
    files = FileAccess.from_settings(settings)
    styles = StyleDatabase(settings.styles_file)
    loras = LoraCatalog(settings.lora_folder, hash_cache)
    models = ModelService(catalog, scheduler, managers, checkpoint_folder=settings.checkpoint_folder,
                          vae_folder=settings.vae_folder, checkpoint_settings=checkpoint_settings)
    generation = GenerationService(models, scheduler, styles, loras, files, request_limits,
                                   outputs_folder=settings.outputs_folder,
                                   inputs_folder=settings.data_dir / "jobs" / "inputs", hooks=hooks,
                                   upscalers=upscalers, cfg_split=settings.cfg_split)
    extras = ExtrasService(upscalers, scheduler, settings.data_dir / "jobs" / "inputs",
                           request_limits.max_image_pixels, request_limits.generation.max_images)
    training = TrainingService(models, scheduler, files, loras, network, paths=TrainingPaths(
        lora_dir=settings.lora_folder, embeddings_dir=settings.embeddings_folder,
        checkpoints_dir=settings.checkpoint_folder, work_dir=settings.training_folder), data_dir=settings.data_dir)
    xyz = XyzService(generation, registry=extension_axes(extensions))
    scripts = ScriptService(generation, ExtensionScripts(extensions).runners)
    for service in (models, generation, training, xyz, scripts, extras):
        for kind in service.job_kinds():
            kinds.register(kind)
    webhooks = WebhookSender(scheduler, settings.allow_webhooks, read_webhook_secret(settings.webhook_secret))
    scheduler.recover_stored_jobs()  # every kind is known now: queued jobs of the last run go back in line
    for index, manager in enumerate(managers):
        scheduler.add_worker(Worker(f"{manager.device}#{index}", manager.device, manager,
                                    current_model_key=lambda manager=manager: _loaded_path(manager),
                                    current_control_keys=manager.held_control_keys))
    ray_workers = None
    if settings.ray_address:
        from webui.jobs.ray_workers import start_ray_workers

        try:
            ray_workers = start_ray_workers(settings, scheduler,
                                            generation_remote_kinds((TXT2IMG, IMG2IMG), generation.outputs_root_of),
                                            build_worker_engine, models.model_key)
        except BaseException:
            scheduler.shutdown()
            job_store.close()
            raise
    return AppContext(settings=settings, catalog=catalog, manager=managers[0], scheduler=scheduler, styles=styles,
                      loras=loras, files=files, network=network, request_limits=request_limits, models=models,
                      generation=generation, training=training, xyz=xyz, webhooks=webhooks,
                      jobs=QueueService(scheduler, settings.outputs_folder), job_store=job_store,
                      extensions=extensions, options=options,
                      scripts=scripts, controlnets=controlnets, upscalers=upscalers, extras=extras,
                      extension_service=ExtensionService(settings, extensions, switches_for(settings)),
                      ray_workers=ray_workers)


def build_worker_engine(settings: Settings) -> WorkerEngine:
    """The engine a Ray worker builds on its machine (webui.jobs.ray_actor): the app's own services and one
    worker on `settings.device`, with its jobs kept in memory (the head keeps the history)."""
    ctx = build_context(settings, job_store=JobStore(":memory:", 100, 1))
    current = ctx.manager

    def held_checkpoint() -> str | None:
        return current.current.title if current.current is not None else None

    return WorkerEngine(ctx.scheduler, generation_remote_kinds((TXT2IMG, IMG2IMG), ctx.generation.outputs_root_of),
                        held_checkpoint, ctx.close)


def worker_devices(settings: Settings) -> list[torch.device]:
    """A device per worker: each listed CUDA device, else `--workers` times `--device`. Raises
    WorkerStartError for a GPU the machine lacks."""
    if settings.device_ids:
        return [resolve_device(f"cuda:{device_id}", "--device-ids") for device_id in settings.device_ids]
    return [resolve_device(settings.device)] * max(1, settings.workers)


def _worker_managers(settings: Settings, devices: list[torch.device], catalog: CheckpointCatalog,
                     hooks: GenerationHooks, checkpoint_settings: CheckpointSettings | None = None,
                     controlnets: ControlNetStore | None = None) -> list[ModelManager]:
    """One model manager per worker device. They share the embeddings catalog and the RAM cache of checkpoint
    weights (read once, not once per worker)."""
    ram = CheckpointRamCache(settings.checkpoints_in_ram, pin_memory=devices[0].type == "cuda")
    embeddings = EmbeddingCatalog(settings.embeddings_folder)
    return [ModelManager(catalog, device, resolve_dtype(settings.precision, device), ram_cache=ram,
                         preferred_checkpoint=settings.extra.get("sd_model_checkpoint"),
                         embedding_catalog=embeddings, checkpoint_settings=checkpoint_settings, controlnets=controlnets,
                         on_model_loaded=lambda record, family: hooks.model_loaded(record.name, record.shorthash, family))
            for device in devices]


def _loaded_path(manager: ModelManager) -> str | None:
    current = manager.current
    return str(current.path) if current is not None else None
