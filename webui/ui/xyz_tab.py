"""The X/Y/Z plot tab: a compact base request, three axes, the plot options, and the grid.

Generate only turns widget values into a request and three `AxisSpec`s and calls the X/Y/Z service's `submit`, which
checks every axis and cell first, so a typo becomes a message before anything runs. The running job is
kept in the session's state and polled by a `gr.Timer` ("Cell i of N") until the grid arrives.

Each axis's values textbox is what gets plotted; for axes with a list of choices, a multiselect and a
fill-all button (📒) write into that textbox, so typing, picking, pasting an infotext and the Train tab's
"Compare epochs" all end in the same place.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Txt2ImgRequest
from webui.jobs.progress import ProgressSnapshot
from webui.jobs.errors import QueueFullError
from webui.jobs.job import Job
from webui.ui.access import caller_of
from webui.errors import user_error
from webui.ui.generation_controls import queued_label, to_int
from webui.ui.infotext_fields import txt2img_values_from_infotext
from webui.xyz.axes import (
    NOTHING_LABEL,
    AxisOption,
    format_axis_value,
    match_ignoring_case,
)
from webui.xyz.service import XyzOptions, XyzRun, cell_progress, overall_fraction
from webui.xyz.plot import AxisSpec, parse_xyz_fields
from webui.xyz.ranges import AxisValueError, join_values, split_values

POLL_SECONDS = 0.5
FILL_ALL_ICON = "📒"
DEFAULT_AXES = {"x": "Seed", "y": NOTHING_LABEL, "z": NOTHING_LABEL}  # A1111's defaults
LORA_NAME_AXIS = "LoRA name"
LORA_WEIGHT_AXIS = "LoRA weight"


@dataclass
class AxisControls:
    """One axis row: type, values text (what is plotted), the choice picker and its fill-all button."""

    type: gr.Dropdown
    values: gr.Textbox
    picker: gr.Dropdown
    fill: gr.Button


@dataclass
class XyzTab:
    """The tab's components the rest of the UI fills (Train's "Compare epochs", PNG Info)."""

    prompt: gr.Textbox
    x_type: gr.Dropdown
    x_values: gr.Textbox
    y_type: gr.Dropdown
    y_values: gr.Textbox
    fill_epoch_comparison: Callable[[str, Sequence[str], Sequence[float]], list[Any]]
    z_type: gr.Dropdown
    z_values: gr.Textbox
    paste_text: gr.Textbox
    gallery: gr.Gallery
    infotext: gr.Textbox
    generate: gr.Button


def epoch_comparison_updates(prompt: str, lora_names: Sequence[str], weights: Sequence[float]) -> list[Any]:
    """Updates for prompt, x_type, x_values, y_type, y_values: X = LoRA name over the epoch files,
    Y = LoRA weight. The LoRA name axis adds the `<lora:...>` tag when the prompt has none."""
    names = [str(name).strip() for name in lora_names if str(name).strip()]
    if not names:
        raise gr.Error("There are no saved epochs to compare yet.")
    if not weights:
        raise gr.Error("Give at least one LoRA weight to compare.")
    weight_text = join_values(format_axis_value(float(weight)) for weight in weights)
    return [
        gr.update(value=prompt),
        gr.update(value=LORA_NAME_AXIS),
        gr.update(value=join_values(names)),
        gr.update(value=LORA_WEIGHT_AXIS),
        gr.update(value=weight_text),
    ]


def progress_html(snapshot: ProgressSnapshot, position: int | None = None) -> str:
    """A bar over the whole plot, labelled with the cell and the step of the running image."""
    percent = int(overall_fraction(snapshot) * 100)
    cells = cell_progress(snapshot)
    if snapshot.state == "queued":
        label = queued_label(position)
    elif cells is None:
        label = snapshot.message or "Starting..."
    else:
        label = f"Cell {cells[0]} of {cells[1]}, step {snapshot.step}/{snapshot.total_steps}"
    return (
        f'<div class="sd-progress" data-percent="{percent}">'
        f'<div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<span class="sd-progress-text">{percent}% - {html.escape(label)}</span></div>'
    )


def done_html(run: XyzRun) -> str:
    result = run.result
    note = " (interrupted)" if run.interrupted else ""
    warnings = "".join(f'<div class="sd-warning">⚠️ {html.escape(warning)}</div>' for warning in run.warnings)
    return (
        f'<div class="sd-progress-done">Done: {result.completed_cells} of {result.plan.cell_count} cells{note}'
        f"</div>{warnings}"
    )


def axis_picker_updates(option: AxisOption, values_text: str, choices: Sequence[str]) -> tuple[Any, Any]:
    """Picker and fill-button updates for an axis: shown only for axes with choices, the picker holding
    the typed values it recognises (a half-typed list must not raise here)."""
    if option.choices is None or option.is_nothing:
        return gr.update(visible=False, choices=[], value=[]), gr.update(visible=False)
    matcher = option.match_choice or match_ignoring_case
    try:
        typed = split_values(values_text or "", option.label)
    except AxisValueError:
        typed = []
    selected: list[str] = []
    for item in typed:
        match = matcher(item, choices)
        if match is not None and match not in selected:
            selected.append(match)
    return gr.update(visible=True, choices=list(choices), value=selected), gr.update(visible=True)


def build_xyz_tab(
    ctx: AppContext,
    default_size: int,
    vae: gr.Dropdown | None = None,
    blocks: gr.Blocks | None = None,
) -> XyzTab:
    """Build the tab; `vae` is the quicksettings VAE dropdown (used like txt2img). The axes are the X/Y/Z
    service's table (the one its jobs plan with; extensions add rows to it). With `blocks`, a page that
    closes stops the plot it started (gradio's `unload`), as a closed txt2img page stops its generation."""
    axes_registry = ctx.xyz.registry
    labels = axes_registry.labels()

    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt", elem_id="xyz_prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="xyz_neg_prompt")
        with gr.Column(scale=1, min_width=220):
            generate = gr.Button("Generate", variant="primary", elem_id="xyz_generate")
            interrupt = gr.Button("Interrupt", size="sm", elem_id="xyz_interrupt")

    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                sampler_name = gr.Dropdown(label="Sampling method", choices=ctx.generation.sampler_names(), value="DPM++ 2M",
                                           elem_id="xyz_sampling")
                steps = gr.Slider(label="Sampling steps", minimum=1, maximum=ctx.limits.max_steps, step=1, value=20,
                                  elem_id="xyz_steps")
            with gr.Row():
                width = gr.Slider(label="Width", minimum=64, maximum=ctx.limits.max_side, step=8, value=default_size,
                                  elem_id="xyz_width")
                height = gr.Slider(label="Height", minimum=64, maximum=ctx.limits.max_side, step=8,
                                   value=default_size, elem_id="xyz_height")
            with gr.Row():
                cfg_scale = gr.Slider(label="CFG Scale", minimum=1.0, maximum=30.0, step=0.5, value=7.0,
                                      elem_id="xyz_cfg_scale")
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="xyz_seed")

            axes: dict[str, AxisControls] = {}
            for name in ("x", "y", "z"):
                with gr.Row(equal_height=True):
                    axis_type = gr.Dropdown(label=f"{name.upper()} type", choices=labels, value=DEFAULT_AXES[name],
                                            elem_id=f"xyz_{name}_type", scale=1, min_width=160)
                    axis_values = gr.Textbox(label=f"{name.upper()} values", lines=1, elem_id=f"xyz_{name}_values",
                                             scale=3)
                    picker = gr.Dropdown(label=f"{name.upper()} choices", choices=[], multiselect=True, visible=False,
                                         elem_id=f"xyz_{name}_picker", scale=3)
                    fill = gr.Button(FILL_ALL_ICON, visible=False, elem_id=f"xyz_{name}_fill", scale=0, min_width=44)
                axes[name] = AxisControls(axis_type, axis_values, picker, fill)

            with gr.Row():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id="xyz_draw_legend")
                keep_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id="xyz_keep_seeds")
                include_sub_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                 elem_id="xyz_include_sub_images")
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id="xyz_include_sub_grids")
            margin = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, step=2, value=0, elem_id="xyz_margin")
            with gr.Accordion("Paste parameters", open=False):
                paste_text = gr.Textbox(label="Infotext of an X/Y/Z grid (from PNG Info)", lines=3,
                                        elem_id="xyz_paste_text")
                paste = gr.Button("↙️ Restore axes", size="sm", elem_id="xyz_paste")
        with gr.Column(scale=1):
            progress = gr.HTML(elem_id="xyz_progress")
            gallery = gr.Gallery(label="Output", columns=2, object_fit="contain", height=512, format="png",
                                 elem_id="xyz_gallery", interactive=False)
            infotext = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="xyz_infotext")

    job_state = gr.State(None)
    infotexts_state = gr.State([])
    plots_by_page: dict[str, Job] = {}  # gradio session -> its running plot, for `unload`
    timer = gr.Timer(POLL_SECONDS, active=False)

    # ---- axis rows: the picker and fill-all button follow the axis type and the typed values ----
    def option_for(label: str) -> AxisOption:
        try:
            return axes_registry.get(label or NOTHING_LABEL)
        except AxisValueError as error:
            raise gr.Error(user_error(error)) from None

    def choices_for(option: AxisOption) -> list[str]:
        return list(option.choices(ctx.xyz.axis_choices())) if option.choices is not None else []

    def sync_picker(label: str, values_text: str) -> tuple[Any, Any]:
        option = option_for(label)
        return axis_picker_updates(option, values_text, choices_for(option))

    def fill_all(label: str) -> tuple[Any, Any]:
        choices = choices_for(option_for(label))
        return gr.update(value=join_values(choices)), gr.update(choices=choices, value=choices)

    for controls in axes.values():
        controls.type.change(sync_picker, inputs=[controls.type, controls.values],
                             outputs=[controls.picker, controls.fill], show_progress="hidden")
        controls.values.change(sync_picker, inputs=[controls.type, controls.values],
                               outputs=[controls.picker, controls.fill], show_progress="hidden")
        controls.picker.input(lambda picked: join_values(str(item) for item in picked or []),
                              inputs=controls.picker, outputs=controls.values, show_progress="hidden")
        controls.fill.click(fill_all, inputs=controls.type, outputs=[controls.values, controls.picker])

    # ---- generate, poll, interrupt ----
    axis_inputs = [component for controls in axes.values() for component in (controls.type, controls.values)]
    option_inputs = [draw_legend, keep_seeds, include_sub_images, include_sub_grids, margin]
    # Named as in infotext_fields.TXT2IMG_FIELDS, so a pasted infotext maps onto them by name.
    base_fields: dict[str, gr.components.Component] = {
        "prompt": prompt, "negative_prompt": negative_prompt, "sampler_name": sampler_name, "steps": steps,
        "cfg_scale": cfg_scale, "width": width, "height": height, "seed": seed,
    }
    base_inputs = list(base_fields.values())

    def start_plot(request: gr.Request, *values: Any) -> tuple[Any, ...]:
        owner = caller_of(request)
        (prompt_text, negative_text, sampler, step_count, cfg, image_width, image_height, seed_value) = values[:8]
        axis_values = values[8:14]
        legend, keep, sub_images, sub_grids, margin_px = values[14:19]
        vae_name = values[19] if vae is not None else "Automatic"
        try:
            plot_request = Txt2ImgRequest(
                prompt=prompt_text or "", negative_prompt=negative_text or "", sampler_name=sampler or "DPM++ 2M",
                steps=to_int(step_count, "Sampling steps"), cfg_scale=float(cfg), width=to_int(image_width, "Width"),
                height=to_int(image_height, "Height"), seed=to_int(seed_value, "Seed"), vae=vae_name or "Automatic",
            )
            specs = [AxisSpec(axis_values[i] or NOTHING_LABEL, axis_values[i + 1] or "") for i in (0, 2, 4)]
            options = XyzOptions(draw_legend=bool(legend), keep_seeds=bool(keep), include_sub_images=bool(sub_images),
                                 include_sub_grids=bool(sub_grids), margin=to_int(margin_px, "Grid margins"))
            job = ctx.xyz.submit(plot_request, *specs, options, owner=owner)
        except (ValueError, LookupError, QueueFullError) as error:
            raise gr.Error(user_error(error)) from None
        if request.session_hash:
            plots_by_page[request.session_hash] = job
        return job, gr.Timer(active=True), progress_html(job.control.snapshot(), ctx.scheduler.position(job.job_id))

    def poll(job: Job | None, request: gr.Request) -> tuple[Any, ...]:
        unchanged = (gr.update(), gr.update(), gr.update())
        if job is None:
            return (None, gr.Timer(active=False), gr.update(), *unchanged)
        if not job.done:
            return (job, gr.update(), progress_html(job.control.snapshot(), ctx.scheduler.position(job.job_id)), *unchanged)
        plots_by_page.pop(request.session_hash or "", None)
        try:
            run: XyzRun = job.result()
        except Exception as error:  # shown to the user; the worker and the server keep running
            message = user_error(error)
            gr.Warning(message)
            failed = f'<div class="sd-progress-done">Failed: {html.escape(message)}</div>'
            return (None, gr.Timer(active=False), failed, *unchanged)
        return (None, gr.Timer(active=False), done_html(run), run.images, run.infotext, run.infotexts)

    def stop(job: Job | None) -> None:
        if job is not None and not job.done:
            job.control.interrupt()

    inputs = base_inputs + axis_inputs + option_inputs + ([vae] if vae is not None else [])
    generate.click(start_plot, inputs=inputs, outputs=[job_state, timer, progress])
    timer.tick(poll, inputs=job_state, outputs=[job_state, timer, progress, gallery, infotext, infotexts_state],
               show_progress="hidden")
    interrupt.click(stop, inputs=job_state, outputs=None)

    def stop_abandoned_plot(request: gr.Request) -> None:
        """The page closed: nobody will see the plot, so a waiting one is dropped, a running one stopped."""
        job = plots_by_page.pop(request.session_hash or "", None)
        if job is not None and not job.done and caller_of(request).may_act_on(job.owner):
            ctx.scheduler.stop(job.job_id)

    if blocks is not None:
        blocks.unload(stop_abandoned_plot)

    def show_selected(texts: list[str], event: gr.SelectData) -> str:
        return texts[event.index] if texts and 0 <= event.index < len(texts) else ""

    gallery.select(show_selected, inputs=infotexts_state, outputs=infotext)

    # ---- paste an infotext: axes and the base request come back ----
    def restore_from_infotext(text: str) -> list[Any]:
        params = parse_infotext(text or "")
        specs = parse_xyz_fields(params)
        if not specs:
            raise gr.Error("This text holds no X/Y/Z plot parameters (X Type / X Values): paste a grid's infotext.")
        for spec in specs.values():
            option_for(spec.label)  # an axis from an extension that is not installed: say so
        base = txt2img_values_from_infotext(text)
        base_updates = [gr.update(value=base[name]) if name in base else gr.update() for name in base_fields]
        axis_updates: list[Any] = []
        for name in ("x", "y", "z"):
            spec = specs[name]
            axis_updates += [gr.update(value=spec.label), gr.update(value=spec.values_text)]
        return base_updates + axis_updates

    paste.click(restore_from_infotext, inputs=paste_text, outputs=base_inputs + axis_inputs)

    return XyzTab(
        prompt=prompt,
        x_type=axes["x"].type,
        x_values=axes["x"].values,
        y_type=axes["y"].type,
        y_values=axes["y"].values,
        fill_epoch_comparison=epoch_comparison_updates,
        z_type=axes["z"].type,
        z_values=axes["z"].values,
        paste_text=paste_text,
        gallery=gallery,
        infotext=infotext,
        generate=generate,
    )
