"""The Extras tab's runs: upscale a list of images through the shared extras use case and save the results
the way A1111 keeps them.

A1111 saves Extras results into `outputs/extras-images/` without a date folder (`00042.png`, or
`00042-<source name>.png` for batches), and the PNG keeps the source's generation parameters with the
postprocessing ones ("Postprocess upscale by: 2, Postprocess upscaler: ...") added, so PNG Info still shows
how the picture was made. The upscaling itself is the caller's `upscale` function: the same use case the
HTTP API runs (`/sdapi/v1/extra-single-image`), never a second implementation here.

Folders typed by a user (Batch from Directory) are confined by `FileAccess` with the same rule as img2img's
batch folders (`BATCH_INPUT` / `BATCH_OUTPUT`); a folder outside them is refused with the same text whether
or not it exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from webui.generation.extras import ExtrasRequest
from webui.generation.infotext import read_infotext
from webui.generation.outputs import save_numbered_image
from webui.generation.requests import RequestError
from webui.security.identity import User
from webui.security.paths import BATCH_INPUT, BATCH_OUTPUT, FileAccess, PathUse, is_within
from webui.training.config import IMAGE_SUFFIXES

EXTRAS_OUTPUT_FOLDER = "extras-images"  # A1111's outdir_extras_samples, inside the user's outputs folder

# The shared use case: (image, validated request) -> (upscaled image, postprocessing infotext).
Upscale = Callable[[Image.Image, ExtrasRequest], tuple[Image.Image, str]]

# A "Postprocess ...: value" pair already in a source's parameter line (an Extras result upscaled again):
# replaced by the new run's pairs rather than repeated.
_POSTPROCESS_PAIR = re.compile(r'(?:^|,\s*)Postprocess [\w ]+: (?:"(?:[^"\\]|\\.)*"|[^,]*)')


@dataclass(frozen=True)
class ExtrasSource:
    """One image to upscale; `name` is its file's stem for batch naming ("" for a single upload)."""

    image: Image.Image
    name: str = ""


@dataclass(frozen=True)
class ExtrasOutput:
    image: Image.Image
    infotext: str
    path: Path


@dataclass
class ExtrasRun:
    """What a run produced, and the images it skipped with the reason (batches go on past a bad image)."""

    outputs: list[ExtrasOutput] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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


def upscale_and_save(sources: Iterable[ExtrasSource], request: ExtrasRequest, upscale: Upscale,
                     folder: Path, *, keep_going: bool) -> ExtrasRun:
    """Upscale every source with `upscale`, save each into `folder` with its combined infotext.

    `keep_going` (batches): an image that cannot be upscaled (too large, damaged) is skipped with its
    reason and the others go on; when none could be, the first error is raised. A single image raises.
    """
    run = ExtrasRun()
    first_error: Exception | None = None
    for source in sources:
        try:
            result, postprocess = upscale(source.image, request)
        except (ValueError, OSError) as error:
            if not keep_going:
                raise
            first_error = first_error or error
            run.skipped.append(f"{source.name or 'image'}: {error}")
            continue
        text = extras_infotext(read_infotext(source.image), postprocess)
        path = save_numbered_image(result, folder, text, label=source.name)
        run.outputs.append(ExtrasOutput(result, text, path))
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
