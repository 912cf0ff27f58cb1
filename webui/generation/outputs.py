"""Saving generated images the way A1111 lays them out on disk.

A1111 users know their outputs as ``outputs/txt2img-images/2024-05-01/00042-1234.png``
and grids as ``grid-0007.png``, with the infotext embedded so PNG Info can
restore the settings. This module reproduces that naming and metadata, and adds
what A1111 lacks: a save never leaves a truncated file under a real name and
never overwrites an existing image, even if the process dies mid-write or the
disk fills up.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from webui.generation.infotext import JPEG_MAX_EXIF_BYTES, build_exif_with_user_comment, write_png_info

IMAGE_NUMBER_DIGITS = 5
GRID_NUMBER_DIGITS = 4
GRID_BASENAME = "grid"
JPEG_QUALITY = 80  # A1111's default "Quality for saved jpeg and avif images"
GRID_BACKGROUND = "black"
# Give up after this many names that already exist, like A1111's bounded search:
# something else is racing us in the folder and an error is better than a spin.
MAX_NAME_ATTEMPTS = 500
PARTIAL_FILE_SUFFIX = ".partial"

_PILLOW_FORMAT_BY_EXTENSION = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# errno values meaning "this filesystem cannot hard-link", not "the write failed".
_NO_HARDLINK_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK"))
    if code is not None
)


class OutputWriteError(OSError):
    """An image could not be written; the message names the folder, ``errno`` is kept."""


def dated_folder(root: Path, kind: str, today: datetime.date | None = None) -> Path:
    """``root/kind/YYYY-MM-DD``, A1111's default per-day output folder (not created here)."""
    if not kind or kind in (".", "..") or "/" in kind or "\\" in kind:
        raise ValueError(f"output kind must be a single folder name, got {kind!r}")
    day = today if today is not None else datetime.date.today()
    return Path(root) / kind / day.isoformat()


def mode_folders(root: Path, from_image: bool) -> tuple[Path, Path]:
    """Today's (images, grids) folders of txt2img or, `from_image`, img2img: A1111's names, in one place for
    the generation loop and for a split job's gathered images."""
    mode = "img2img" if from_image else "txt2img"
    return dated_folder(root, f"{mode}-images"), dated_folder(root, f"{mode}-grids")


def next_image_number(folder: Path) -> int:
    """Next sequence number for ``NNNNN-seed.ext`` images: the highest existing one + 1.

    Like A1111, the number is whatever integer precedes the first ``-`` of a
    file name (without extension); files without one are ignored. 0 when the
    folder is empty or missing.
    """
    return _next_sequence_number(Path(folder), basename="")


def _next_sequence_number(folder: Path, basename: str) -> int:
    """Highest ``[basename-]N[-...]`` number among the files in ``folder``, plus one."""
    prefix = f"{basename}-" if basename else ""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    highest = -1
    for name in names:
        if not name.startswith(prefix):
            continue
        stem = os.path.splitext(name[len(prefix):])[0]
        leading_field = stem.split("-", 1)[0]
        if leading_field.isascii() and leading_field.isdigit():
            highest = max(highest, int(leading_field))
    return highest + 1


def save_image(
    image: Image.Image,
    folder: Path,
    seed: int,
    infotext: str | None,
    *,
    extension: str = "png",
    suffix: str = "",
    quality: int = JPEG_QUALITY,
) -> Path:
    """Save ``image`` as ``folder/NNNNN-seed{suffix}.{extension}`` and return its path.

    PNG carries the infotext in the ``parameters`` chunk, JPEG/WebP in the EXIF
    UserComment, as A1111 does. Filesystem failures (full disk, permissions)
    raise :class:`OutputWriteError`.
    """
    folder = Path(folder)
    pillow_format = _pillow_format_for(extension)
    normalized_extension = extension.lower().lstrip(".")
    save_options = _metadata_save_options(pillow_format, infotext, quality)
    return _save_with_fresh_name(
        _convert_for_format(image, pillow_format),
        folder,
        lambda number: f"{number:0{IMAGE_NUMBER_DIGITS}}-{seed}{suffix}.{normalized_extension}",
        lambda: next_image_number(folder),
        pillow_format,
        save_options,
    )


def save_numbered_image(image: Image.Image, folder: Path, infotext: str | None, *, label: str = "") -> Path:
    """Save a PNG as ``folder/NNNNN.png``, or ``NNNNN-label.png``: A1111's naming for Extras results, which
    have no seed (``label`` is a batch image's source name; characters unsafe in a file name become ``_``)."""
    folder = Path(folder)
    safe = "".join(c if c.isalnum() or c in "-_. " else "_" for c in label).strip(" .")[:100]
    tail = f"-{safe}" if safe else ""
    return _save_with_fresh_name(
        _convert_for_format(image, "PNG"),
        folder,
        lambda number: f"{number:0{IMAGE_NUMBER_DIGITS}}{tail}.png",
        lambda: next_image_number(folder),
        "PNG",
        _metadata_save_options("PNG", infotext, JPEG_QUALITY),
    )


def image_grid(
    images: Sequence[Image.Image], rows: int | None = None, *, background: str = GRID_BACKGROUND
) -> Image.Image:
    """Paste ``images`` left-to-right, top-to-bottom into one RGB image.

    Defaults follow A1111 (``n_rows = -1``, no "prevent empty spots"): rows is
    ``round(sqrt(n))``, never more than ``n``; columns fill the rest; every cell
    has the first image's size and unused cells show the background.
    """
    if not images:
        raise ValueError("cannot build a grid from zero images")
    if rows is None:
        rows = round(math.sqrt(len(images)))
    if rows < 1:
        raise ValueError(f"grid needs at least one row, got {rows}")
    rows = min(rows, len(images))
    columns = math.ceil(len(images) / rows)

    cell_width, cell_height = images[0].size
    grid = Image.new("RGB", (columns * cell_width, rows * cell_height), color=background)
    for index, cell_image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(cell_image, box=(column * cell_width, row * cell_height))
    return grid


def save_grid(
    images: Sequence[Image.Image],
    folder: Path,
    seed: int,
    infotext: str | None,
    *,
    extended_filename: bool = False,
) -> Path:
    """Save an :func:`image_grid` of ``images`` as ``grid-NNNN.png`` (numbered apart from images).

    ``seed`` only appears in the name with ``extended_filename`` (A1111's
    "Add extended info to filename when saving grid"), as ``grid-NNNN-seed.png``.
    """
    folder = Path(folder)
    seed_part = f"-{seed}" if extended_filename else ""
    return _save_with_fresh_name(
        image_grid(images),
        folder,
        lambda number: f"{GRID_BASENAME}-{number:0{GRID_NUMBER_DIGITS}}{seed_part}.png",
        lambda: _next_sequence_number(folder, GRID_BASENAME),
        "PNG",
        _metadata_save_options("PNG", infotext, JPEG_QUALITY),
    )


def _pillow_format_for(extension: str) -> str:
    """Pillow format name for a file extension; refuses formats we cannot embed infotext in."""
    normalized = extension.lower().lstrip(".")
    if normalized not in _PILLOW_FORMAT_BY_EXTENSION:
        supported = ", ".join(sorted(_PILLOW_FORMAT_BY_EXTENSION))
        raise ValueError(f"unsupported image extension {extension!r}; use one of: {supported}")
    return _PILLOW_FORMAT_BY_EXTENSION[normalized]


def _metadata_save_options(pillow_format: str, infotext: str | None, quality: int) -> dict[str, Any]:
    """Keyword arguments for ``Image.save`` that embed the infotext where A1111 puts it."""
    if pillow_format == "PNG":
        return {"pnginfo": write_png_info(infotext)} if infotext is not None else {}
    options: dict[str, Any] = {"quality": quality}
    if infotext is not None:
        exif = build_exif_with_user_comment(infotext)
        if pillow_format == "JPEG" and len(exif) > JPEG_MAX_EXIF_BYTES:
            raise ValueError(
                f"infotext of {len(infotext)} characters does not fit in JPEG EXIF "
                f"({len(exif)} > {JPEG_MAX_EXIF_BYTES} bytes); save as PNG or WebP instead"
            )
        options["exif"] = exif
    return options


def _convert_for_format(image: Image.Image, pillow_format: str) -> Image.Image:
    """Bring the image into a mode the target format can store (JPEG has no alpha)."""
    if pillow_format == "JPEG" and image.mode not in ("RGB", "L"):
        return image.convert("RGB")
    if pillow_format == "WEBP" and image.mode not in ("RGB", "RGBA"):
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image


def _save_with_fresh_name(
    image: Image.Image,
    folder: Path,
    name_for_number: Callable[[int], str],
    first_free_number: Callable[[], int],
    pillow_format: str,
    save_options: dict[str, Any],
) -> Path:
    """Write to a hidden partial file, then give it the first free numbered name.

    The final name appears only once the data is complete and flushed, and is
    claimed with a hard link, which fails instead of replacing an existing
    file, so a concurrent writer or a stale file is never overwritten.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(folder, error) from error

    partial_path: Path | None = None
    try:
        # Numbered before writing so the hidden partial file never affects the count.
        first_number = first_free_number()
        partial_path, descriptor = _create_partial_file(folder)
        with os.fdopen(descriptor, "wb") as partial_file:
            image.save(partial_file, format=pillow_format, **save_options)
            partial_file.flush()
            os.fsync(partial_file.fileno())
        for number in range(first_number, first_number + MAX_NAME_ATTEMPTS):
            final_path = folder / name_for_number(number)
            if _claim_name(partial_path, final_path):
                return final_path
        raise OutputWriteError(
            errno.EEXIST,
            f"Could not save image in {folder}: {MAX_NAME_ATTEMPTS} consecutive file names were already taken",
        )
    except OutputWriteError:
        raise
    except OSError as error:
        raise _write_error(folder, error) from error
    finally:
        if partial_path is not None:
            # A leftover hidden .partial file is harmless; a cleanup error must not hide the real outcome.
            with contextlib.suppress(OSError):
                partial_path.unlink(missing_ok=True)


def _create_partial_file(folder: Path) -> tuple[Path, int]:
    """Create a new hidden, uniquely named file; its permissions follow the umask like any saved image."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        candidate = folder / f".{secrets.token_hex(8)}{PARTIAL_FILE_SUFFIX}"
        try:
            return candidate, os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue


def _claim_name(partial_path: Path, final_path: Path) -> bool:
    """Give the finished file ``final_path`` unless that name exists; True on success."""
    try:
        os.link(partial_path, final_path)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARDLINK_ERRNOS:
            raise
    # Filesystems without hard links (some FAT/network mounts): check, then
    # rename. Only a writer racing in the same instant could still collide.
    if final_path.exists():
        return False
    os.replace(partial_path, final_path)
    return True


def _write_error(folder: Path, error: OSError) -> OutputWriteError:
    """Wrap a filesystem error so the user sees which output folder failed and why."""
    reason = error.strerror or str(error)
    return OutputWriteError(error.errno, f"Could not save image in {folder}: {reason}")
