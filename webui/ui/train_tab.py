"""The Train tab: dataset, method and preset, hyperparameters, run with live progress, share.

Training runs on the queue worker (`AppContext.submit_training`); this tab only builds the config from
its widgets and polls `ctx.training.monitor` with a timer. Because the poll reads the context's monitor rather
than anything held by one browser tab, a reloaded page picks up the running (or last) run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.training.config import TrainingConfig, load_preset, save_user_preset
from webui.security.identity import User
from webui.ui.access import caller_of, require_admin
from webui.errors import user_error
from webui.ui.train_dataset_section import (
    DatasetSection,
    build_dataset_section,
    dataset_summary_text,
    wire_dataset_section,
)
from webui.ui.train_fields import (
    GROUP_IDS,
    GROUP_METHODS,
    HYPERPARAMETER_GROUPS,
    JOB_WIDGET_FIELDS,
    METHOD_CHOICES,
    all_specs,
    config_from_widgets,
    default_form_config,
    make_widget,
    widget_value,
)
from webui.ui.train_progress import (
    LOSS_SERIES,
    SMOOTHED_SERIES,
    VALIDATION_SERIES,
    log_text,
    loss_frame,
    progress_html,
    result_markdown,
    sample_gallery,
)
from webui.jobs.errors import QueueFullError
from webui.training.monitor import TrainingBusyError
from webui.training.service import (
    JOB_FIELDS,
    cancel_training,
    confine_config,
    default_sample_prompt,
    export_run,
    last_run_lora_names,
    preset_names,
    saved_states,
    shipped_preset_names,
    start_training,
    training_status,
    visible_run,
    upload_run,
    user_presets_folder,
)

POLL_SECONDS = 1.0
COMPARE_WEIGHTS = [0.6, 0.8, 1.0]
LOSS_COLORS = {LOSS_SERIES: "#9ca3af", SMOOTHED_SERIES: "#f97316", VALIDATION_SERIES: "#2563eb"}
LICENSES = ["creativeml-openrail-m", "openrail++", "openrail", "cc-by-4.0", "cc-by-nc-4.0", "mit", "apache-2.0", "other"]


@dataclass
class TrainTab:
    """The tab's components the rest of the UI may wire to (the lead connects Compare epochs to X/Y/Z)."""

    method: gr.Radio
    output_name: gr.Textbox
    base_checkpoint: gr.Dropdown
    dataset: DatasetSection
    fields: dict[str, gr.components.Component]
    preset: gr.Dropdown
    train: gr.Button
    cancel: gr.Button
    compare_epochs: gr.Button
    progress: gr.HTML
    loss_plot: gr.LinePlot
    samples: gr.Gallery
    result: gr.Markdown
    timer: gr.Timer


def resume_info(states: list[str]) -> str:
    """The resume box's hint: the caller's own saved states (another user's are never listed)."""
    if not states:
        return "none of your runs saved a state yet: tick 'Save training state' to resume a run later"
    shown = ", ".join(states[:8]) + (f" and {len(states) - 8} more" if len(states) > 8 else "")
    return f"one of your saved states, newest first: {shown}"


def compare_epochs_request(ctx: AppContext, viewer: User | None = None) -> tuple[str, list[str], list[float]]:
    """(a sample prompt, the last run's LoRA names from first epoch to final, weights) for an X/Y/Z grid;
    only of a run `viewer` may see (theirs, or any for an admin)."""
    epochs, finals = last_run_lora_names(ctx.training, viewer)
    if not epochs:
        raise gr.Error("No epoch files to compare: train a LoRA method with 'Save every N epochs' above 0 first.")
    return default_sample_prompt(ctx.training.monitor.config), epochs + finals, list(COMPARE_WEIGHTS)


def build_train_tab(ctx: AppContext, blocks: gr.Blocks, tab: gr.Tab, native_resolution: int = 512) -> TrainTab:
    defaults = default_form_config(native_resolution)
    titles = ctx.models.checkpoint_titles()
    with gr.Row():
        output_name = gr.Textbox(label="Output name", elem_id="train_output_name", scale=2,
                                 info="file name of the LoRA / embedding / checkpoint")
        base_checkpoint = gr.Dropdown(label="Base checkpoint", choices=titles, elem_id="train_base_checkpoint",
                                      allow_custom_value=True,  # titles gain their hash; the catalog decides
                                      value=ctx.models.current_checkpoint_title() or next(iter(titles), None), scale=3)
    gr.Markdown("### Dataset")
    dataset = build_dataset_section(defaults)
    fields: dict[str, gr.components.Component] = dict(dataset.fields)

    gr.Markdown("### Method")
    method = gr.Radio(label="Training method", choices=list(METHOD_CHOICES), value=defaults.method,
                      elem_id="train_method")
    with gr.Row():
        # The user's own presets join the list when the page loads (`reconnect`): nobody sees another's.
        preset = gr.Dropdown(label="Preset", choices=shipped_preset_names(ctx.training), value=None,
                             elem_id="train_preset", scale=3)
        load_preset_button = gr.Button("Load preset", elem_id="train_load_preset", scale=1)
        preset_name = gr.Textbox(label="Save current settings as preset", elem_id="train_preset_name", scale=2)
        save_preset_button = gr.Button("Save preset", elem_id="train_save_preset", scale=1)
    preset_message = gr.Markdown(elem_id="train_preset_message")

    gr.Markdown("### Hyperparameters")
    accordions: dict[str, gr.Accordion] = {}
    for group, specs in HYPERPARAMETER_GROUPS.items():
        with gr.Accordion(group, open=False, visible=defaults.method in GROUP_METHODS.get(group, (defaults.method,)),
                          elem_id=GROUP_IDS[group]) as accordion:
            for start in range(0, len(specs), 4):
                with gr.Row():
                    for spec in specs[start:start + 4]:
                        fields[spec.name] = make_widget(spec, getattr(defaults, spec.name))
        accordions[group] = accordion

    gr.Markdown("### Run")
    with gr.Row():
        train = gr.Button("Train", variant="primary", elem_id="train_start")
        cancel = gr.Button("Cancel", elem_id="train_cancel")
        compare_epochs = gr.Button("Compare epochs in X/Y/Z plot", elem_id="train_compare_epochs")
    progress = gr.HTML(elem_id="train_progress")
    result = gr.Markdown(elem_id="train_result")
    with gr.Row():
        # A fixed color_map: without it the plot keeps the (empty) series list of its first render.
        loss_plot = gr.LinePlot(loss_frame(None), x="step", y="loss", color="series", title="Loss", label="Loss",
                                color_map=LOSS_COLORS, height=280, elem_id="train_loss_plot")
        samples = gr.Gallery(label="Latest samples", columns=4, height=280, object_fit="contain",
                             interactive=False, elem_id="train_samples")
    log = gr.Textbox(label="Log", lines=4, max_lines=12, interactive=False, elem_id="train_log")
    timer = gr.Timer(POLL_SECONDS, active=False)
    shown = gr.State({})

    gr.Markdown("### Share")
    with gr.Row():
        license_name = gr.Dropdown(label="License", choices=LICENSES, value=LICENSES[0], elem_id="train_license")
        include_epochs = gr.Checkbox(label="Include epoch files", value=False, elem_id="train_include_epochs")
        export = gr.Button("Export with model card", elem_id="train_export")
    export_message = gr.Markdown(elem_id="train_export_result")
    with gr.Row():
        repo_id = gr.Textbox(label="Hub repo id (user/name)", elem_id="train_hub_repo")
        token = gr.Textbox(label="Hugging Face token (write)", type="password", elem_id="train_hub_token")
        private = gr.Checkbox(label="Private", value=True, elem_id="train_hub_private")
        upload = gr.Button("Upload to the Hub", elem_id="train_hub_upload")
    upload_message = gr.Markdown(elem_id="train_hub_result")

    spec_names = [spec.name for spec in all_specs()]
    form_inputs = [method, output_name, base_checkpoint, dataset.dataset_dir] + [fields[name] for name in spec_names]
    form_names = list(JOB_WIDGET_FIELDS) + spec_names

    def form_values(*values: Any) -> TrainingConfig:
        """The form as a config, folders as typed (for presets, which leave the folders out)."""
        config = config_from_widgets(dict(zip(form_names, values)))
        if not config.base_checkpoint:  # nothing chosen: train on the loaded (or first) checkpoint
            config = config.replace(base_checkpoint=ctx.models.current_checkpoint_title() or next(iter(ctx.models.checkpoint_titles()), ""))
        return config

    def form_config(user: User, *values: Any) -> TrainingConfig:
        """The form as a config whose dataset and resume folders are confined to `user`'s folders."""
        return confine_config(ctx.training, form_values(*values), user)

    wire_dataset_section(ctx, dataset, output_name, form_inputs, form_config)

    # ---- method and presets ----
    method.change(lambda chosen: [gr.update(visible=chosen in GROUP_METHODS.get(group, (chosen,)))
                                  for group in accordions], inputs=method, outputs=list(accordions.values()))
    preset_fields = [name for name in spec_names if name not in JOB_FIELDS]
    specs_by_name = {spec.name: spec for spec in all_specs()}

    def apply_preset(name: str | None, request: gr.Request):
        if not name:
            raise gr.Error("Choose a preset to load.")
        try:
            config = load_preset(name, user_presets_folder(ctx.training, caller_of(request)))
        except ValueError as error:
            raise gr.Error(user_error(error)) from None
        values = [widget_value(specs_by_name[field], getattr(config, field)) for field in preset_fields]
        return [config.method] + values + [f"Loaded preset **{name}**."]

    def store_preset(request: gr.Request, name: str, *values: Any):
        """Save into the caller's own presets (training/users/<name>/presets for a plain user): nobody
        else's list changes, so replacing one's own preset needs no admin."""
        user = caller_of(request)
        name = (name or "").strip()
        try:
            config = form_values(*values)
            path = save_user_preset(config, user_presets_folder(ctx.training, user), name)
        except (ValueError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        return f"Saved preset **{path.stem}**.", gr.update(
            choices=preset_names(ctx.training, user, config.base_checkpoint), value=path.stem)

    load_preset_button.click(apply_preset, inputs=preset,
                             outputs=[method] + [fields[name] for name in preset_fields] + [preset_message])
    save_preset_button.click(store_preset, inputs=[preset_name] + form_inputs, outputs=[preset_message, preset])

    # ---- run ----
    run_outputs = [progress, result, loss_plot, samples, log, timer, shown]

    def render(seen: dict[str, Any], request: gr.Request) -> tuple:
        """The run's view as the caller may see it (another user's run only shows the trainer is busy);
        the loss plot and gallery are only re-sent when they changed since `seen`."""
        viewer = caller_of(request)
        monitor = visible_run(ctx.training, viewer)
        status = training_status(ctx.training, viewer)
        losses = (len(monitor.losses()), len(monitor.validation_losses())) if monitor is not None else (0, 0)
        sample_key = id(monitor.samples()) if monitor is not None and monitor.samples() else None
        now = {"run": id(monitor), "losses": losses, "samples": sample_key}
        same_run = seen.get("run") == now["run"]
        plot = gr.update() if same_run and seen.get("losses") == losses else loss_frame(monitor)
        gallery = gr.update() if same_run and seen.get("samples") == sample_key else sample_gallery(monitor)
        running = status["state"] in ("queued", "running", "busy")
        return (progress_html(status), result_markdown(status), plot, gallery, log_text(status),
                gr.Timer(active=running), now)

    def start(request: gr.Request, *values: Any):
        user = caller_of(request)
        try:
            config = form_config(user, *values)
            summary = dataset_summary_text(config.validate())
            start_training(ctx.training, config, user)
        except TrainingBusyError as error:
            raise gr.Error(str(error)) from None
        except (ValueError, LookupError, OSError, QueueFullError) as error:
            raise gr.Error(user_error(error)) from None
        return (summary,) + render({}, request)

    def stop(request: gr.Request) -> None:
        gr.Info(cancel_training(ctx.training, caller_of(request)))

    train.click(start, inputs=form_inputs, outputs=[dataset.summary] + run_outputs)
    cancel.click(stop, inputs=None, outputs=None)
    timer.tick(render, inputs=shown, outputs=run_outputs, show_progress="hidden")

    def reconnect(chosen: str | None, request: gr.Request):
        """Show the current or last run, poll while it runs, list models and presets added since."""
        titles = ctx.models.checkpoint_titles()
        if chosen not in titles:
            chosen = ctx.models.current_checkpoint_title() or next(iter(titles), None)
        user = caller_of(request)
        return render({}, request) + (gr.update(choices=titles, value=chosen),
                                      gr.update(choices=preset_names(ctx.training, user, chosen)),
                                      gr.update(info=resume_info(saved_states(ctx.training, user))))

    def presets_for_base(chosen: str | None, request: gr.Request):
        """Another base model may be another family (SD1, SDXL, SD3.5...): offer that family's presets."""
        return gr.update(choices=preset_names(ctx.training, caller_of(request), chosen), value=None)

    base_checkpoint.input(presets_for_base, inputs=base_checkpoint, outputs=preset, show_progress="hidden")

    reconnect_outputs = run_outputs + [base_checkpoint, preset, fields["resume_from"]]
    blocks.load(reconnect, inputs=base_checkpoint, outputs=reconnect_outputs, show_progress="hidden")
    # Opening the tab shows runs started meanwhile elsewhere (the API, another browser) and new models.
    tab.select(reconnect, inputs=base_checkpoint, outputs=reconnect_outputs, show_progress="hidden")

    # ---- share ----
    def export_files(license_value: str, epochs: bool, request: gr.Request) -> str:
        try:
            folder, card = export_run(ctx.training, license_value or LICENSES[0], bool(epochs), caller_of(request))
        except (ValueError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        names = ", ".join(f"`{path.name}`" for path in sorted(folder.iterdir()))
        return (f"Exported to `{folder}`: {names}. The model card is `{card.name}`. "
                f"API clients download the files from `/sdapi/v1/train/exports/{folder.name}/<file>`.")

    def upload_files(repo: str, hub_token: str, is_private: bool, license_value: str, epochs: bool,
                     request: gr.Request) -> str:
        require_admin(request, "Uploading to the Hub")
        try:
            folder, url = upload_run(ctx.training, repo, hub_token, private=bool(is_private),
                                     license_name=license_value or LICENSES[0], include_epochs=bool(epochs),
                                     viewer=caller_of(request))
        except (ValueError, LookupError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        return f"Uploaded `{folder.name}` to {url}"

    export.click(export_files, inputs=[license_name, include_epochs], outputs=export_message)
    upload.click(upload_files, inputs=[repo_id, token, private, license_name, include_epochs], outputs=upload_message)
    return TrainTab(method, output_name, base_checkpoint, dataset, fields, preset, train, cancel, compare_epochs,
                    progress, loss_plot, samples, result, timer)

