"""txt2img and img2img jobs on a remote worker: the request as data out, the images as PNG bytes back.

The request travels in the form the job store keeps it in (`request_codec`: JSON values plus the images
as PNG files, here as bytes), with saving turned off: the remote machine only generates. The head saves
the returned images (with their infotexts) and the grid exactly where and how a local run saves them,
into the owner's outputs folder, so a user cannot tell which worker made an image except from the job
record's worker name.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from webui.generation.outputs import dated_folder, save_image
from webui.generation.request_codec import decode_request, encode_request
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.txt2img import GenerationResult, finish_grid
from webui.jobs.remote import RemoteKind

# Fields the head fills itself: where it saved, and the grid it builds from the images.
_HEAD_FIELDS = {"images", "saved_paths", "grid", "grid_path"}


def generation_remote_kinds(kind_names: tuple[str, ...], outputs_root_of: Any) -> dict[str, RemoteKind]:
    """The remote forms of the generation kinds (`txt2img`, `img2img`); `outputs_root_of(request)` is the
    head's folder for a request's images (GenerationService.outputs_root_of)."""
    def result_from_wire(request: Txt2ImgRequest, wire: dict[str, Any]) -> GenerationResult:
        return save_returned(request, result_from_data(wire), outputs_root_of(request))

    return {name: RemoteKind(name, request_to_wire, request_from_wire, result_to_wire, result_from_wire)
            for name in kind_names}


def request_to_wire(request: Txt2ImgRequest) -> dict[str, Any]:
    """The request as JSON values and PNG bytes, with saving left to the head."""
    with tempfile.TemporaryDirectory(prefix="sdstudio-wire-") as folder:
        data = encode_request(request.with_changes(save_images=False), Path(folder))
        files = {path.name: path.read_bytes() for path in Path(folder).iterdir()}
    return {"request": data, "files": files}


def request_from_wire(wire: dict[str, Any]) -> Txt2ImgRequest:
    with tempfile.TemporaryDirectory(prefix="sdstudio-wire-") as folder:
        for name, content in wire["files"].items():
            if Path(name).name != name:
                raise ValueError(f"image file name {name!r} in a remote request is not a plain name")
            (Path(folder) / name).write_bytes(content)
        return decode_request(wire["request"], Path(folder))


def result_to_wire(result: GenerationResult) -> dict[str, Any]:
    """The result's values, its images as PNG bytes (lossless: the head saves the same pixels)."""
    values = {spec.name: getattr(result, spec.name) for spec in dataclasses.fields(result)
              if spec.name not in _HEAD_FIELDS}
    values["images"] = [_png(image) for image in result.images]
    return values


def result_from_data(wire: dict[str, Any]) -> GenerationResult:
    values = {key: value for key, value in wire.items() if key not in _HEAD_FIELDS}
    values["warnings"] = tuple(values.get("warnings", ()))
    images = []
    for content in wire["images"]:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            images.append(image.copy())
    return GenerationResult(images=images, **values)


def save_returned(request: Txt2ImgRequest, result: GenerationResult, outputs_root: Path) -> GenerationResult:
    """Save the images (and grid) a remote worker returned as the local run would have saved them."""
    stem = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
    saving = request.save_images
    if saving:
        folder = dated_folder(outputs_root, f"{stem}-images")
        result.saved_paths = [save_image(image, folder, seed, infotext)
                              for image, seed, infotext in zip(result.images, result.seeds, result.infotexts)]
    finish_grid(result, request.save_grid, dated_folder(outputs_root, f"{stem}-grids") if saving else None)
    return result


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
