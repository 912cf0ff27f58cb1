"""The Extras' image work as scheduler jobs, so model upscalers run on a worker's device, in line with
generation (a GPU is never used from an HTTP thread, and overlapping calls take turns).

`ExtrasService.submit` checks everything first (upscaler names, sizes against the pixel limit, the image
count) and queues one `extras` job for a list of images; the job's result is an `ExtrasResult` with the
upscaled images and A1111's postprocessing infotext of each. A job given a `save_folder` (the job API's,
whose clients fetch the images later by URL) saves each result there as the Extras tab does, and its
history record lists the files; without one (the A1111 routes, the tab) the job saves nothing. Queued
jobs keep their images as PNG files in the job store's inputs folder (removed when the job's record is
pruned), so they survive a restart.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from webui.generation.extras import ExtrasRequest, upscale_image
from webui.generation.extras_outputs import save_extras_image
from webui.generation.image_ops import check_pixel_count
from webui.generation.requests import RequestError
from webui.jobs.job import Job
from webui.jobs.progress import JobControl
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKind, JobSpec
from webui.jobs.worker import Worker
from webui.security.identity import User, name_of
from webui.upscaling.catalog import NONE_UPSCALER
from webui.upscaling.service import UpscalerService
from webui.upscaling.tiles import UpscaleInterrupted

EXTRAS = "extras"


@dataclass(frozen=True)
class ExtrasJob:
    """Images to upscale with one set of extras settings; `names` are the images' names (may be empty)."""

    images: tuple[Image.Image, ...]
    request: ExtrasRequest
    names: tuple[str, ...] = ()
    save_folder: str = ""        # where the job saves its results ("" = the caller saves them, if at all)


@dataclass(frozen=True)
class ExtrasResult:
    """The upscaled images in order, each with its postprocessing infotext ("" when nothing was done).
    An interrupted job returns the images finished before the interrupt."""

    images: tuple[Image.Image, ...]
    infotexts: tuple[str, ...]
    names: tuple[str, ...] = ()
    saved_paths: tuple[Path, ...] = ()  # the files of a job with a save folder, in order


@dataclass
class ExtrasService:
    upscalers: UpscalerService
    scheduler: Scheduler
    inputs_folder: Path          # where queued jobs keep their images
    max_pixels: int | None       # the server's pixel limit for every result
    max_images: int              # images one job may hold

    def validate(self, request: ExtrasRequest) -> ExtrasRequest:
        return request.validate(self.upscalers)

    def submit(self, images: Sequence[Image.Image], request: ExtrasRequest, owner: User | None = None,
               names: Sequence[str] = (), save_folder: Path | None = None, webhook_url: str | None = None) -> Job:
        """Check, then queue; the job's result is an ExtrasResult. RequestError / ImageTooLargeError before
        anything is queued. With `save_folder` the job saves its results there (see the module's text)."""
        if not images:
            raise RequestError("no image to upscale")
        if len(images) > self.max_images:
            raise RequestError(f"{len(images)} images in one request; the limit is {self.max_images}")
        request = self.validate(request)
        for image in images:
            self.check_sizes(image, request)
        job = ExtrasJob(tuple(images), request, tuple(names), str(save_folder) if save_folder is not None else "")
        return self.scheduler.submit(JobSpec(EXTRAS, job, name_of(owner)), webhook_url)

    def check_sizes(self, image: Image.Image, request: ExtrasRequest) -> None:
        """The pixel limit, judged on the sizes alone (so a refusal costs no upscaling): ImageTooLargeError
        when `image` upscaled by `request` would be over it. Public so a caller with many images (the Extras
        tab's batches) can leave out the ones that would be refused before queueing the others."""
        if request.upscaler_1 == NONE_UPSCALER:
            return
        scale = request.scale_for(image.size)
        check_pixel_count((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          self.max_pixels, "the upscaled image")

    def run_inline(self, job: ExtrasJob, device: Any = None, control: JobControl | None = None) -> ExtrasResult:
        """Upscale every image of the job on the calling thread (a worker's) with `device`."""
        images, infotexts, saved = [], [], []
        if control is not None:
            control.start(len(job.images), len(job.images))
        for index, image in enumerate(job.images):
            if control is not None:
                if control.interrupted:
                    break
                control.begin_batch(index)
            try:
                result, info = upscale_image(image, job.request, self.upscalers, self.max_pixels,
                                             device=device, control=control)
            except UpscaleInterrupted:
                break
            if job.save_folder:
                label = job.names[index] if index < len(job.names) else ""
                saved.append(save_extras_image(image, result, info, Path(job.save_folder), label)[1])
            images.append(result)
            infotexts.append(info)
            if control is not None:
                control.report_step(index + 1, len(job.images))
        return ExtrasResult(tuple(images), tuple(infotexts), job.names[:len(images)], tuple(saved))

    # ---- jobs ----
    def job_kinds(self) -> list[JobKind]:
        return [JobKind(EXTRAS, run=self._run, encode=self._encode, decode=self._decode, summary=_summary,
                        cost=_cost, result_record=_result_record, forget=self._forget)]

    def _run(self, worker: Worker, job: ExtrasJob, control: JobControl) -> ExtrasResult:
        return self.run_inline(job, worker.device, control)

    def _encode(self, job: ExtrasJob) -> dict[str, Any]:
        folder = uuid.uuid4().hex
        target = self.inputs_folder / folder
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for index, image in enumerate(job.images):
            name = f"extras-{index}.png"
            image.save(target / name, format="PNG")
            files.append(name)
        return {"folder": folder, "files": files, "names": list(job.names),
                "request": dataclasses.asdict(job.request), "save_folder": job.save_folder}

    def _decode(self, data: dict[str, Any]) -> ExtrasJob:
        folder = self.inputs_folder / str(data["folder"])
        images = []
        for name in data["files"]:
            with Image.open(folder / name) as stored:
                stored.load()
                images.append(stored.copy())
        return ExtrasJob(tuple(images), ExtrasRequest(**data["request"]), tuple(data.get("names", ())),
                         str(data.get("save_folder", "")))

    def _forget(self, data: dict[str, Any]) -> None:
        folder = self.inputs_folder / str(data.get("folder", ""))
        if data.get("folder") and folder.parent == self.inputs_folder and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _summary(job: ExtrasJob) -> str:
    request = job.request
    second = (f" + {request.upscaler_2} ({request.extras_upscaler_2_visibility:g})"
              if request.upscaler_2 != NONE_UPSCALER and request.extras_upscaler_2_visibility > 0 else "")
    size = (f"x{request.upscaling_resize:g}" if request.resize_mode == 0
            else f"to {request.upscaling_resize_w}x{request.upscaling_resize_h}")
    return f"extras: {len(job.images)} image(s) {size} with {request.upscaler_1}{second}"


def _cost(job: ExtrasJob) -> float:
    """Output pixels (what an upscaler's run time grows with)."""
    return float(sum(max(1, job.request.output_size(image.size)[0]) * max(1, job.request.output_size(image.size)[1])
                     for image in job.images))


def _result_record(result: ExtrasResult) -> dict[str, Any]:
    """The saved files (served by the job API; none when the caller saves), their infotexts, the count."""
    return {"images": [str(path) for path in result.saved_paths], "infotexts": list(result.infotexts),
            "image_count": len(result.images)}
