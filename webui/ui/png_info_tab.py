"""PNG Info tab: show the generation parameters stored in any dropped image, and send them on.

The upload arrives as a file path and is opened through the request limits' checked opener, so an
image with too many pixels is refused before it is decoded.
"""

from __future__ import annotations

import html

import gradio as gr

from webui.generation.infotext import parse_infotext, read_infotext
from webui.security.limits import RequestLimits
from webui.ui.uploads import open_upload


def parameters_table(text: str) -> str:
    parsed = parse_infotext(text)
    rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>" for key, value in parsed.items()
    )
    return f'<table class="sd-pnginfo">{rows}</table>'


def build_png_info_tab(limits: RequestLimits) -> tuple[gr.Textbox, gr.Button]:
    """Returns the raw-infotext box and the "Send to txt2img" button for the app to wire."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image")
        with gr.Column():
            raw = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_parameters")
            table = gr.HTML(elem_id="pnginfo_table")
            send_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")

    def read(path: str | None) -> tuple[str, str]:
        picture = open_upload(limits, path)
        if picture is None:
            return "", ""
        text = read_infotext(picture)
        if not text:
            return "", "<p>This image holds no generation parameters.</p>"
        return text, parameters_table(text)

    image.change(read, inputs=image, outputs=[raw, table])
    return raw, send_to_txt2img
