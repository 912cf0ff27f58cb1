"""Who is clicking, and the images they upload: the two things every submitting UI handler needs.

Handlers take a `gr.Request` and call `ui_user` for the owner of the jobs they queue; a request the
auth middleware did not mark with a user is refused with a message, never given a guessed user.
Uploaded images reach handlers as file paths (`gr.Image(type="filepath")`) and are decoded here,
through the request limits' checked opener, so an oversized image is refused before it is decoded.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from webui.security.identity import NotAuthenticated, User, request_user
from webui.security.limits import RequestLimits


def ui_user(request: gr.Request | None) -> User:
    """The signed-in user behind a gradio event; gr.Error when the request carries none."""
    try:
        return request_user(request)
    except NotAuthenticated as error:
        raise gr.Error(f"Not signed in ({error}); reload the page and sign in again.") from None


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
