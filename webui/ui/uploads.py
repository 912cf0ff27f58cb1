"""Images uploaded through the UI, decoded through the request limits' checked opener.

Plain image widgets are `gr.Image(type="filepath", image_mode=None)`: gradio then only reads the file's
header and hands over its path, and the handler decodes it here, so an image with too many pixels is
refused (as a `gr.Error` naming the limit) before it is decoded.

The brush editors (`gr.ImageEditor`) always decode their background, layers and composite in their
`preprocess`, before any handler runs; `CheckedImageEditor` sizes each of them from its header first.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from webui.security.limits import RequestLimits

EDITOR_PARTS = {"background": "the editor's image", "composite": "the editor's drawing"}


def open_upload(limits: RequestLimits, path: str | None, mode: str | None = None,
                what: str = "the uploaded image") -> Image.Image | None:
    """Decode a `gr.Image(type="filepath")` value through the checked opener; None when nothing was uploaded.

    `mode` converts the decoded image (e.g. "RGBA" for img2img, whose masks may use alpha).
    """
    if not path:
        return None
    try:
        image = limits.open_image(path, what)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    return image.convert(mode) if mode and image.mode != mode else image


class CheckedImageEditor(gr.ImageEditor):
    """A `gr.ImageEditor` that refuses an image over `--max-image-pixels` before gradio decodes it.

    Build it with `checked_editor`. Like gradio's own templates (gr.Sketchpad), it is an ImageEditor on the
    wire (`is_template`: the same front-end component, and `imageeditor` in the API info).
    """

    is_template = True
    request_limits: RequestLimits | None = None  # set by `checked_editor`; None refuses every image

    def preprocess(self, payload):
        if payload is not None:
            for description, source in editor_images(payload, self.blob_storage):
                if self.request_limits is None:
                    raise gr.Error("this editor has no image limits configured")
                try:
                    self.request_limits.check_image_header(source, description)
                except ValueError as error:
                    raise gr.Error(str(error)) from None
        return super().preprocess(payload)


def checked_editor(limits: RequestLimits, **kwargs) -> CheckedImageEditor:
    editor = CheckedImageEditor(**kwargs)
    editor.request_limits = limits
    return editor


def editor_images(payload, blob_storage) -> list[tuple[str, object]]:
    """(description, file path or bytes) of every image an editor value carries, before decoding: the
    uploaded files, or the blobs the editor streamed to the server for this value (`payload.id`)."""
    if getattr(payload, "id", None) is not None:
        blobs = blob_storage.get(payload.id)
        if blobs is None:
            return []
        parts = [("background", blobs.background), ("composite", blobs.composite)]
        parts += [("layer", layer) for layer in blobs.layers or []]
        return [(EDITOR_PARTS.get(name, "an editor layer"), data) for name, data in parts if data]
    parts = [("background", payload.background), ("composite", payload.composite)]
    parts += [("layer", layer) for layer in payload.layers or []]
    return [(EDITOR_PARTS.get(name, "an editor layer"), file.path) for name, file in parts if file is not None]
