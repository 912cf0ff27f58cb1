"""The Train tab's dataset section: upload into a dataset folder, captions (auto and by hand), summary.

Handlers take the whole form (so captioning and the summary see the same trigger word, template and
bucket settings training will use) through `form_config`, which the tab passes in. Every folder is judged
against the signed-in user's own part of datasets/ (webui.security.paths), so handlers take `gr.Request`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from webui.context import AppContext
from webui.models.hub import looks_like_repo_id
from webui.security.identity import User
from webui.security.paths import CAPTION_MODEL
from webui.ui.access import caller_of
from webui.training.config import TrainingConfig, check_caption_extension
from webui.training.dataset import caption_missing_images, scan_dataset
from webui.errors import user_error
from webui.ui.train_fields import DATASET_GROUPS, make_widget
from webui.training.service import caption_rows, dataset_folder, dataset_folder_for, import_images, save_caption_rows

FormConfig = Callable[..., TrainingConfig]  # (user, *widget values in the form's input order) -> confined config


@dataclass
class DatasetSection:
    upload: gr.File
    dataset_dir: gr.Textbox
    upload_message: gr.Markdown
    caption_model: gr.Textbox
    autocaption: gr.Button
    caption_message: gr.Markdown
    captions: gr.Dataframe
    load_captions: gr.Button
    save_captions: gr.Button
    summary: gr.Markdown
    check: gr.Button
    fields: dict[str, gr.components.Component]


def build_dataset_section(defaults: TrainingConfig) -> DatasetSection:
    """Lay out the widgets; `wire_dataset_section` connects them once the whole form exists."""
    fields: dict[str, gr.components.Component] = {}
    with gr.Row():
        upload = gr.File(label="Upload training images (and optional .txt captions)", file_count="multiple",
                         file_types=["image", ".txt", ".caption"], elem_id="train_upload", scale=2)
        with gr.Column(scale=3):
            dataset_dir = gr.Textbox(label="Dataset folder", elem_id="train_dataset_dir",
                                     info="uploads go to datasets/<output name>; or type the name of a folder "
                                          "in datasets/ (kohya layout 10_trigger class/ works too); with accounts, a "
                                          "plain user's datasets/ is their own datasets/users/<name>/")
            upload_message = gr.Markdown(elem_id="train_upload_message")
    with gr.Row():
        for spec in DATASET_GROUPS["words"]:
            fields[spec.name] = make_widget(spec, getattr(defaults, spec.name))
    with gr.Row():
        caption_model = gr.Textbox(label="Captioning model (BLIP folder in models/, or a Hub id with --allow-hub; "
                                         "empty = template)", elem_id="train_caption_model", scale=3)
        autocaption = gr.Button("Auto-caption images without a caption", elem_id="train_autocaption", scale=1)
    caption_message = gr.Markdown(elem_id="train_caption_message")
    captions = gr.Dataframe(headers=["file", "caption"], datatype=["str", "str"], column_count=2, type="array",
                            interactive=True, static_columns=[0], label="Captions (empty = caption template)",
                            elem_id="train_captions", wrap=True)
    with gr.Row():
        load_captions = gr.Button("Reload captions", size="sm", elem_id="train_load_captions")
        save_captions = gr.Button("Save captions", size="sm", elem_id="train_save_captions")
    for group in ("captions", "dropout", "buckets", "augment", "masks"):
        with gr.Row():
            for spec in DATASET_GROUPS[group]:
                fields[spec.name] = make_widget(spec, getattr(defaults, spec.name))
    with gr.Row():
        summary = gr.Markdown(elem_id="train_summary")
        check = gr.Button("Check dataset", size="sm", elem_id="train_check_dataset", scale=0, min_width=140)
    return DatasetSection(upload, dataset_dir, upload_message, caption_model, autocaption, caption_message, captions,
                          load_captions, save_captions, summary, check, fields)


def dataset_summary_text(config: TrainingConfig) -> str:
    """Image count, buckets and caption sources, plus the scan's notes (e.g. skipped files)."""
    summary = scan_dataset(config).summary()
    notes = "".join(f"\n- {note}" for note in summary.notes)
    return f"**Dataset:** {summary.describe()}{notes}"


def captioning_model(ctx: AppContext, text: str | None, user: User | None) -> tuple[Path | None, str | None]:
    """(model folder, Hub id) from the textbox. A folder is confined to models/ (a relative name starts
    there); an existing folder wins over a Hub-id-looking name, which the engine refuses without --allow-hub."""
    text = (text or "").strip()
    if not text:
        return None, None
    folder = ctx.files.resolve(text, CAPTION_MODEL, user)
    if folder.is_dir() or not looks_like_repo_id(text):
        return folder, None
    return None, text


def wire_dataset_section(ctx: AppContext, section: DatasetSection, output_name: gr.Textbox,
                         form_inputs: list[gr.components.Component], form_config: FormConfig) -> None:
    extension = section.fields["caption_extension"]

    def upload_images(request: gr.Request, files: list[str] | None, name: str, ext: str):
        if not files:
            return gr.update(), gr.update(), gr.update()
        user = caller_of(request)
        try:
            extension = check_caption_extension(ext or ".txt")
            result = import_images(files, dataset_folder_for(ctx.training, name, user), ctx.request_limits)
            rows = caption_rows(result.folder, extension)
        except ValueError as error:
            raise gr.Error(user_error(error)) from None
        return str(result.folder), result.describe(), rows

    def load_captions(request: gr.Request, folder: str, ext: str):
        if not (folder or "").strip():
            raise gr.Error("Choose a dataset folder or upload images first.")
        user = caller_of(request)
        try:
            return caption_rows(dataset_folder(ctx.training, folder, user), check_caption_extension(ext or ".txt"))
        except ValueError as error:
            raise gr.Error(user_error(error)) from None

    def save_captions(request: gr.Request, folder: str, rows: list[list[Any]] | None, ext: str):
        if not (folder or "").strip():
            raise gr.Error("Choose a dataset folder or upload images first.")
        user = caller_of(request)
        try:
            root, extension = dataset_folder(ctx.training, folder, user), check_caption_extension(ext or ".txt")
            written, removed = save_caption_rows(root, rows or [], extension)
            fresh = caption_rows(root, extension)
        except (ValueError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        note = f" Removed {removed} emptied caption file(s); those images use the template." if removed else ""
        return f"Saved {written} caption file(s).{note}", fresh

    def autocaption(request: gr.Request, model: str, *values: Any):
        # BLIP runs here on the CPU rather than on the GPU worker, so captioning never waits behind a training run.
        user = caller_of(request)
        try:
            config = form_config(user, *values)  # folders confined, caption extension checked
            if not config.dataset_dir:
                raise ValueError("dataset_dir: choose a dataset folder or upload images first")
            model_dir, model_id = captioning_model(ctx, model, user)
            written, notes = caption_missing_images(config, model_dir=model_dir, model_id=model_id,
                                                    network=ctx.network)
            rows = caption_rows(Path(config.dataset_dir), config.caption_extension)
        except (ValueError, LookupError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        if not written:
            return "Every image already has a caption file; edit captions in the table.", rows
        return f"Wrote {len(written)} caption file(s):\n" + "\n".join(f"- {note}" for note in notes), rows

    def check(request: gr.Request, *values: Any):
        user = caller_of(request)
        try:
            return dataset_summary_text(form_config(user, *values).validate())
        except (ValueError, OSError) as error:
            raise gr.Error(user_error(error)) from None

    section.upload.upload(upload_images, inputs=[section.upload, output_name, extension],
                          outputs=[section.dataset_dir, section.upload_message, section.captions])
    section.load_captions.click(load_captions, inputs=[section.dataset_dir, extension], outputs=section.captions)
    section.dataset_dir.submit(load_captions, inputs=[section.dataset_dir, extension], outputs=section.captions)
    section.save_captions.click(save_captions, inputs=[section.dataset_dir, section.captions, extension],
                                outputs=[section.caption_message, section.captions])
    section.autocaption.click(autocaption, inputs=[section.caption_model] + form_inputs,
                              outputs=[section.caption_message, section.captions])
    section.check.click(check, inputs=form_inputs, outputs=section.summary)
