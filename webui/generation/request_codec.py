"""Generation requests as JSON plus image files, so a queued job can be written down and run after a restart.

A request is frozen data; its images (img2img's source and mask) are the only values JSON cannot hold.
They are written as PNG files into a folder the caller owns (the job's folder in the job store) and the
JSON names them, so the stored record stays small and readable. Reading back gives an equal request.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from PIL import Image

from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest

_TYPES: dict[str, type[Txt2ImgRequest]] = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest}
_IMAGE_FIELDS = ("init_images", "mask")


class RequestCodecError(ValueError):
    """A stored request that cannot be read back (unknown type, missing image file, bad field)."""


def encode_request(request: Txt2ImgRequest, image_folder: Path) -> dict[str, Any]:
    """The request as JSON-able values; its images are saved into `image_folder` as PNG files."""
    kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(request):
        if spec.name not in _IMAGE_FIELDS:
            values[spec.name] = getattr(request, spec.name)
    if isinstance(request, Img2ImgRequest):
        values["init_images"] = [_save(image, image_folder / f"init-{index}.png")
                                 for index, image in enumerate(request.init_images)]
        values["mask"] = _save(request.mask, image_folder / "mask.png") if request.mask is not None else None
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise RequestCodecError(f"the request cannot be stored as JSON: {error}") from None
    return {"type": kind, "fields": values}


def decode_request(data: dict[str, Any], image_folder: Path) -> Txt2ImgRequest:
    """The request `encode_request` wrote; images are read back from `image_folder`."""
    request_type = _TYPES.get(data.get("type", ""))
    if request_type is None:
        raise RequestCodecError(f"unknown request type {data.get('type')!r}; known: {', '.join(_TYPES)}")
    values = dict(data.get("fields") or {})
    known = {spec.name for spec in dataclasses.fields(request_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RequestCodecError(f"unknown request field(s) {', '.join(unknown)}")
    if "styles" in values:
        values["styles"] = tuple(values["styles"])
    if request_type is Img2ImgRequest:
        values["init_images"] = tuple(_load(image_folder, name) for name in values.get("init_images") or ())
        values["mask"] = _load(image_folder, values["mask"]) if values.get("mask") else None
    return request_type(**values)


def _save(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path.name


def _load(folder: Path, name: str) -> Image.Image:
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise RequestCodecError(f"stored image {name!r} is missing")
    with Image.open(path) as image:
        image.load()
        return image.copy()
