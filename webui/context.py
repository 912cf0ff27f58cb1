"""AppContext: the engine services built once from Settings and handed to the UI, API and extensions.

This is the only place that wires catalog, model manager, queue and styles together; the gradio and
HTTP layers receive a context and call its methods, so they stay thin and never reach into models.
"""

from __future__ import annotations

from dataclasses import dataclass

from webui.generation.requests import GenerationLimits, RequestError, Txt2ImgRequest
from webui.generation.styles import StyleDatabase
from webui.generation.txt2img import GenerationResult, run_txt2img
from webui.jobs.progress import JobControl
from webui.jobs.queue import Job, JobQueue
from webui.models.catalog import CheckpointCatalog, CheckpointRecord
from webui.models.default_model import ensure_default_model
from webui.models.hashing import HashCache
from webui.models.manager import ModelManager, resolve_device, resolve_dtype
from webui.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    catalog: CheckpointCatalog
    manager: ModelManager
    queue: JobQueue
    styles: StyleDatabase
    limits: GenerationLimits

    # ---- generation ----
    def validate_txt2img(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Everything that can be checked before queueing: values, styles, checkpoint name."""
        request = request.validate(self.limits)
        unknown_styles = [name for name in request.styles if name not in self.styles.names()]
        if unknown_styles:
            raise RequestError(f"unknown style(s) {', '.join(unknown_styles)}; available: {', '.join(self.styles.names()) or '(none)'}")
        if request.checkpoint:
            record = self.catalog.find(request.checkpoint)
            if not record.usable:
                raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return request

    def submit_txt2img(self, request: Txt2ImgRequest) -> Job:
        """Validate, then queue; the returned job carries progress and, when done, a GenerationResult."""
        request = self.validate_txt2img(request)

        def work(control: JobControl) -> GenerationResult:
            with self.manager.checkout(request.checkpoint) as model:
                return run_txt2img(model, request, outputs_root=self.settings.outputs_folder,
                                   styles=self.styles, control=control)

        return self.queue.submit("txt2img", work)

    # ---- models ----
    def checkpoint_titles(self) -> list[str]:
        return [record.title for record in self.catalog.usable_records()]

    def refresh_checkpoints(self) -> list[CheckpointRecord]:
        return self.catalog.refresh()

    def select_checkpoint(self, wanted: str) -> CheckpointRecord:
        """Load a checkpoint as the current one, in turn with other GPU work."""
        record = self.catalog.find(wanted)
        if not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return self.queue.run("load-checkpoint", lambda control: self.manager.select(record.title))

    def current_checkpoint_title(self) -> str | None:
        current = self.manager.current
        return current.title if current else None


def build_context(settings: Settings) -> AppContext:
    """Create folders, the default model if needed, and every engine service."""
    for folder in (settings.checkpoint_folder, settings.lora_folder, settings.vae_folder,
                   settings.embeddings_folder, settings.outputs_folder, settings.cache_folder):
        folder.mkdir(parents=True, exist_ok=True)
    ensure_default_model(settings.checkpoint_folder)
    catalog = CheckpointCatalog(settings.checkpoint_folder, HashCache(settings.cache_folder / "hashes.json"))
    catalog.refresh()
    device = resolve_device(settings.device)
    manager = ModelManager(
        catalog, device, resolve_dtype(settings.precision, device),
        checkpoints_in_ram=settings.checkpoints_in_ram,
        preferred_checkpoint=settings.extra.get("sd_model_checkpoint"),
    )
    return AppContext(
        settings=settings,
        catalog=catalog,
        manager=manager,
        queue=JobQueue(preview_every_n_steps=settings.preview_every_n_steps),
        styles=StyleDatabase(settings.styles_file),
        limits=GenerationLimits(max_side=settings.max_image_side, max_images=settings.max_batch_images),
    )
