"""The txt2img tab: A1111's layout over `AppContext.submit_txt2img`.

The Generate handler only turns widget values into a `Txt2ImgRequest`, queues it, and streams the
job's progress (bar, ETA, live preview) until the images arrive. Errors a user can fix become
`gr.Error` messages; the server keeps running.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.generation.requests import Txt2ImgRequest
from webui.generation.samplers import sampler_names, schedule_types_for
from webui.jobs.progress import ProgressSnapshot
from webui.ui.errors import user_error
from webui.ui.extra_networks import build_extra_networks
from webui.ui.infotext_fields import TXT2IMG_FIELDS, txt2img_values_from_infotext

POLL_SECONDS = 0.25


@dataclass
class Txt2ImgControls:
    """The tab's components, by request field name, for wiring "send to" and paste buttons."""

    fields: dict[str, gr.components.Component]
    gallery: gr.Gallery
    infotext: gr.Textbox


def progress_html(snapshot: ProgressSnapshot) -> str:
    """A1111-style bar: percentage, step, batch and ETA."""
    percent = int(snapshot.fraction * 100)
    eta = f", ETA {snapshot.eta_seconds:.0f}s" if snapshot.eta_seconds is not None else ""
    batch = f" (batch {snapshot.batch_index + 1}/{snapshot.batch_count})" if snapshot.batch_count > 1 else ""
    label = "Waiting for the GPU worker..." if snapshot.state == "queued" else (
        f"Step {snapshot.step}/{snapshot.total_steps}{batch}{eta}"
    )
    return (
        f'<div class="sd-progress" data-percent="{percent}">'
        f'<div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<span class="sd-progress-text">{percent}% - {html.escape(label)}</span></div>'
    )


def build_txt2img_tab(ctx: AppContext, default_size: int, checkpoint: gr.Dropdown | None = None,
                      vae: gr.Dropdown | None = None) -> Txt2ImgControls:
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt",
                                elem_id="txt2img_prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            build_extra_networks(ctx, prompt, checkpoint)
        with gr.Column(scale=1, min_width=220):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="txt2img_skip", size="sm")
            with gr.Row():
                paste = gr.Button("↙️ Read parameters from prompt", size="sm", elem_id="txt2img_paste")
            styles = gr.Dropdown(label="Styles", choices=ctx.styles.names(), multiselect=True, elem_id="txt2img_styles")
            refresh_styles = gr.Button("🔄 Refresh styles", size="sm")

    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                sampler_name = gr.Dropdown(label="Sampling method", choices=sampler_names(), value="DPM++ 2M",
                                           elem_id="txt2img_sampling")
                scheduler = gr.Dropdown(label="Schedule type", choices=schedule_types_for("DPM++ 2M"), value="Automatic",
                                        elem_id="txt2img_scheduler")
            steps = gr.Slider(label="Sampling steps", minimum=1, maximum=ctx.limits.max_steps, step=1, value=20,
                              elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(label="Width", minimum=64, maximum=ctx.limits.max_side, step=8, value=default_size,
                                  elem_id="txt2img_width")
                height = gr.Slider(label="Height", minimum=64, maximum=ctx.limits.max_side, step=8, value=default_size,
                                   elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(label="Batch count", minimum=1, maximum=ctx.limits.max_images, step=1, value=1,
                                        elem_id="txt2img_batch_count")
                batch_size = gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1,
                                       elem_id="txt2img_batch_size")
            cfg_scale = gr.Slider(label="CFG Scale", minimum=1.0, maximum=30.0, step=0.5, value=7.0,
                                  elem_id="txt2img_cfg_scale")
            with gr.Row():
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed")
                random_seed = gr.Button("🎲️", size="sm", elem_id="txt2img_random_seed", min_width=40)
                reuse_seed = gr.Button("♻️", size="sm", elem_id="txt2img_reuse_seed", min_width=40)
            with gr.Accordion("Extra", open=False):
                with gr.Row():
                    subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id="txt2img_subseed")
                    subseed_strength = gr.Slider(label="Variation strength", minimum=0.0, maximum=1.0, step=0.01,
                                                 value=0.0, elem_id="txt2img_subseed_strength")
                clip_skip = gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1,
                                      elem_id="txt2img_clip_skip")
        with gr.Column(scale=1):
            progress = gr.HTML(elem_id="txt2img_progress")
            preview = gr.Image(label="Live preview", type="pil", interactive=False, visible=True, height=160,
                               elem_id="txt2img_preview")
            gallery = gr.Gallery(label="Output", columns=2, object_fit="contain", height=512,
                                 elem_id="txt2img_gallery", interactive=False)
            infotext = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="txt2img_infotext")
            infotexts_state = gr.State([])
            seeds_state = gr.State([])

    fields: dict[str, gr.components.Component] = {
        "prompt": prompt, "negative_prompt": negative_prompt, "steps": steps, "sampler_name": sampler_name,
        "scheduler": scheduler, "cfg_scale": cfg_scale, "seed": seed, "width": width, "height": height,
        "subseed": subseed, "subseed_strength": subseed_strength, "clip_skip": clip_skip,
        "batch_count": batch_count, "batch_size": batch_size,
    }
    field_names = list(fields)

    def run_generation(*values: Any) -> Iterator[tuple]:
        named = dict(zip(field_names, values))
        style_names = tuple(values[len(field_names)] or ())
        vae_name = values[len(field_names) + 1] if vae is not None else "Automatic"
        try:
            request = Txt2ImgRequest(
                prompt=named["prompt"] or "", negative_prompt=named["negative_prompt"] or "",
                styles=style_names, steps=_int(named["steps"], "Sampling steps"),
                sampler_name=named["sampler_name"], scheduler=named["scheduler"],
                cfg_scale=float(named["cfg_scale"]), width=_int(named["width"], "Width"),
                height=_int(named["height"], "Height"), seed=_int(named["seed"], "Seed"),
                subseed=_int(named["subseed"], "Variation seed"), subseed_strength=float(named["subseed_strength"]),
                batch_count=_int(named["batch_count"], "Batch count"), batch_size=_int(named["batch_size"], "Batch size"),
                clip_skip=_int(named["clip_skip"], "Clip skip"), vae=vae_name or "Automatic",
            )
            job = ctx.submit_txt2img(request)
        except (ValueError, LookupError) as error:
            raise gr.Error(user_error(error)) from None
        shown_preview = -1
        while not job.wait(POLL_SECONDS):
            snapshot = job.control.snapshot()
            preview_update = gr.update()
            if snapshot.preview is not None and snapshot.preview_serial != shown_preview:
                shown_preview = snapshot.preview_serial
                preview_update = snapshot.preview
            yield gr.update(), gr.update(), progress_html(snapshot), preview_update, gr.update(), gr.update()
        try:
            result = job.result()
        except Exception as error:  # shown to the user; the worker and server keep running
            raise gr.Error(user_error(error)) from None
        images = ([result.grid] if result.grid is not None else []) + result.images
        texts = ([result.infotexts[0]] if result.grid is not None else []) + result.infotexts
        note = " (interrupted)" if result.interrupted else ""
        warnings = "".join(f"<div class=\"sd-warning\">⚠️ {html.escape(w)}</div>" for w in result.warnings)
        done = f'<div class="sd-progress-done">Done: {len(result.images)} image(s){note}</div>{warnings}'
        yield images, (texts[0] if texts else ""), done, None, texts, result.seeds

    inputs = [fields[name] for name in field_names] + [styles] + ([vae] if vae is not None else [])
    outputs = [gallery, infotext, progress, preview, infotexts_state, seeds_state]
    generate.click(run_generation, inputs=inputs, outputs=outputs, api_name="txt2img")
    prompt.submit(run_generation, inputs=inputs, outputs=outputs)
    interrupt.click(lambda: ctx.queue.interrupt_current(), inputs=None, outputs=None)
    skip.click(lambda: ctx.queue.skip_current(), inputs=None, outputs=None)
    def schedules_for_sampler(sampler: str, current: str):
        choices = schedule_types_for(sampler)
        return gr.update(choices=choices, value=current if current in choices else "Automatic")

    sampler_name.change(schedules_for_sampler, inputs=[sampler_name, scheduler], outputs=scheduler)
    random_seed.click(lambda: -1, inputs=None, outputs=seed)
    reuse_seed.click(lambda seeds: (seeds[0] if seeds else -1), inputs=seeds_state, outputs=seed)

    def show_selected(texts: list[str], event: gr.SelectData) -> str:
        return texts[event.index] if texts and 0 <= event.index < len(texts) else ""

    gallery.select(show_selected, inputs=infotexts_state, outputs=infotext)
    refresh_styles.click(lambda: gr.update(choices=ctx.styles.names()), inputs=None, outputs=styles)

    pasted_fields = [fields[name] for name in TXT2IMG_FIELDS]

    def paste_from_prompt(text: str) -> list:
        values = txt2img_values_from_infotext(text or "")
        if "Steps" not in (text or ""):
            raise gr.Error("The prompt box holds no generation parameters to read (paste an A1111 infotext first).")
        return [values.get(name, gr.update()) for name in TXT2IMG_FIELDS]

    paste.click(paste_from_prompt, inputs=prompt, outputs=pasted_fields)
    return Txt2ImgControls(fields=fields, gallery=gallery, infotext=infotext)


def _int(value: Any, label: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {value!r}") from None
    if number != int(number):
        raise ValueError(f"{label} must be a whole number, got {value!r}")
    return int(number)

