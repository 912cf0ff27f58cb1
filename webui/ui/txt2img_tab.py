"""The txt2img tab: A1111's layout over `AppContext.submit_txt2img`, with the Hires. fix and Refiner accordions.

The Generate handler only turns widget values into a `Txt2ImgRequest`, queues it, and streams the
job's progress (bar, ETA, live preview) until the images arrive. Errors a user can fix become
`gr.Error` messages; the server keeps running.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.generation.requests import (
    DEFAULT_DISTILLED_CFG_SCALE, MAX_DISTILLED_CFG_SCALE, NO_REFINER_CHOICE, Txt2ImgRequest,
)
from webui.generation.upscaler_choices import hires_upscaler_names
from webui.models.default_model import EXAMPLE_PROMPT
from webui.security.identity import User
from webui.ui.upscaler_lists import pasted_hires_upscaler
from webui.ui.script_controls import build_script_controls, script_titles
from webui.ui.generation_controls import (
    XYZ_SCRIPT,
    GenerationControls,
    build_xyz_script_controls,
    submit_xyz_script,
    build_output_area,
    build_prompt_area,
    build_sampling_controls,
    family_controls_shown,
    request_values,
    to_float,
    to_int,
    wire_generation,
)

SAME_SAMPLER = "Use same sampler"


def build_hires_controls(ctx: AppContext) -> dict[str, gr.components.Component]:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        enable_hr = gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr")
        with gr.Row():
            # Model upscalers join the list when a page loads (webui.ui.upscaler_lists).
            hr_upscaler = gr.Dropdown(label="Upscaler", choices=hires_upscaler_names(None), value="Latent",
                                      elem_id="txt2img_hr_upscaler")
            hr_second_pass_steps = gr.Slider(label="Hires steps", minimum=0, maximum=ctx.limits.max_steps, step=1,
                                             value=0, elem_id="txt2img_hires_steps")
            denoising_strength = gr.Slider(label="Denoising strength", minimum=0.0, maximum=1.0, step=0.01, value=0.7,
                                           elem_id="txt2img_denoising_strength")
        with gr.Row():
            hr_scale = gr.Slider(label="Upscale by", minimum=1.0, maximum=4.0, step=0.05, value=2.0,
                                 elem_id="txt2img_hr_scale")
            hr_resize_x = gr.Slider(label="Resize width to", minimum=0, maximum=ctx.limits.max_side, step=8, value=0,
                                    elem_id="txt2img_hr_resize_x")
            hr_resize_y = gr.Slider(label="Resize height to", minimum=0, maximum=ctx.limits.max_side, step=8, value=0,
                                    elem_id="txt2img_hr_resize_y")
        hr_distilled_cfg = gr.Slider(label="Hires Distilled CFG Scale", minimum=0.0, maximum=MAX_DISTILLED_CFG_SCALE,
                                     step=0.1, value=DEFAULT_DISTILLED_CFG_SCALE,
                                     visible=family_controls_shown(ctx, None)["hr_distilled_cfg"],
                                     elem_id="txt2img_hr_distilled_cfg")
        hr_sampler_name = gr.Dropdown(label="Hires sampling method", choices=[SAME_SAMPLER] + ctx.generation.sampler_names(),
                                      value=SAME_SAMPLER, elem_id="txt2img_hr_sampler")
        hr_prompt = gr.Textbox(label="Hires prompt", lines=2, placeholder="empty = the main prompt",
                               elem_id="txt2img_hr_prompt")
        hr_negative_prompt = gr.Textbox(label="Hires negative prompt", lines=2,
                                        placeholder="empty = the main negative prompt", elem_id="txt2img_hr_neg_prompt")
    return {"enable_hr": enable_hr, "hr_upscaler": hr_upscaler, "hr_second_pass_steps": hr_second_pass_steps,
            "denoising_strength": denoising_strength, "hr_scale": hr_scale, "hr_resize_x": hr_resize_x,
            "hr_resize_y": hr_resize_y, "hr_sampler_name": hr_sampler_name, "hr_prompt": hr_prompt,
            "hr_negative_prompt": hr_negative_prompt, "hr_distilled_cfg": hr_distilled_cfg}


def build_refiner_controls(ctx: AppContext) -> dict[str, gr.components.Component]:
    """A1111's Refiner accordion: a second checkpoint that takes over at "Switch at" of the denoising."""
    with gr.Accordion("Refiner", open=False, elem_id="txt2img_refiner"):
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=[NO_REFINER_CHOICE] + ctx.models.checkpoint_titles(),
                                     value=NO_REFINER_CHOICE, allow_custom_value=True,
                                     elem_id="txt2img_refiner_checkpoint")
            switch_at = gr.Slider(label="Switch at", minimum=0.01, maximum=1.0, step=0.01, value=0.8,
                                  elem_id="txt2img_refiner_switch_at")
        checkpoint.focus(lambda: gr.update(choices=[NO_REFINER_CHOICE] + ctx.models.checkpoint_titles()),
                         outputs=checkpoint, show_progress="hidden")
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def refiner_values(named: dict[str, Any]) -> dict[str, Any]:
    return dict(refiner_checkpoint=named["refiner_checkpoint"] or "",
                refiner_switch_at=float(named["refiner_switch_at"]))


def hires_values(named: dict[str, Any]) -> dict[str, Any]:
    sampler = named["hr_sampler_name"]
    return dict(
        enable_hr=bool(named["enable_hr"]), hr_upscaler=named["hr_upscaler"],
        hr_second_pass_steps=to_int(named["hr_second_pass_steps"], "Hires steps"),
        denoising_strength=float(named["denoising_strength"]), hr_scale=float(named["hr_scale"]),
        hr_resize_x=to_int(named["hr_resize_x"], "Resize width to"),
        hr_resize_y=to_int(named["hr_resize_y"], "Resize height to"),
        hr_sampler_name="" if sampler in (None, "", SAME_SAMPLER) else sampler,
        hr_prompt=named["hr_prompt"] or "", hr_negative_prompt=named["hr_negative_prompt"] or "",
        hr_distilled_cfg=to_float(named["hr_distilled_cfg"], "Hires Distilled CFG Scale"),
    )


def build_txt2img_tab(ctx: AppContext, default_size: int, checkpoint: gr.Dropdown | None = None,
                      vae: gr.Dropdown | None = None) -> GenerationControls:
    # Pre-filled, so a newcomer's first Generate shows what the embedded default model draws.
    prompt_area = build_prompt_area(ctx, "txt2img", checkpoint, initial_prompt=EXAMPLE_PROMPT)
    with gr.Row():
        with gr.Column(scale=1):
            fields = build_sampling_controls(ctx, "txt2img", default_size)
            hires = build_hires_controls(ctx)
            refiner = build_refiner_controls(ctx)
            builtin = ["None", XYZ_SCRIPT]
            script = gr.Dropdown(label="Script", choices=builtin + script_titles(ctx, False), value="None",
                                 elem_id="txt2img_script")
            xyz_group, xyz_controls = build_xyz_script_controls("txt2img", ctx.xyz.registry.labels())
            scripts = build_script_controls(ctx, "txt2img", False, builtin, script)
            script.change(lambda name: [gr.update(visible=name == XYZ_SCRIPT), *scripts.visibility(name)],
                          inputs=script, outputs=[xyz_group, *scripts.groups])
        with gr.Column(scale=1):
            output = build_output_area("txt2img")

    def submit(named: dict[str, Any], owner: User):
        request = Txt2ImgRequest(**request_values(named, named["styles"], named["vae"]), **hires_values(named),
                                 **refiner_values(named))
        request = scripts.prepare(ctx, request, named)
        if named["script"] == XYZ_SCRIPT:
            return submit_xyz_script(ctx, request, named, owner)
        return scripts.submit(ctx, request, named, owner) or ctx.generation.submit_txt2img(request, owner)

    extra_inputs = {**hires, **refiner, "script": script, **xyz_controls, **scripts.inputs}
    paste_fields = {**scripts.paste_fields, "hr_upscaler": ("Hires upscaler", pasted_hires_upscaler(ctx.upscalers))}
    return wire_generation(ctx, "txt2img", prompt_area, fields, output, vae, submit, extra_inputs=extra_inputs,
                           paste_fields=paste_fields)
