"""Generation use cases: validate a txt2img/img2img request, queue it, run a batch folder.

Everything that can be refused is refused here, before a job is queued (values, styles, checkpoint,
LoRA tags, VAE name, image sizes), so a bad request costs no queue slot and every front end (UI, HTTP
API, X/Y/Z) gets the same answer. The work itself runs on a worker, with that worker's model manager;
the kinds this service adds to the scheduler's table are `txt2img`, `img2img` and `img2img-batch`.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from PIL import Image

from webui.generation.extras_outputs import folder_images
from webui.generation.hires import LATENT_MODES
from webui.generation.hooks import GenerationHooks
from webui.generation.image_ops import check_image_size
from webui.generation.img2img import run_img2img
from webui.generation.infotext import write_png_info
from webui.generation.prompt_syntax import extract_network_tags
from webui.generation.refiner import check_refiner_pair
from webui.generation.request_codec import decode_request, encode_request
from webui.generation.cfg_split import PARTNER, CfgSplitHooks, CfgSplitPart, cfg_parts, serve_partner
from webui.generation.split import RequestPart, fixed_request, gather_results, split_request
from webui.generation.samplers import (
    AUTOMATIC, UnknownSamplerError, check_flow_sampler, sampler_names, schedule_types_for,
)
from webui.generation.requests import (
    GenerationLimits,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
    check_samplers_for_family,
    check_size_for_family,
)
from webui.generation.styles import StyleDatabase
from webui.generation.txt2img import GenerationResult, run_txt2img
from webui.jobs.progress import JobControl
from webui.jobs.job import Job
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKind, JobSpec, Splitter
from webui.jobs.worker import Worker
from webui.models.catalog import CheckpointRecord
from webui.models.families import family_named
from webui.models.lora_catalog import LoraCatalog, LoraUse
from webui.models.manager import ModelManager
from webui.models.state import ModelState
from webui.models.service import ModelService
from webui.security.identity import USER, User, name_of
from webui.security.limits import RequestLimits
from webui.security.paths import BATCH_INPUT, BATCH_MASKS, BATCH_OUTPUT, FileAccess, is_within
from webui.upscaling.catalog import BUILTIN_UPSCALERS
from webui.upscaling.service import UpscalerService


TXT2IMG, IMG2IMG, IMG2IMG_BATCH = "txt2img", "img2img", "img2img-batch"
BUILTIN_PIXEL_UPSCALERS = (*LATENT_MODES, *BUILTIN_UPSCALERS)  # names that need no upscaler file


@dataclass(frozen=True)
class BatchJob:
    """A1111's img2img Batch tab as a job: the template request, the folders as typed, and the user whose
    folders they are judged against (again when the job runs; None: the app's own, the whole folders)."""

    template: Img2ImgRequest
    input_folder: str
    output_folder: str
    mask_folder: str = ""
    user: User | None = None


@dataclass
class GenerationService:
    models: ModelService
    scheduler: Scheduler
    styles: StyleDatabase
    loras: LoraCatalog
    files: FileAccess              # where user-supplied paths may point (webui.security.paths)
    request_limits: RequestLimits  # its `generation` part bounds request values
    outputs_folder: Path           # outputs/ as a whole; a request saves under `outputs_root_of(request)`
    inputs_folder: Path            # where queued img2img jobs keep their images until they are pruned
    # What extensions do during a job (webui.generation.hooks); the composition root passes the extension
    # layer's, the default does nothing.
    hooks: GenerationHooks = field(default_factory=GenerationHooks)
    # Model upscalers for hires fix's pixel step and img2img's resize (webui.upscaling); None: filters only.
    upscalers: UpscalerService | None = None
    # CFG split (`cfg_split.py`): a one-image job on a UNet model runs on two free workers in lockstep.
    cfg_split: bool = False

    @property
    def limits(self) -> GenerationLimits:
        return self.request_limits.generation

    def validate_txt2img(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Everything that can be checked before queueing: values, styles, checkpoint name. A request that
        names no sampler (an API body without `sampler_name`) gets its model family's default sampler."""
        if not request.sampler_name:
            request = replace(request, sampler_name=self.models.default_sampler(request.checkpoint))
        request = request.validate(self.limits, tuple(self.hooks.samplers()), self.model_upscalers_for(request))
        if isinstance(request, Img2ImgRequest):
            for image in (*request.init_images[:1], request.mask):
                if image is not None:
                    check_image_size(image, self.limits.max_side)
        unknown_styles = [name for name in request.styles if name not in self.styles.names()]
        if unknown_styles:
            raise RequestError(f"unknown style(s) {', '.join(unknown_styles)}; "
                               f"available: {', '.join(self.styles.names()) or '(none)'}")
        base = self.models.check_usable(request.checkpoint) if request.checkpoint else self.models.current_record()
        if base is not None and not isinstance(request, Img2ImgRequest):
            check_makes_images_from_text(base)
        if base is not None and base.architecture is not None:
            family = family_named(base.architecture.family)
            label = family.architecture_label(0, base.architecture.variant)
            check_samplers_for_family(request, family.flow_matching, label, tuple(self.hooks.samplers()),
                                      family.flow_sampler_names(base.architecture.variant, request.shift is not None))
            check_size_for_family(request, family.size_multiple, label)
        if request.refiner_checkpoint:
            try:
                refiner = self.models.check_usable(request.refiner_checkpoint)
            except LookupError as error:
                raise RequestError(f"refiner: {error.args[0] if error.args else error}") from None
            if refiner is None:
                raise RequestError(f"refiner {request.refiner_checkpoint!r} must be a checkpoint in the models folder")
            if base is not None:
                check_refiner_pair(base, refiner)
        return request

    def sampler_for(self, checkpoint: str | None, sampler: str, from_image: bool) -> str:
        """`sampler` when the checkpoint's family (None: the current one) can sample with it in this mode (img2img
        and inpaint start from an image), else the family's default: what a UI switches to with the model."""
        record = self.models.catalog_record(checkpoint)
        if record is None or record.architecture is None:
            return sampler
        family = family_named(record.architecture.family)
        if not family.flow_matching or sampler in self.hooks.samplers():
            return sampler
        try:
            check_flow_sampler(sampler, AUTOMATIC, from_image=from_image,
                               allowed=family.flow_sampler_names(record.architecture.variant))
        except UnknownSamplerError:
            return family.default_sampler
        return sampler

    def sampler_names(self) -> list[str]:
        """Every sampler a request may name: the built-in table, then those extensions added."""
        return sampler_names() + [name for name in self.hooks.samplers() if name not in sampler_names()]

    def schedule_types_for(self, sampler: str) -> list[str]:
        """The schedule types a UI offers for a sampler (only "Automatic" for those extensions added)."""
        return [AUTOMATIC] if sampler in self.hooks.samplers() else schedule_types_for(sampler)

    def lora_uses(self, request: Txt2ImgRequest) -> tuple[LoraUse, ...]:
        """The LoRAs the (styled) prompt's `<lora:name:weight>` tags ask for; unknown names raise."""
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        return self.loras.resolve_tags(extract_network_tags(prompt)[1] + extract_network_tags(negative)[1])

    # Every submit_* takes the owner: the user asking (`User`), None for the app's own and command-line
    # work. The job records the name (the scheduler bounds jobs per owner and only the owner or an admin
    # stops a job); the role decides where saved images go (`owned_by`).
    def submit_txt2img(self, request: Txt2ImgRequest, owner: User | None = None,
                       webhook_url: str | None = None) -> Job:
        """Validate, then queue; the returned job carries progress and, when done, a GenerationResult."""
        return self._submit(TXT2IMG, request, owner, webhook_url)

    def submit_img2img(self, request: Img2ImgRequest, owner: User | None = None,
                       webhook_url: str | None = None) -> Job:
        """img2img / inpaint / outpaint: same checks and the same workers as txt2img."""
        return self._submit(IMG2IMG, request, owner, webhook_url)

    def _submit(self, kind: str, request: Txt2ImgRequest, owner: User | None, webhook_url: str | None) -> Job:
        request = self.prepare(self.owned_by(request, owner))
        return self.scheduler.submit(JobSpec(kind, request, name_of(owner)), webhook_url)

    def owned_by(self, request: Txt2ImgRequest, owner: User | None) -> Txt2ImgRequest:
        """The request saving into `owner`'s outputs folder (outputs/ itself for an admin or the app)."""
        name_of(owner)  # a bare name is refused
        return request.with_changes(outputs_subfolder=self.files.outputs_subfolder(owner))

    def outputs_root_of(self, request: Txt2ImgRequest) -> Path:
        """Where a (submitted) request saves: its owner's folder, checked to lie inside outputs/."""
        return self.files.saved_outputs(request.outputs_subfolder)

    def prepare(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Validate a request and pin the checkpoint it runs on (the selected one when it names none),
        so that any worker draws it alike; LoRA tags and the VAE name are checked too."""
        request = self.validate_txt2img(self.pin_checkpoint(request))
        self.lora_uses(request)
        self.models.resolve_vae(request.vae)
        return request

    def pin_checkpoint(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """The request with the selected checkpoint filled in when it names none."""
        if not request.checkpoint:
            selected = self.models.current_checkpoint_title()
            return request.with_changes(checkpoint=selected) if selected else request
        return request

    def submit_img2img_batch(self, template: Img2ImgRequest, input_folder: str, output_folder: str,
                             mask_folder: str = "", owner: User | None = None) -> Job:
        """A1111's Batch tab: every image in a folder (with the same-named mask when a mask folder is given)
        through one queued job; results are saved into the output folder with their infotext.

        The folders are confined by `self.files` to the owner's part of datasets/ and outputs/ (all of
        them for an admin); files that are symlinks leading out of their folder are left alone."""
        job = BatchJob(self.owned_by(template, owner), input_folder, output_folder, mask_folder, owner)
        self._batch_files(job)  # every refusal before queueing
        probe = template.with_changes(init_images=(Image.new("RGB", (template.width, template.height)),))
        self.validate_txt2img(probe)
        return self.scheduler.submit(JobSpec(IMG2IMG_BATCH, job, name_of(owner)))

    def _batch_files(self, job: BatchJob) -> tuple[list[Path], Path, Path | None]:
        """(input images, output folder, mask folder), confined; raises with the reason."""
        files = folder_images(self.files, job.input_folder, BATCH_INPUT, job.user)
        outputs = (self.files.resolve(job.output_folder, BATCH_OUTPUT, job.user) if (job.output_folder or "").strip()
                   else self.files.outputs_for(job.user) / "img2img-batch")
        masks = self.files.resolve(job.mask_folder, BATCH_MASKS, job.user) if (job.mask_folder or "").strip() else None
        if masks is not None and not masks.is_dir():
            raise RequestError(f"mask folder {job.mask_folder!r} does not exist")
        return files, outputs, masks

    def _run_batch(self, worker: Worker, job: BatchJob, control: JobControl) -> GenerationResult:
        files, outputs, masks = self._batch_files(job)
        template = job.template
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
                result = self.generate_inline(worker.resources, request, control)
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
                combined.saved_paths.append(target)
            notes += [f"{path.name}: {warning}" for warning in result.warnings]
        combined.warnings = tuple(notes)
        combined.interrupted = control.interrupted
        return combined

    def generate_inline(self, manager: ModelManager, request: Txt2ImgRequest,
                        control: JobControl | None = None,
                        images: tuple[int, int | None] | None = None,
                        hooks: GenerationHooks | None = None) -> GenerationResult:
        """Validate and generate on the calling thread with `manager`: for code already running inside a
        job on a worker (X/Y/Z cells, batch folders), which runs its sub-steps inline, never as new jobs.
        `images` = (start, stop): only those images of the request (a part of a split job, `split.py`);
        `hooks` replace the app's (a CFG split's main part: `cfg_split.py`).

        Extensions' `before_request` hooks may change the request first; a change that the app's checks
        refuse is dropped (the job's warnings say so)."""
        hooks = hooks or self.hooks
        warnings: list[str] = []
        request, state = self._model_state(manager, request, hooks, warnings)
        run = run_img2img if isinstance(request, Img2ImgRequest) else run_txt2img
        refiner = request.refiner_checkpoint if request.uses_refiner else None
        with manager.checkout(state, refiner=refiner) as model:
            result = run(model, request, outputs_root=self.outputs_root_of(request), styles=self.styles,
                         control=control, hooks=hooks, upscalers=self.upscalers, images=images)
        result.warnings = tuple(warnings) + tuple(result.warnings)
        return result

    def _model_state(self, manager: ModelManager, request: Txt2ImgRequest, hooks: GenerationHooks,
                     warnings: list[str]) -> tuple[Txt2ImgRequest, ModelState]:
        """The request as it runs (checked; changed by extensions' `before_request`) and the model state it
        wants on `manager`: what a job checks out, and what a CFG split's partner checks out alike."""
        request = self.validate_txt2img(request)
        owners_folder = request.outputs_subfolder  # an extension never moves where a user's images go
        request = hooks.before_request(
            request, warnings, lambda changed: self._check_changed(changed.with_changes(outputs_subfolder=owners_folder)))
        state = manager.state_for(request.checkpoint, self.lora_uses(request), self.models.resolve_vae(request.vae),
                                  hooks.control_models(request, warnings))
        return request, state

    def model_upscalers_for(self, request: Txt2ImgRequest) -> tuple[str, ...]:
        """The usable model upscaler names when the request names an upscaler other than the built-in ones
        (hires fix's `hr_upscaler`, img2img's `upscaler_for_img2img`), else (): a request that uses none never
        makes the upscaler folders be read. An unusable one is refused here, with the reason."""
        if self.upscalers is None:
            return ()
        wanted = [("hr_upscaler", request.hr_upscaler)] if request.enable_hr else []
        if isinstance(request, Img2ImgRequest):
            wanted.append(("upscaler_for_img2img", request.upscaler_for_img2img))
        wanted = [(field_name, name) for field_name, name in wanted if name not in BUILTIN_PIXEL_UPSCALERS]
        if not wanted:
            return ()
        every = set(self.upscalers.names(usable_only=False))
        for field_name, name in wanted:
            if name in every:
                try:
                    self.upscalers.check(name)
                except RequestError as error:
                    raise RequestError(f"{field_name}: {error}") from None
        return tuple(self.upscalers.model_names())

    def _check_changed(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """What a request changed by an extension must pass before it runs (as a user's would)."""
        request = self.validate_txt2img(request)
        self.lora_uses(request)
        self.models.resolve_vae(request.vae)
        return request

    # ---- jobs ----
    def job_kinds(self) -> list[JobKind]:
        generation = {"run": self._run_generation, "encode": self._encode, "decode": self._decode,
                      "model_key": lambda request: self.models.model_key(request.checkpoint),
                      "control_keys": self.control_keys,
                      "summary": describe_request, "cost": generation_cost, "result_record": result_record,
                      "forget": self._forget,
                      "splitter": Splitter(self._split, self._gather, reports=_reports_progress)}
        return [
            JobKind(TXT2IMG, **generation),
            JobKind(IMG2IMG, **generation),
            JobKind(IMG2IMG_BATCH, run=self._run_batch, encode=self._encode_batch, decode=self._decode_batch,
                    model_key=lambda job: self.models.model_key(job.template.checkpoint),
                    control_keys=lambda job: self.control_keys(job.template),
                    summary=lambda job: f"batch {job.input_folder}: {describe_request(job.template)}",
                    result_record=result_record),
        ]

    def control_keys(self, request: Txt2ImgRequest) -> tuple[str, ...]:
        """The ControlNet files the request's units use, as the extensions' hooks name them now: the worker
        that has them built gets the job (a hint only; the job's checkout builds whatever it needs)."""
        try:
            return self.models.control_keys(self.hooks.control_models(request, []))
        except Exception:  # a hint must never refuse a job: the job reports the problem when it runs
            return ()

    def _run_generation(self, worker: Worker, request: Txt2ImgRequest | RequestPart | CfgSplitPart,
                        control: JobControl) -> GenerationResult | None:
        manager = worker.resources
        if isinstance(request, RequestPart):  # a part of a job split over several workers
            return self.generate_inline(manager, request.request, control, request.images)
        if isinstance(request, CfgSplitPart):
            return self._run_cfg_part(manager, request, control)
        return self.generate_inline(manager, request, control)

    def _run_cfg_part(self, manager: ModelManager, part: CfgSplitPart, control: JobControl) -> GenerationResult | None:
        """A CFG split's main part (the job, half of each UNet call sent to the partner) or its partner
        (the other half, on this worker's own model; it returns nothing)."""
        if part.role == PARTNER:
            def checkout() -> Any:
                _, state = self._model_state(manager, part.request, self.hooks, [])
                return manager.checkout(state)

            serve_partner(part.channel, checkout)
            return None
        try:
            return self.generate_inline(manager, part.request, control, hooks=CfgSplitHooks(self.hooks, part.channel))
        finally:
            part.channel.close()

    def _split(self, request: Txt2ImgRequest, parts: int) -> tuple[Any, ...]:
        """Several images: shared out among the parts (`split.py`); one image, with `cfg_split` on, on a UNet
        model without a refiner: its UNet calls' rows on two workers (`cfg_split.py`)."""
        if request.image_count > 1:
            return split_request(request, parts)
        family = self.models.family_of(request.checkpoint) if self.cfg_split else None
        if family is None or family.denoiser != "unet" or request.uses_refiner:
            return (request,)
        return cfg_parts(fixed_request(request))

    def _gather(self, request: Txt2ImgRequest, results: list[GenerationResult | None]) -> GenerationResult:
        return gather_results(request, self.outputs_root_of(request), [r for r in results if r is not None])

    def _encode(self, request: Txt2ImgRequest) -> dict[str, Any]:
        folder = uuid.uuid4().hex
        data = encode_request(request, self.inputs_folder / folder)
        return {"request": data, "folder": folder}

    def _decode(self, data: dict[str, Any]) -> Txt2ImgRequest:
        return decode_request(data["request"], self.inputs_folder / data["folder"])

    def _forget(self, data: dict[str, Any]) -> None:
        folder = self.inputs_folder / str(data.get("folder", ""))
        if data.get("folder") and folder.parent == self.inputs_folder and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _encode_batch(job: BatchJob) -> dict[str, Any]:
        template = job.template.with_changes(init_images=(), mask=None)  # each image comes from the folder
        user = {"name": job.user.name, "role": job.user.role} if job.user is not None else None
        return {"template": encode_request(template, Path("/nonexistent")), "input_folder": job.input_folder,
                "output_folder": job.output_folder, "mask_folder": job.mask_folder, "user": user}

    @staticmethod
    def _decode_batch(data: dict[str, Any]) -> BatchJob:
        template = decode_request(data["template"], Path("/nonexistent"))
        user = data.get("user")
        return BatchJob(template, data["input_folder"], data["output_folder"], data.get("mask_folder", ""),
                        User(str(user["name"]), str(user.get("role", USER))) if user else None)


def _reports_progress(part: Any) -> bool:
    """A CFG split's partner only answers the main part's UNet calls: the main part's progress is the job's."""
    return not (isinstance(part, CfgSplitPart) and part.role == PARTNER)


def check_makes_images_from_text(record: CheckpointRecord) -> None:
    """txt2img needs a model that starts from noise; the SDXL refiner only finishes pictures."""
    family = family_named(record.architecture.family) if record.architecture else None
    if family is not None and not family.makes_images_from_text:
        raise RequestError(f"{record.name} is an {family.label} model: it cannot make a picture from text alone; "
                           "use it in img2img or as txt2img's Refiner, with another model as the checkpoint")


def describe_request(request: Txt2ImgRequest) -> str:
    """The Queue tab's line: the prompt's start and the size."""
    prompt = " ".join(request.prompt.split())
    prompt = prompt if len(prompt) <= 80 else prompt[:79] + "…"
    images = request.batch_size * request.batch_count
    return f"{prompt or '(empty prompt)'} ({request.width}x{request.height}, {request.steps} steps" + (
        f", {images} images)" if images > 1 else ")")


def generation_cost(request: Txt2ImgRequest) -> float:
    """Work in megapixel-steps: the run time of a job grows with it (hires fix adds its second pass)."""
    steps = request.steps
    if request.enable_hr:
        steps += request.hr_second_pass_steps or request.steps
    return request.batch_size * request.batch_count * steps * request.width * request.height / 1e6


def result_record(result: GenerationResult) -> dict[str, Any]:
    """What the job history keeps: saved files, infotexts and seeds (the images themselves are files)."""
    return {"images": [str(path) for path in result.saved_paths], "infotexts": list(result.infotexts),
            "seeds": list(result.seeds), "interrupted": bool(result.interrupted), "warnings": list(result.warnings)}
