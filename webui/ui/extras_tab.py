"""The Extras tab: A1111's upscaling of finished pictures (one image, a batch of uploads, or a folder).

Widgets only: the upscaling is the extras job the HTTP API queues too (`AppContext.extras`,
`webui.generation.extras_jobs`), run on a worker; saving and the kept infotext are
`webui.generation.extras_outputs`, and typed folders go through the app's one path rule (`FileAccess`).
Bad input becomes a `gr.Error`; the server keeps serving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.errors import user_error
from webui.generation.extras import MAX_UPSCALE_FACTOR, ExtrasRequest
from webui.generation.extras_jobs import ExtrasResult
from webui.generation.extras_outputs import ExtrasSource, directory_batch, extras_folder, upscale_and_save
from webui.jobs.job import Job
from webui.security.identity import User
from webui.ui.access import caller_of
from webui.ui.uploads import open_upload
from webui.upscaling.catalog import BUILTIN_UPSCALERS

POLL_SECONDS = 0.25
SCALE_BY, SCALE_TO = 0, 1  # A1111's resize_mode values


@dataclass
class ExtrasTab:
    """What other tabs wire to: the source image ("Send to extras"), the sub-tabs and the upscaler lists."""

    image: gr.Image
    mode_tabs: gr.Tabs
    mode: gr.State
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    refresh: gr.Button


def extras_request(resize_mode: int, resize: Any, width: Any, height: Any, crop: bool, upscaler_1: str | None,
                   upscaler_2: str | None, visibility: Any) -> ExtrasRequest:
    """Widget values -> A1111's extras request (ValueError for a value that is not a number)."""
    def number(value: Any, label: str) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label} must be a number, got {value!r}") from None

    return ExtrasRequest(
        resize_mode=int(resize_mode), upscaling_resize=number(resize, "Resize"),
        upscaling_resize_w=int(number(width, "Width")), upscaling_resize_h=int(number(height, "Height")),
        upscaling_crop=bool(crop), upscaler_1=upscaler_1 or "None", upscaler_2=upscaler_2 or "None",
        extras_upscaler_2_visibility=number(visibility, "Upscaler 2 visibility"),
    )


def build_extras_tab(ctx: AppContext) -> ExtrasTab:
    limits = ctx.request_limits
    names = list(BUILTIN_UPSCALERS)  # the model files are listed when a page loads (upscaler_lists)
    mode = gr.State("single")
    resize_mode = gr.State(SCALE_BY)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="extras_mode_tabs") as mode_tabs:
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="filepath", image_mode=None, format="png", height=360,
                                     sources=["upload", "clipboard"], elem_id="extras_image")
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_process_tab") as batch_tab:
                    uploads = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                      type="filepath", elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="directory", elem_id="extras_batch_directory_tab") as dir_tab:
                    gr.Markdown("Every image in the input folder is upscaled. Folders are in the data folder's "
                                "`datasets/` or `outputs/`; a plain name means `datasets/<name>` for the input and "
                                "`outputs/<name>` for the output. With accounts, a plain user's folders are their "
                                "own `datasets/users/<name>/` and `outputs/users/<name>/`.")
                    input_dir = gr.Textbox(label="Input directory (in datasets/ or outputs/)",
                                           elem_id="extras_batch_input_dir")
                    output_dir = gr.Textbox(label="Output directory (in outputs/ or datasets/; empty = "
                                                  "outputs/extras-images)", elem_id="extras_batch_output_dir")
            for tab, name in ((single_tab, "single"), (batch_tab, "batch"), (dir_tab, "directory")):
                tab.select(lambda value=name: value, inputs=None, outputs=mode)
            generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as by_tab:
                    resize = gr.Slider(label="Resize", minimum=1.0, maximum=MAX_UPSCALE_FACTOR, step=0.05, value=4,
                                       elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        width = gr.Number(label="Width", value=512, precision=0, minimum=1,
                                          elem_id="extras_upscaling_resize_w")
                        height = gr.Number(label="Height", value=512, precision=0, minimum=1,
                                           elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            by_tab.select(lambda: SCALE_BY, inputs=None, outputs=resize_mode)
            to_tab.select(lambda: SCALE_TO, inputs=None, outputs=resize_mode)
            with gr.Row():
                upscaler_1 = gr.Dropdown(label="Upscaler 1", choices=names, value="None", scale=4,
                                         elem_id="extras_upscaler_1")
                refresh = gr.Button("🔄", scale=0, min_width=48, elem_id="extras_refresh_upscalers")
            with gr.Row():
                upscaler_2 = gr.Dropdown(label="Upscaler 2", choices=names, value="None", scale=2,
                                         elem_id="extras_upscaler_2")
                visibility = gr.Slider(label="Upscaler 2 visibility", minimum=0.0, maximum=1.0, step=0.001, value=0.0,
                                       scale=2, elem_id="extras_upscaler_2_visibility")
        with gr.Column(scale=1):
            gallery = gr.Gallery(label="Result", columns=2, object_fit="contain", height=512, interactive=False,
                                 format="png", elem_id="extras_gallery")
            infotext = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="extras_infotext")
    texts = gr.State([])

    def sources_for(chosen: str, single: str | None, batch: list[str] | None, input_folder: str,
                    output_folder: str, user: User) -> tuple[list[ExtrasSource], Path]:
        if chosen == "single":
            picture = open_upload(limits, single, what="the source image")
            if picture is None:
                raise ValueError("Upload an image in the Single Image tab first")
            return [ExtrasSource.of(picture)], extras_folder(ctx.files, user)
        if chosen == "batch":
            paths = [Path(path) for path in batch or [] if path]
            if not paths:
                raise ValueError("Upload one or more images in the Batch Process tab first")
            return [upload_source(path) for path in paths], extras_folder(ctx.files, user)
        files, output = directory_batch(ctx.files, input_folder or "", output_folder or "", user)
        return [ExtrasSource(lambda path=path: limits.open_image(path, repr(path.name)), path.stem)
                for path in files], output

    def upload_source(path: Path) -> ExtrasSource:
        def opened() -> Image.Image:
            picture = open_upload(limits, str(path), what=repr(path.name))
            if picture is None:
                raise ValueError("the upload is missing")
            return picture
        return ExtrasSource(opened, path.stem)

    def run(request: gr.Request, chosen: str, single: str | None, batch: list[str] | None, input_folder: str,
            output_folder: str, mode_value: int, resize_value: Any, width_value: Any, height_value: Any,
            crop_value: bool, first: str | None, second: str | None, second_visibility: Any,
            progress: gr.Progress = gr.Progress()):
        user = caller_of(request)
        service = ctx.extras
        if service is None:
            raise gr.Error("Upscaling is not available on this server.")

        def wait(job: Job) -> ExtrasResult:
            while not job.wait(POLL_SECONDS):
                snapshot = job.control.snapshot()
                progress(snapshot.fraction, desc=snapshot.message or "Upscaling...")
            return job.result()

        try:
            extras = service.validate(extras_request(mode_value, resize_value, width_value, height_value, crop_value,
                                                     first, second, second_visibility))
            sources, folder = sources_for(chosen, single, batch, input_folder, output_folder, user)
            result = upscale_and_save(sources, lambda images, names: service.submit(images, extras, user, names),
                                      wait, folder, check=lambda picture: service.check_sizes(picture, extras),
                                      images_per_job=service.max_images, keep_going=chosen != "single",
                                      images_kept=ctx.limits.max_images)
        except gr.Error:
            raise
        except Exception as error:  # shown to the user; the workers and the server keep running
            raise gr.Error(user_error(error)) from None
        for note in result.skipped:
            gr.Warning(f"Skipped {note}")
        if result.interrupted:
            gr.Warning("The upscaling was stopped; the images finished before that were saved.")
        shown = [output for output in result.outputs if output.image is not None]
        if len(result.outputs) > 1:
            more = f"; the first {len(shown)} are shown" if len(shown) < len(result.outputs) else ""
            gr.Info(f"{len(result.outputs)} images saved in {shown_folder(folder)}{more}.")
        infotexts = [output.infotext for output in shown]
        return [output.image for output in shown], (infotexts[0] if infotexts else ""), infotexts

    def shown_folder(folder: Path) -> str:
        """The folder as a user reads it: relative to the data folder when inside it."""
        try:
            return Path(os.path.realpath(folder)).relative_to(os.path.realpath(ctx.settings.data_dir)).as_posix() + "/"
        except ValueError:
            return folder.name + "/"

    generate.click(run, inputs=[mode, image, uploads, input_dir, output_dir, resize_mode, resize, width, height, crop,
                                upscaler_1, upscaler_2, visibility],
                   outputs=[gallery, infotext, texts], api_name="extras")

    def show_selected(infotexts: list[str], event: gr.SelectData) -> str:
        return infotexts[event.index] if 0 <= event.index < len(infotexts) else ""

    gallery.select(show_selected, inputs=texts, outputs=infotext)

    return ExtrasTab(image, mode_tabs, mode, upscaler_1, upscaler_2, refresh)
