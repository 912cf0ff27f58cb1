"""AppContext: the engine services built once from Settings and handed to the UI, API and extensions.

This is the only place that wires catalog, model manager, queue and styles together; the gradio and
HTTP layers receive a context and call its methods, so they stay thin and never reach into models.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

from webui.generation.prompt_syntax import extract_network_tags
from PIL import Image

from webui.generation.image_ops import check_image_size
from webui.generation.infotext import write_png_info
from webui.generation.img2img import run_img2img
from webui.generation.requests import GenerationLimits, Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.generation.styles import StyleDatabase
from webui.generation.txt2img import GenerationResult, run_txt2img
from webui.jobs.progress import JobControl
from webui.jobs.queue import Job, JobQueue, QueueFullError
from webui.models.catalog import CheckpointCatalog, CheckpointRecord
from webui.models.default_model import ensure_default_model
from webui.models.embeddings import EmbeddingCatalog
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraCatalog, LoraUse
from webui.models.manager import AUTOMATIC_VAE, CHECKPOINT_VAE, ModelManager, resolve_device, resolve_dtype
from webui.models.merger import MergeRecipe, merge_state_dicts, save_merged
from webui.models.vae import read_vae_state_dict, scan_vaes
from webui.security.limits import RequestLimits
from webui.security.network import NetworkPolicy
from webui.security.paths import BATCH_INPUT, BATCH_MASKS, BATCH_OUTPUT, FileAccess, is_within
from webui.settings import Settings
from webui.training.config import IMAGE_SUFFIXES, TrainingConfig
from webui.training.dataset import scan_dataset
from webui.training.loop import TrainingPaths, TrainingResult, run_training
from webui.training.monitor import TrainingBusyError, TrainingMonitor


@dataclass
class AppContext:
    settings: Settings
    catalog: CheckpointCatalog
    manager: ModelManager
    queue: JobQueue
    styles: StyleDatabase
    limits: GenerationLimits
    loras: LoraCatalog
    files: FileAccess        # where user-supplied paths may point (webui.security.paths)
    network: NetworkPolicy   # whether a request may reach the Hugging Face Hub (webui.security.network)
    request_limits: RequestLimits = field(default_factory=RequestLimits)  # its `generation` is `limits`
    training: TrainingMonitor | None = field(default=None)  # the latest training run, for reconnecting UIs
    _training_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---- generation ----
    def validate_txt2img(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Everything that can be checked before queueing: values, styles, checkpoint name."""
        request = request.validate(self.limits)
        if isinstance(request, Img2ImgRequest):
            for image in (*request.init_images[:1], request.mask):
                if image is not None:
                    check_image_size(image, self.limits.max_side)
        unknown_styles = [name for name in request.styles if name not in self.styles.names()]
        if unknown_styles:
            raise RequestError(f"unknown style(s) {', '.join(unknown_styles)}; available: {', '.join(self.styles.names()) or '(none)'}")
        if request.checkpoint:
            record = self.catalog.check_available(request.checkpoint)  # None: a Hub id the owner allowed
            if record is not None and not record.usable:
                raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return request

    def vae_names(self) -> list[str]:
        """Choices for the VAE dropdown: A1111's Automatic and None, then the usable files in models/VAE."""
        return [AUTOMATIC_VAE, CHECKPOINT_VAE] + [r.name for r in scan_vaes(self.settings.vae_folder) if r.error is None]

    def resolve_vae(self, name: str) -> str | Path:
        """A dropdown/API VAE name -> what the manager reconciles to; unknown or broken files raise."""
        if name in (AUTOMATIC_VAE, CHECKPOINT_VAE):
            return name
        records = {record.name: record for record in scan_vaes(self.settings.vae_folder)}
        record = records.get(name) or next((r for r in records.values() if Path(r.name).stem == name), None)
        if record is None:
            raise RequestError(f"VAE {name!r} not found; available: {', '.join(self.vae_names())}")
        if record.error:
            raise RequestError(f"VAE {record.name} cannot be used: {record.error}")
        return record.path

    def lora_uses(self, request: Txt2ImgRequest) -> tuple[LoraUse, ...]:
        """The LoRAs the (styled) prompt's `<lora:name:weight>` tags ask for; unknown names raise."""
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        return self.loras.resolve_tags(extract_network_tags(prompt)[1] + extract_network_tags(negative)[1])

    # Every submit_* takes the owner: the name of the user asking (`User.name`), None for the app's own
    # and command-line work. The queue bounds jobs per owner and only the owner or an admin stops a job.
    def submit_txt2img(self, request: Txt2ImgRequest, owner: str | None = None) -> Job:
        """Validate, then queue; the returned job carries progress and, when done, a GenerationResult."""
        request = self.validate_txt2img(request)
        loras, vae = self.lora_uses(request), self.resolve_vae(request.vae)
        return self.queue.submit("txt2img", lambda control: self._generate(request, loras, vae, control), owner)

    def submit_img2img(self, request: Img2ImgRequest, owner: str | None = None) -> Job:
        """img2img / inpaint / outpaint: same checks and the same worker as txt2img."""
        request = self.validate_txt2img(request)
        loras, vae = self.lora_uses(request), self.resolve_vae(request.vae)
        return self.queue.submit("img2img", lambda control: self._generate(request, loras, vae, control), owner)

    def submit_img2img_batch(self, template: Img2ImgRequest, input_folder: str, output_folder: str,
                             mask_folder: str = "", owner: str | None = None) -> Job:
        """A1111's Batch tab: every image in a folder (with the same-named mask when a mask folder is given)
        through one queued job; results are saved into the output folder with their infotext.

        The folders are confined by `self.files` (datasets/ and outputs/); files that are symlinks leading
        out of their folder are left alone."""
        inputs = self.files.resolve(input_folder, BATCH_INPUT)
        if not inputs.is_dir():
            raise RequestError(f"input folder {input_folder!r} does not exist")
        files = sorted(p for p in inputs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and is_within(p, inputs))
        if not files:
            raise RequestError(f"input folder {input_folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        outputs = (self.files.resolve(output_folder, BATCH_OUTPUT) if (output_folder or "").strip()
                   else self.settings.outputs_folder / "img2img-batch")
        masks = self.files.resolve(mask_folder, BATCH_MASKS) if (mask_folder or "").strip() else None
        if masks is not None and not masks.is_dir():
            raise RequestError(f"mask folder {mask_folder!r} does not exist")
        probe = template.with_changes(init_images=(Image.new("RGB", (template.width, template.height)),))
        self.validate_txt2img(probe)

        def work(control: JobControl) -> GenerationResult:
            outputs.mkdir(parents=True, exist_ok=True)
            combined = GenerationResult([], [], [], [], template.prompt, template.negative_prompt)
            notes = []
            for index, path in enumerate(files):
                if control.interrupted:
                    break
                control.set_message(f"image {index + 1} of {len(files)}: {path.name}")
                try:
                    image = self.request_limits.open_image(path, path.name)
                    mask_path = next((m for m in masks.glob(glob_escape(path.stem) + ".*")
                                      if is_within(m, masks)), None) if masks else None
                    mask = self.request_limits.open_image(mask_path, mask_path.name) if mask_path else None
                    request = template.with_changes(init_images=(image,), mask=mask, save_images=False)
                    result = self.generate_now(request, control)
                except (ValueError, OSError) as error:
                    notes.append(f"{path.name}: {error}")
                    continue
                for number, (picture, text, seed) in enumerate(zip(result.images, result.infotexts, result.seeds)):
                    suffix = f"-{number}" if len(result.images) > 1 else ""
                    target = outputs / f"{path.stem}{suffix}.png"
                    if not is_within(target, outputs):  # an existing symlink there must not be written through
                        notes.append(f"{target.name}: not written (it links outside the output folder)")
                        continue
                    picture.save(target, pnginfo=write_png_info(text))
                    combined.images.append(picture)
                    combined.infotexts.append(text)
                    combined.seeds.append(seed)
                    combined.subseeds.append(seed)
            combined.warnings = tuple(notes)
            combined.interrupted = control.interrupted
            return combined

        return self.queue.submit("img2img-batch", work, owner)

    def generate_now(self, request: Txt2ImgRequest, control: JobControl | None = None) -> GenerationResult:
        """Validate and generate on the calling thread. Only for code already running inside a queue job
        (X/Y/Z cells, batch folders): submitting from there would wait on the single worker forever."""
        request = self.validate_txt2img(request)
        return self._generate(request, self.lora_uses(request), self.resolve_vae(request.vae), control)

    def _generate(self, request: Txt2ImgRequest, loras: tuple[LoraUse, ...], vae: str | Path,
                  control: JobControl | None) -> GenerationResult:
        run = run_img2img if isinstance(request, Img2ImgRequest) else run_txt2img
        with self.manager.checkout(request.checkpoint, loras, vae) as model:
            return run(model, request, outputs_root=self.settings.outputs_folder, styles=self.styles, control=control)

    # ---- training ----
    def training_paths(self) -> TrainingPaths:
        return TrainingPaths(lora_dir=self.settings.lora_folder, embeddings_dir=self.settings.embeddings_folder,
                             checkpoints_dir=self.settings.checkpoint_folder,
                             work_dir=self.settings.training_folder)

    def submit_training(self, config: TrainingConfig, owner: str | None = None) -> Job:
        """Check the config and dataset now (errors reach the user at once), then train on the worker.

        The base checkpoint defaults to the loaded one. Results are listed as soon as the job ends.
        """
        base_name = config.base_checkpoint or self.current_checkpoint_title() or ""
        record = self.catalog.find(base_name)
        if not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be trained: {record.error}")
        config = config.replace(base_checkpoint=record.title).validate()
        scan_dataset(config)  # raises DatasetError with the reason before anything is queued
        with self._training_lock:  # check and claim in one step: two clicks must not start two runs
            if self.training is not None and not self.training.finished:
                raise TrainingBusyError(f"training {self.training.config.output_name!r} is still running: "
                                        "cancel it or wait until it finishes")
            previous, monitor = self.training, TrainingMonitor(config, owner)
            self.training = monitor

        def work(control: JobControl) -> TrainingResult:
            def report(progress) -> None:
                monitor.record(progress)
                control.report_step(progress.step, total=max(progress.total_steps, 1))
                control.set_message(progress.message)

            try:
                result = run_training(config, self.manager.weights_of(record), self.training_paths(),
                                      self.manager.device, on_progress=report,
                                      should_stop=lambda: control.interrupted)
            except Exception as error:
                monitor.finish(error=str(error))
                raise
            self.refresh_trained_models()
            monitor.finish(result)
            return result

        try:
            return self.queue.submit("train", work, owner)
        except QueueFullError:
            with self._training_lock:  # nothing was queued: give the claim back
                self.training = previous
            raise

    def refresh_trained_models(self) -> None:
        """Make new LoRAs, embeddings and checkpoints usable without a restart."""
        self.catalog.refresh()  # LoRA files are rescanned on every listing already
        if self.manager.embedding_catalog is not None:
            self.manager.embedding_catalog.refresh()

    # ---- models ----
    def checkpoint_titles(self) -> list[str]:
        return [record.title for record in self.catalog.usable_records()]

    def refresh_checkpoints(self) -> list[CheckpointRecord]:
        return self.catalog.refresh()

    def select_checkpoint(self, wanted: str, owner: str | None = None) -> CheckpointRecord:
        """Load a checkpoint as the current one, in turn with other GPU work."""
        record = self.catalog.check_available(wanted)  # refuses a Hub id unless --allow-hub, before queueing
        if record is None:  # an allowed Hub download: on the worker, in turn with other jobs
            return self.queue.run("load-checkpoint", lambda control: self.manager.select(wanted), owner=owner)
        if not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be loaded: {record.error}")
        return self.queue.run("load-checkpoint", lambda control: self.manager.select(record.title), owner=owner)

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
            path = save_merged(recipe, merged, weights[0], self.settings.checkpoint_folder, output_name)
            self.catalog.refresh()
            return next(r for r in self.catalog.records() if r.path == path)

        return self.queue.run("merge-checkpoints", work, owner=owner)

    def current_checkpoint_title(self) -> str | None:
        current = self.manager.current
        return current.title if current else None


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
    return AppContext(
        settings=settings,
        catalog=catalog,
        manager=manager,
        queue=JobQueue(preview_every_n_steps=settings.preview_every_n_steps, max_jobs=request_limits.max_queue,
                       max_jobs_per_owner=request_limits.max_queue_per_user),
        styles=StyleDatabase(settings.styles_file),
        limits=request_limits.generation,
        loras=LoraCatalog(settings.lora_folder, hash_cache),
        request_limits=request_limits,
        files=FileAccess.from_settings(settings),
        network=network,
    )
