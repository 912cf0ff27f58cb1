"""Controls txt2img and img2img share (A1111 lays both tabs out the same way): prompt area, sampling
parameters, output gallery, and the Generate handler that queues a request and streams its progress.

Every builder takes the tab's prefix ("txt2img" / "img2img"), which becomes the elem_id prefix, as in A1111.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from webui.context import AppContext
from webui.generation.family_fields import FAMILY_FIELDS, shown_fields
from webui.generation.requests import DEFAULT_DISTILLED_CFG_SCALE, MAX_DISTILLED_CFG_SCALE, MAX_SHIFT
from webui.generation.samplers import schedule_types_for
from webui.models.families import DEFAULT_FAMILY
from webui.jobs.progress import ProgressSnapshot
from webui.jobs.errors import QueueFullError
from webui.jobs.job import Job
from webui.security.identity import User
from webui.ui.access import caller_of
from webui.errors import user_error
from webui.ui.extra_networks import build_extra_networks
from webui.ui.infotext_fields import tab_fields, txt2img_values_from_infotext
from webui.xyz.axes import default_axis_registry
from webui.xyz.service import XyzOptions, XyzRun
from webui.xyz.plot import AxisSpec

POLL_SECONDS = 0.25
AUTOMATIC_SHIFT = 0.0  # the Shift slider's "the model's own schedule" (a request's shift None)
FAMILY_CONTROLS = tuple(FAMILY_FIELDS)  # request fields whose controls depend on the checkpoint's family


@dataclass
class GenerationControls:
    """A tab's components by request field name, plus the output widgets "send to" buttons read."""

    prefix: str
    fields: dict[str, gr.components.Component]
    gallery: gr.Gallery
    infotext: gr.Textbox
    generate: gr.Button
    styles: gr.Dropdown
    selected: gr.State  # index of the gallery image the user clicked (0 by default)
    images: gr.State    # the PIL images shown, in gallery order
    send: dict[str, gr.Button] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # control name -> (infotext key, converter): what pasting parameters restores (webui.ui.infotext_fields)
    paste_fields: dict[str, Any] = field(default_factory=dict)


GENERATE_LABEL = "Generate"


def queued_label(position: int | None) -> str:
    """What a waiting job's bar says: its place in the queue (1 = next)."""
    return f"Queued, position {position}..." if position else "Waiting for a worker..."


def generate_button_label(snapshot: ProgressSnapshot, position: int | None) -> str:
    """The Generate button while the user's job waits: "Queued, position 3"; "Generate" otherwise."""
    return f"Queued, position {position}" if snapshot.state == "queued" and position else GENERATE_LABEL


def progress_html(snapshot: ProgressSnapshot, position: int | None = None) -> str:
    """A1111-style bar: percentage, step, batch and ETA; a waiting job shows its place in the queue."""
    percent = int(snapshot.fraction * 100)
    eta = f", ETA {snapshot.eta_seconds:.0f}s" if snapshot.eta_seconds is not None else ""
    batch = f" (batch {snapshot.batch_index + 1}/{snapshot.batch_count})" if snapshot.batch_count > 1 else ""
    label = queued_label(position) if snapshot.state == "queued" else (
        snapshot.message or f"Step {snapshot.step}/{snapshot.total_steps}{batch}{eta}"
    )
    return (
        f'<div class="sd-progress" data-percent="{percent}">'
        f'<div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<span class="sd-progress-text">{percent}% - {html.escape(label)}</span></div>'
    )


@dataclass
class PromptArea:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    styles: gr.Dropdown


def build_prompt_area(ctx: AppContext, prefix: str, checkpoint: gr.Dropdown | None,
                      initial_prompt: str = "") -> PromptArea:
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt", value=initial_prompt,
                                elem_id=f"{prefix}_prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
            build_extra_networks(ctx, prompt, checkpoint, prefix=prefix)
        with gr.Column(scale=1, min_width=220):
            generate = gr.Button(GENERATE_LABEL, variant="primary", elem_id=f"{prefix}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip", size="sm")
            with gr.Row():
                paste = gr.Button("↙️ Read parameters from prompt", size="sm", elem_id=f"{prefix}_paste")
            styles = gr.Dropdown(label="Styles", choices=ctx.styles.names(), multiselect=True, elem_id=f"{prefix}_styles")
            refresh_styles = gr.Button("🔄 Refresh styles", size="sm")
    refresh_styles.click(lambda: gr.update(choices=ctx.styles.names()), inputs=None, outputs=styles)

    def interrupt_own(request: gr.Request) -> None:
        """Stop the running job if it is the caller's (an admin may stop anyone's)."""
        if not ctx.scheduler.interrupt_current(caller_of(request).may_act_on) and ctx.scheduler.current is not None:
            gr.Warning("The running job belongs to another user; only they or an admin can stop it.")

    def skip_own(request: gr.Request) -> None:
        if not ctx.scheduler.skip_current(caller_of(request).may_act_on) and ctx.scheduler.current is not None:
            gr.Warning("The running job belongs to another user; only they or an admin can skip it.")

    interrupt.click(interrupt_own, inputs=None, outputs=None)
    skip.click(skip_own, inputs=None, outputs=None)
    return PromptArea(prompt, negative_prompt, generate, interrupt, skip, paste, styles)


def build_sampling_controls(ctx: AppContext, prefix: str, default_size: int) -> dict[str, gr.components.Component]:
    """Sampler, schedule, steps, size, batch, CFG, seed and the "Extra" seed options."""
    with gr.Row():
        sampler_name = gr.Dropdown(label="Sampling method", choices=ctx.generation.sampler_names(), value="DPM++ 2M",
                                   elem_id=f"{prefix}_sampling")
        scheduler = gr.Dropdown(label="Schedule type", choices=schedule_types_for("DPM++ 2M"), value="Automatic",
                                elem_id=f"{prefix}_scheduler")
    steps = gr.Slider(label="Sampling steps", minimum=1, maximum=ctx.limits.max_steps, step=1, value=20,
                      elem_id=f"{prefix}_steps")
    with gr.Row():
        width = gr.Slider(label="Width", minimum=64, maximum=ctx.limits.max_side, step=8, value=default_size,
                          elem_id=f"{prefix}_width")
        height = gr.Slider(label="Height", minimum=64, maximum=ctx.limits.max_side, step=8, value=default_size,
                           elem_id=f"{prefix}_height")
    with gr.Row():
        batch_count = gr.Slider(label="Batch count", minimum=1, maximum=ctx.limits.max_images, step=1, value=1,
                                elem_id=f"{prefix}_batch_count")
        batch_size = gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1, elem_id=f"{prefix}_batch_size")
    cfg_scale = gr.Slider(label="CFG Scale", minimum=1.0, maximum=30.0, step=0.5, value=7.0, elem_id=f"{prefix}_cfg_scale")
    shown = family_controls_shown(ctx, None)
    # Shown for the families that use them (see `family_control_updates`), as Forge does.
    distilled_cfg_scale = gr.Slider(label="Distilled CFG Scale", minimum=0.0, maximum=MAX_DISTILLED_CFG_SCALE,
                                    step=0.1, value=DEFAULT_DISTILLED_CFG_SCALE, visible=shown["distilled_cfg_scale"],
                                    elem_id=f"{prefix}_distilled_cfg_scale")
    shift = gr.Slider(label="Shift", minimum=AUTOMATIC_SHIFT, maximum=MAX_SHIFT, step=0.05,
                      value=default_shift_value(ctx, None), info="0 = the model's own (resolution-dependent) schedule",
                      visible=shown["shift"], elem_id=f"{prefix}_shift")
    with gr.Row():
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{prefix}_seed")
        random_seed = gr.Button("🎲️", size="sm", elem_id=f"{prefix}_random_seed", min_width=40)
        reuse_seed = gr.Button("♻️", size="sm", elem_id=f"{prefix}_reuse_seed", min_width=40)
    with gr.Accordion("Extra", open=False, elem_id=f"{prefix}_extra_options"):
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{prefix}_subseed")
            subseed_strength = gr.Slider(label="Variation strength", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                                         elem_id=f"{prefix}_subseed_strength")
        clip_skip = gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1, visible=shown["clip_skip"],
                              elem_id=f"{prefix}_clip_skip")

    def schedules_for_sampler(sampler: str, current: str):
        choices = ctx.generation.schedule_types_for(sampler)
        return gr.update(choices=choices, value=current if current in choices else "Automatic")

    sampler_name.change(schedules_for_sampler, inputs=[sampler_name, scheduler], outputs=scheduler)
    random_seed.click(lambda: -1, inputs=None, outputs=seed)
    fields = {"steps": steps, "sampler_name": sampler_name, "scheduler": scheduler, "cfg_scale": cfg_scale,
              "distilled_cfg_scale": distilled_cfg_scale, "shift": shift,
              "seed": seed, "width": width, "height": height, "subseed": subseed, "subseed_strength": subseed_strength,
              "clip_skip": clip_skip, "batch_count": batch_count, "batch_size": batch_size}
    fields["_reuse_seed"] = reuse_seed  # wired once the output area exists
    return fields


def family_controls_shown(ctx: AppContext, checkpoint: str | None) -> dict[str, bool]:
    """Which family-dependent controls the checkpoint's family uses (None: the current checkpoint; one that
    cannot be classified counts as the default family, as loading assumes)."""
    return shown_fields(ctx.models.family_of(checkpoint) or DEFAULT_FAMILY)


def default_shift_value(ctx: AppContext, checkpoint: str | None) -> float:
    """The Shift slider's value for a checkpoint: its scheduler config's fixed shift; 0 ("the model's own")
    for models whose shift depends on the image size and for families without one (the slider is hidden)."""
    shift = ctx.models.default_shift(checkpoint)
    return shift if shift is not None else AUTOMATIC_SHIFT


def family_control_updates(ctx: AppContext, checkpoint: str | None, names: list[str]) -> list[Any]:
    """Updates for the named controls when the checkpoint changes: each family-dependent control is shown
    only for families that use it, and Shift takes the new model's default."""
    shown = family_controls_shown(ctx, checkpoint)
    shift = default_shift_value(ctx, checkpoint)
    return [gr.update(visible=shown[name], **({"value": shift} if name == "shift" else {})) for name in names]


@dataclass
class OutputArea:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.Textbox
    send: dict[str, gr.Button]  # target tab -> "Send to" button (wired by app_ui, which knows every tab)


SEND_TARGETS = {"img2img": "🖼️ Send to img2img", "inpaint": "🎨 Send to inpaint", "extras": "📐 Send to extras",
                "txt2img": "📝 Send to txt2img"}


def build_output_area(prefix: str) -> OutputArea:
    progress = gr.HTML(elem_id=f"{prefix}_progress")
    preview = gr.Image(label="Live preview", type="pil", interactive=False, height=160, elem_id=f"{prefix}_preview")
    gallery = gr.Gallery(label="Output", columns=2, object_fit="contain", height=512, elem_id=f"{prefix}_gallery",
                         interactive=False)
    with gr.Row(elem_id=f"{prefix}_send_buttons"):
        send = {target: gr.Button(label, size="sm", elem_id=f"{prefix}_send_to_{target}")
                for target, label in SEND_TARGETS.items() if target != prefix}
    infotext = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{prefix}_infotext")
    return OutputArea(progress, preview, gallery, infotext, send)


def request_values(named: dict[str, Any], style_names: tuple[str, ...], vae_name: str | None) -> dict[str, Any]:
    """Widget values -> the request fields every generation request shares (bad numbers raise ValueError)."""
    return dict(
        prompt=named["prompt"] or "", negative_prompt=named["negative_prompt"] or "", styles=style_names,
        steps=to_int(named["steps"], "Sampling steps"), sampler_name=named["sampler_name"],
        scheduler=named["scheduler"], cfg_scale=float(named["cfg_scale"]),
        distilled_cfg_scale=to_float(named["distilled_cfg_scale"], "Distilled CFG Scale"),
        shift=shift_of(to_float(named["shift"], "Shift")), width=to_int(named["width"], "Width"),
        height=to_int(named["height"], "Height"), seed=to_int(named["seed"], "Seed"),
        subseed=to_int(named["subseed"], "Variation seed"), subseed_strength=float(named["subseed_strength"]),
        batch_count=to_int(named["batch_count"], "Batch count"), batch_size=to_int(named["batch_size"], "Batch size"),
        clip_skip=to_int(named["clip_skip"], "Clip skip"), vae=vae_name or "Automatic",
    )


def wire_generation(ctx: AppContext, prefix: str, prompt_area: PromptArea, fields: dict[str, Any], output: OutputArea,
                    vae: gr.Dropdown | None, submit: Callable[[dict[str, Any], User], Job],
                    extra_inputs: dict[str, gr.components.Component] | None = None,
                    paste_fields: dict[str, Any] | None = None) -> GenerationControls:
    """Generate/paste/seed/gallery wiring; `submit(values, owner)` turns named widget values into a job
    queued for the signed-in `owner` (a `User`: the role decides where its images are saved); `paste_fields`
    adds the tab's own infotext fields (its scripts' controls) to what pasting parameters restores."""
    reuse_seed = fields.pop("_reuse_seed")
    fields = {"prompt": prompt_area.prompt, "negative_prompt": prompt_area.negative_prompt, **fields}
    extra_inputs = extra_inputs or {}
    names = list(fields) + list(extra_inputs)
    infotexts_state, seeds_state = gr.State([]), gr.State([])
    images_state, selected_state = gr.State([]), gr.State(0)

    def run_generation(request: gr.Request, *values: Any) -> Iterator[tuple]:
        owner = caller_of(request)
        named = dict(zip(names, values))
        named["styles"] = tuple(values[len(names)] or ())
        named["vae"] = values[len(names) + 1] if vae is not None else "Automatic"
        try:
            job = submit(named, owner)
        except (ValueError, LookupError, QueueFullError) as error:
            raise gr.Error(user_error(error)) from None
        shown_preview = -1
        reset_button = gr.update(value=GENERATE_LABEL)
        try:
            while not job.wait(POLL_SECONDS):
                snapshot = job.control.snapshot()
                position = ctx.scheduler.position(job.job_id)
                preview_update = gr.update()
                if snapshot.preview is not None and snapshot.preview_serial != shown_preview:
                    shown_preview = snapshot.preview_serial
                    preview_update = snapshot.preview
                yield ((gr.update(),) * 2 + (progress_html(snapshot, position), preview_update) + (gr.update(),) * 4
                       + (gr.update(value=generate_button_label(snapshot, position)),))
        finally:
            # gradio closes this generator (GeneratorExit at the yield) when the event is cancelled: the
            # browser tab went away or its Stop was pressed. Nobody will see the images, so a job still
            # waiting is dropped and a running one interrupted, as the API does for a client that left.
            if not job.done:
                ctx.scheduler.stop(job.job_id)
        try:
            result = job.result()
        except Exception as error:  # shown to the user; the worker and server keep running
            yield (gr.update(),) * 8 + (reset_button,)
            raise gr.Error(user_error(error)) from None
        note = " (interrupted)" if result.interrupted else ""
        warnings = "".join(f'<div class="sd-warning">⚠️ {html.escape(w)}</div>' for w in result.warnings)
        if isinstance(result, XyzRun):  # the X/Y/Z plot script: grid first, then what was asked for
            images, texts, seeds = result.images, result.infotexts, []
            summary = f"X/Y/Z plot: {result.result.completed_cells} cell(s)"
        else:
            images = ([result.grid] if result.grid is not None else []) + result.images
            texts = ([result.infotexts[0]] if result.grid is not None else []) + result.infotexts
            seeds, summary = result.seeds, f"{len(result.images)} image(s)"
        done = f'<div class="sd-progress-done">Done: {summary}{note}</div>{warnings}'
        yield images, (texts[0] if texts else ""), done, None, texts, seeds, images, 0, reset_button

    inputs = [fields[name] for name in fields] + list(extra_inputs.values()) + [prompt_area.styles] + (
        [vae] if vae is not None else [])
    outputs = [output.gallery, output.infotext, output.progress, output.preview, infotexts_state, seeds_state,
               images_state, selected_state, prompt_area.generate]
    prompt_area.generate.click(run_generation, inputs=inputs, outputs=outputs, api_name=prefix)
    prompt_area.prompt.submit(run_generation, inputs=inputs, outputs=outputs)
    reuse_seed.click(lambda seeds: (seeds[0] if seeds else -1), inputs=seeds_state, outputs=fields["seed"])

    def show_selected(texts: list[str], event: gr.SelectData) -> tuple[str, int]:
        index = event.index if texts and 0 <= event.index < len(texts) else 0
        return (texts[index] if texts else ""), index

    output.gallery.select(show_selected, inputs=infotexts_state, outputs=[output.infotext, selected_state])

    table = {name: entry for name, entry in tab_fields(paste_fields).items() if name in fields or name in extra_inputs}
    pastable = list(table)
    all_fields = {**fields, **extra_inputs}

    def paste_from_prompt(text: str) -> list:
        if "Steps" not in (text or ""):
            raise gr.Error("The prompt box holds no generation parameters to read (paste an A1111 infotext first).")
        values = txt2img_values_from_infotext(text or "", table)
        return [values.get(name, gr.update()) for name in pastable]

    prompt_area.paste.click(paste_from_prompt, inputs=prompt_area.prompt, outputs=[all_fields[n] for n in pastable])
    return GenerationControls(prefix, all_fields, output.gallery, output.infotext, prompt_area.generate,
                              prompt_area.styles, selected_state, images_state, output.send, paste_fields=table)


XYZ_SCRIPT = "X/Y/Z plot"


def build_xyz_script_controls(prefix: str, labels: list[str] | None = None) -> tuple[gr.Group, dict[str, gr.components.Component]]:
    """A1111's X/Y/Z plot as a script inside a generation tab: three axis rows and the main options
    (`labels`: the app's axis table, extensions' axes included)."""
    labels = labels if labels is not None else default_axis_registry().labels()
    controls: dict[str, gr.components.Component] = {}
    with gr.Group(visible=False, elem_id=f"{prefix}_script_xyz") as group:
        for axis in ("x", "y", "z"):
            with gr.Row():
                controls[f"xyz_{axis}_type"] = gr.Dropdown(label=f"{axis.upper()} type", choices=labels,
                                                          value="Nothing", elem_id=f"{prefix}_script_xyz_{axis}_type")
                controls[f"xyz_{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", scale=3,
                                                            elem_id=f"{prefix}_script_xyz_{axis}_values")
        with gr.Row():
            controls["xyz_draw_legend"] = gr.Checkbox(label="Draw legend", value=True)
            controls["xyz_keep_seeds"] = gr.Checkbox(label="Keep -1 for seeds", value=False)
            controls["xyz_sub_images"] = gr.Checkbox(label="Include Sub Images", value=False)
    return group, controls


def submit_xyz_script(ctx: AppContext, request: Any, named: dict[str, Any], owner: User) -> Job:
    """Run the tab's request as the base of an X/Y/Z plot (validated before anything is queued)."""
    def spec(axis: str) -> AxisSpec:
        return AxisSpec(label=named[f"xyz_{axis}_type"] or "Nothing", values_text=named[f"xyz_{axis}_values"] or "")

    options = XyzOptions(draw_legend=bool(named["xyz_draw_legend"]), keep_seeds=bool(named["xyz_keep_seeds"]),
                         include_sub_images=bool(named["xyz_sub_images"]))
    return ctx.xyz.submit(request, spec("x"), spec("y"), spec("z"), options, owner=owner)


def shift_of(slider_value: float) -> float | None:
    """The Shift slider's value as a request's shift: None (the model's own schedule) for its 0."""
    return None if slider_value == AUTOMATIC_SHIFT else slider_value


def to_float(value: Any, label: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {value!r}") from None


def to_int(value: Any, label: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {value!r}") from None
    if number != int(number):
        raise ValueError(f"{label} must be a whole number, got {value!r}")
    return int(number)
