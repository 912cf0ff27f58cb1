"""Generation use cases: validate a txt2img/img2img request, queue it, run a batch folder.

Everything that can be refused is refused here, before a job is queued (values, styles, checkpoint,
LoRA tags, VAE name, image sizes), so a bad request costs no queue slot and every front end (UI, HTTP
API, X/Y/Z) gets the same answer. The work itself runs on the GPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from PIL import Image

from webui.generation.image_ops import check_image_size
from webui.generation.img2img import run_img2img
from webui.generation.infotext import write_png_info
from webui.generation.prompt_syntax import extract_network_tags
from webui.generation.requests import GenerationLimits, Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.generation.styles import StyleDatabase
from webui.generation.txt2img import GenerationResult, run_txt2img
from webui.jobs.progress import JobControl
from webui.jobs.queue import Job, JobQueue
from webui.models.lora_catalog import LoraCatalog, LoraUse
from webui.models.manager import ModelManager
from webui.models.service import ModelService
from webui.security.limits import RequestLimits
from webui.security.paths import BATCH_INPUT, BATCH_MASKS, BATCH_OUTPUT, FileAccess, is_within
from webui.training.config import IMAGE_SUFFIXES


@dataclass
class GenerationService:
    models: ModelService
    manager: ModelManager
    queue: JobQueue
    styles: StyleDatabase
    loras: LoraCatalog
    files: FileAccess              # where user-supplied paths may point (webui.security.paths)
    request_limits: RequestLimits  # its `generation` part bounds request values
    outputs_folder: Path

    @property
    def limits(self) -> GenerationLimits:
        return self.request_limits.generation

    def validate_txt2img(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Everything that can be checked before queueing: values, styles, checkpoint name."""
        request = request.validate(self.limits)
        if isinstance(request, Img2ImgRequest):
            for image in (*request.init_images[:1], request.mask):
                if image is not None:
                    check_image_size(image, self.limits.max_side)
        unknown_styles = [name for name in request.styles if name not in self.styles.names()]
        if unknown_styles:
            raise RequestError(f"unknown style(s) {', '.join(unknown_styles)}; "
                               f"available: {', '.join(self.styles.names()) or '(none)'}")
        if request.checkpoint:
            self.models.check_usable(request.checkpoint)
        return request

    def lora_uses(self, request: Txt2ImgRequest) -> tuple[LoraUse, ...]:
        """The LoRAs the (styled) prompt's `<lora:name:weight>` tags ask for; unknown names raise."""
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        return self.loras.resolve_tags(extract_network_tags(prompt)[1] + extract_network_tags(negative)[1])

    # Every submit_* takes the owner: the name of the user asking (`User.name`), None for the app's own
    # and command-line work. The queue bounds jobs per owner and only the owner or an admin stops a job.
    def submit_txt2img(self, request: Txt2ImgRequest, owner: str | None = None) -> Job:
        """Validate, then queue; the returned job carries progress and, when done, a GenerationResult."""
        return self._submit("txt2img", request, owner)

    def submit_img2img(self, request: Img2ImgRequest, owner: str | None = None) -> Job:
        """img2img / inpaint / outpaint: same checks and the same worker as txt2img."""
        return self._submit("img2img", request, owner)

    def _submit(self, kind: str, request: Txt2ImgRequest, owner: str | None) -> Job:
        request = self.validate_txt2img(request)
        loras, vae = self.lora_uses(request), self.models.resolve_vae(request.vae)
        return self.queue.submit(kind, lambda control: self._generate(request, loras, vae, control), owner)

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
                   else self.outputs_folder / "img2img-batch")
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
        return self._generate(request, self.lora_uses(request), self.models.resolve_vae(request.vae), control)

    def _generate(self, request: Txt2ImgRequest, loras: tuple[LoraUse, ...], vae: str | Path,
                  control: JobControl | None) -> GenerationResult:
        run = run_img2img if isinstance(request, Img2ImgRequest) else run_txt2img
        with self.manager.checkout(request.checkpoint, loras, vae) as model:
            return run(model, request, outputs_root=self.outputs_folder, styles=self.styles, control=control)
