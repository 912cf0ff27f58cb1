"""The Extras tab's runs: upscale a list of images through the shared extras use case and save the results
the way A1111 keeps them.

A1111 saves Extras results into `outputs/extras-images/` without a date folder (`00042.png`, or
`00042-<source name>.png` for batches), and the PNG keeps the source's generation parameters with the
postprocessing ones ("Postprocess upscale by: 2, Postprocess upscaler: ...") added, so PNG Info still shows
how the picture was made. The upscaling itself is the extras job the HTTP API queues too
(`webui.generation.extras_jobs.ExtrasService`, reached through the caller's `submit` and `wait`), never a
second implementation here. A batch is queued in jobs of at most the per-job image limit, one after the
other (a folder of any size does not fill the queue).

Folders typed by a user (Batch from Directory) are confined by `FileAccess` with the same rule as img2img's
batch folders (`BATCH_INPUT` / `BATCH_OUTPUT`); a folder outside them is refused with the same text whether
or not it exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from webui.generation.infotext import read_infotext
from webui.generation.outputs import save_numbered_image
from webui.generation.requests import RequestError
from webui.jobs.job import Job
from webui.security.identity import User
from webui.security.paths import BATCH_INPUT, BATCH_OUTPUT, FileAccess, PathUse, is_within
from webui.training.config import IMAGE_SUFFIXES

if TYPE_CHECKING:  # extras_jobs saves through this module's `save_extras_image`
    from webui.generation.extras_jobs import ExtrasResult

EXTRAS_OUTPUT_FOLDER = "extras-images"  # A1111's outdir_extras_samples, inside the user's outputs folder

# Refuse one image before it is queued (ValueError with the reason: over the pixel limit once upscaled) ...
Check = Callable[[Image.Image], None]
# ... queue a job upscaling these images (raises ValueError when it is refused, before anything is queued) ...
Submit = Callable[[list[Image.Image], list[str]], Job]
# ... and wait for it: its ExtrasResult (the images it finished, in order, with their postprocessing text).
Wait = Callable[[Job], "ExtrasResult"]

# A "Postprocess ...: value" pair already in a source's parameter line (an Extras result upscaled again):
# replaced by the new run's pairs rather than repeated.
_POSTPROCESS_PAIR = re.compile(r'(?:^|,\s*)Postprocess [\w ]+: (?:"(?:[^"\\]|\\.)*"|[^,]*)')


@dataclass(frozen=True)
class ExtrasSource:
    """One image to upscale, opened when its job is queued (a folder's images are not all held in memory
    at once); `name` is its file's stem for batch naming ("" for a single upload)."""

    open: Callable[[], Image.Image]
    name: str = ""

    @classmethod
    def of(cls, image: Image.Image, name: str = "") -> "ExtrasSource":
        return cls(lambda: image, name)


@dataclass(frozen=True)
class ExtrasOutput:
    """A saved result; `image` is None past the first `images_kept` of a run (a folder of any size must not
    be held in memory for display)."""

    image: Image.Image | None
    infotext: str
    path: Path


@dataclass
class ExtrasRun:
    """What a run produced, and the images it skipped with the reason (batches go on past a bad image)."""

    outputs: list[ExtrasOutput] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False


def extras_infotext(source: str | None, postprocess: str) -> str:
    """The source's infotext with the postprocessing parameters on its parameter line (replacing those of
    an earlier Extras run); the postprocessing text alone when the source carries none."""
    source = (source or "").rstrip()
    if not postprocess:
        return source
    if not source:
        return postprocess
    *head, last = source.split("\n")
    cleaned = _POSTPROCESS_PAIR.sub("", last).strip().lstrip(",").strip()
    if ": " not in cleaned:  # no parameter line (a bare prompt, or only earlier postprocessing pairs)
        return "\n".join([*head, cleaned, postprocess] if cleaned else [*head, postprocess])
    return "\n".join([*head, f"{cleaned}, {postprocess}"])


def save_extras_image(source: Image.Image, upscaled: Image.Image, postprocess: str, folder: Path,
                      label: str = "") -> tuple[str, Path]:
    """Save one Extras result the way A1111 keeps it (numbered, the source's infotext plus the
    postprocessing one): the saved infotext and the file's path. The tab's runs and the job API's
    extras jobs both save through here."""
    text = extras_infotext(read_infotext(source), postprocess)
    return text, save_numbered_image(upscaled, folder, text, label=label)


def upscale_and_save(sources: Sequence[ExtrasSource], submit: Submit, wait: Wait, folder: Path, *,
                     check: Check, images_per_job: int, keep_going: bool,
                     images_kept: int | None = None) -> ExtrasRun:
    """Upscale every source through extras jobs, one job at a time, and save each result into `folder`
    with its combined infotext.

    `check` refuses an image before it is queued (the service's size check): with `keep_going` (batches)
    an image that cannot be opened or that `check` refuses is skipped with the reason and the others are
    queued without it (a job is never refused for one of its images); a job refused as a whole skips its
    images; when nothing could be upscaled, the first reason is raised. For a single image (`keep_going`
    False) any refusal raises. A job that stops early (interrupted from the Queue tab) ends
    the run with what was saved so far. The first `images_kept` results (None: all) keep their image.
    """
    run = ExtrasRun()
    first_error: Exception | None = None

    def skip(source: ExtrasSource, error: Exception) -> None:
        nonlocal first_error
        if not keep_going:
            raise error
        first_error = first_error or error
        run.skipped.append(f"{source.name or 'image'}: {error}")

    def finish(group: list[tuple[ExtrasSource, Image.Image]], job: Job) -> bool:
        """Save what the job made; False when it stopped before the end."""
        result = wait(job)
        for (source, image), upscaled, postprocess in zip(group, result.images, result.infotexts):
            text, path = save_extras_image(image, upscaled, postprocess, folder, source.name)
            kept = images_kept is None or len(run.outputs) < images_kept
            run.outputs.append(ExtrasOutput(upscaled if kept else None, text, path))
        return len(result.images) == len(group)

    step = max(1, images_per_job)
    for start in range(0, len(sources), step):
        group = []
        for source in sources[start:start + step]:
            try:
                image = source.open()
                check(image)
            except (ValueError, OSError) as error:
                skip(source, error)
                continue
            group.append((source, image))
        if not group:
            continue
        try:
            job = submit([image for _, image in group], [source.name for source, _ in group])
        except ValueError as refused:
            for source, _ in group:
                skip(source, refused)
            continue
        if not finish(group, job):
            run.interrupted = True
            return run
    if not run.outputs and first_error is not None:
        raise first_error
    return run


def folder_images(files: FileAccess, typed: str, use: PathUse, user: User | None) -> list[Path]:
    """The image files directly inside the folder `typed` names, confined to `use`'s roots as `user` sees
    them; files that are symlinks leading out of the folder are left out. RequestError when the folder is
    missing or holds no images (said only after the folder was found to be inside the allowed roots)."""
    folder = files.resolve(typed, use, user)
    if not folder.is_dir():
        raise RequestError(f"{use.label} {typed!r} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and is_within(p, folder))
    if not images:
        raise RequestError(f"{use.label} {typed!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def directory_batch(files: FileAccess, input_folder: str, output_folder: str,
                    user: User | None) -> tuple[list[Path], Path]:
    """A1111's "Batch from Directory": the input images and the folder results go to (the user's
    outputs/extras-images when no output folder is given); both confined before anything is read."""
    output = (files.resolve(output_folder, BATCH_OUTPUT, user) if (output_folder or "").strip()
              else extras_folder(files, user))
    return folder_images(files, input_folder, BATCH_INPUT, user), output


def extras_folder(files: FileAccess, user: User | None) -> Path:
    """Where `user`'s Extras results go: outputs/extras-images (their own outputs part for a plain user)."""
    return files.outputs_for(user) / EXTRAS_OUTPUT_FOLDER
