"""Images uploaded through the UI, decoded through the request limits' checked opener.

Plain image widgets are `gr.Image(type="filepath", image_mode=None)`: gradio then only reads the file's
header and hands over its path, and the handler decodes it here, so an image with too many pixels is
refused (as a `gr.Error` naming the limit) before it is decoded.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from webui.security.limits import RequestLimits


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
