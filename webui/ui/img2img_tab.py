"""The img2img tab: A1111's sub-tabs (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload, Batch),
resize/inpaint options and the Outpainting script, over `AppContext.submit_img2img`.

The brush tabs use gradio's ImageEditor: its layers hold the strokes on a transparent background, so the
strokes' alpha is the mask (what `prepare_mask` reads) and the composite is the sketched image.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.generation.image_ops import ResizeMode
from webui.generation.masks import MaskedContent
from webui.generation.requests import Img2ImgRequest
from webui.security.identity import User
from webui.security.limits import RequestLimits
from webui.ui.uploads import checked_editor, open_upload
from webui.ui.script_controls import build_script_controls, script_titles
from webui.ui.generation_controls import (
    XYZ_SCRIPT,
    GenerationControls,
    build_xyz_script_controls,
    submit_xyz_script,
    build_output_area,
    build_prompt_area,
    build_sampling_controls,
    request_values,
    to_int,
    wire_generation,
)

MODES = ("img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload", "batch")
MODE_LABELS = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint", "inpaint_sketch": "Inpaint sketch",
               "inpaint_upload": "Inpaint upload", "batch": "Batch"}
SCRIPTS = ("None", "Outpainting", XYZ_SCRIPT)
OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")


def strokes_mask(editor_value: dict | None) -> Image.Image | None:
    """The union of the editor's drawn layers as one RGBA image (alpha = painted), or None."""
    if not editor_value or not editor_value.get("layers"):
        return None
    layers = [layer for layer in editor_value["layers"] if layer is not None]
    if not layers:
        return None
    union = Image.new("RGBA", layers[0].size, (0, 0, 0, 0))
    for layer in layers:
        union = Image.alpha_composite(union, layer.convert("RGBA").resize(union.size))
    return union


def source_and_mask(mode: str, named: dict[str, Any], limits: RequestLimits) -> tuple[Image.Image | None, Image.Image | None]:
    """The init image and mask the chosen sub-tab provides. The plain image widgets hand over file paths,
    decoded here through the checked opener; the editors' images were decoded by gradio (their size is
    bounded by Pillow's decompression guard, set from the same limit when the server starts)."""
    if mode == "img2img":
        return open_upload(limits, named["init_img"], "RGBA", "the img2img image"), None
    if mode == "sketch":
        editor = named["sketch"] or {}
        return editor.get("composite"), None
    if mode == "inpaint":
        editor = named["inpaint"] or {}
        return editor.get("background"), strokes_mask(editor)
    if mode == "inpaint_sketch":
        editor = named["inpaint_sketch"] or {}
        return editor.get("composite"), strokes_mask(editor)
    if mode == "inpaint_upload":
        return (open_upload(limits, named["upload_image"], "RGBA", "the inpaint image"),
                open_upload(limits, named["upload_mask"], "RGBA", "the inpaint mask"))
    return None, None


def _editor(limits: RequestLimits, elem_id: str, colors: list[str], fixed: bool) -> gr.ImageEditor:
    brush = gr.Brush(colors=colors, default_color=colors[0], color_mode="fixed" if fixed else "defaults",
                     default_size=12)
    return checked_editor(limits, type="pil", image_mode="RGBA", brush=brush, eraser=gr.Eraser(default_size=12),
                          layers=False, height=420, elem_id=elem_id, sources=["upload", "clipboard"])


def build_img2img_tab(ctx: AppContext, default_size: int, checkpoint: gr.Dropdown | None = None,
                      vae: gr.Dropdown | None = None) -> GenerationControls:
    prompt_area = build_prompt_area(ctx, "img2img", checkpoint)
    mode = gr.State("img2img")
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="img2img_mode_tabs") as mode_tabs:
                with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab_img2img:
                    init_img = gr.Image(label="Image for img2img", type="filepath", image_mode=None, height=420,
                                        elem_id="img2img_image", sources=["upload", "clipboard"])
                with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as tab_sketch:
                    sketch = _editor(ctx.request_limits, "img2img_sketch", ["#000000", "#ffffff", "#ff0000", "#00aa00", "#0000ff"], False)
                with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab_inpaint:
                    inpaint = _editor(ctx.request_limits, "img2maskimg", ["#ffffff"], True)
                with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as tab_isketch:
                    inpaint_sketch = _editor(ctx.request_limits, "inpaint_sketch", ["#000000", "#ffffff", "#ff0000", "#00aa00", "#0000ff"], False)
                with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab_upload:
                    upload_image = gr.Image(label="Image", type="filepath", image_mode=None, height=300,
                                            elem_id="img_inpaint_base")
                    upload_mask = gr.Image(label="Mask (white = change)", type="filepath", image_mode=None,
                                           height=300, elem_id="img_inpaint_mask")
                with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as tab_batch:
                    gr.Markdown("Every image in the input folder is processed with the settings below; a mask with "
                                "the same file name in the mask folder makes it an inpaint. Folders are in the "
                                "data folder's `datasets/` or `outputs/`; a plain name means `datasets/<name>` for the "
                                "input and mask folders and `outputs/<name>` for the output folder. With accounts, a "
                                "plain user's folders are their own `datasets/users/<name>/` and "
                                "`outputs/users/<name>/`.")
                    batch_input = gr.Textbox(label="Input directory (in datasets/ or outputs/)",
                                             elem_id="img2img_batch_input_dir")
                    batch_output = gr.Textbox(label="Output directory (in outputs/ or datasets/; empty = "
                                                    "outputs/img2img-batch)", elem_id="img2img_batch_output_dir")
                    batch_masks = gr.Textbox(label="Inpaint batch mask directory (optional; in datasets/ or outputs/)",
                                             elem_id="img2img_batch_inpaint_mask_dir")
            for tab, name in ((tab_img2img, "img2img"), (tab_sketch, "sketch"), (tab_inpaint, "inpaint"),
                              (tab_isketch, "inpaint_sketch"), (tab_upload, "inpaint_upload"), (tab_batch, "batch")):
                tab.select(lambda value=name: value, inputs=None, outputs=mode)

            resize_mode = gr.Radio(label="Resize mode", choices=[m.label for m in ResizeMode],
                                   value=ResizeMode.JUST_RESIZE.label, elem_id="img2img_resize_mode")
            with gr.Row():
                resize_by = gr.Slider(label="Resize by (0 = use width/height)", minimum=0.0, maximum=4.0, step=0.05,
                                      value=0.0, elem_id="img2img_scale")
                denoising_strength = gr.Slider(label="Denoising strength", minimum=0.0, maximum=1.0, step=0.01,
                                               value=0.75, elem_id="img2img_denoising_strength")
            with gr.Accordion("Inpaint options", open=True, elem_id="img2img_inpaint_controls"):
                mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4, elem_id="img2img_mask_blur")
                with gr.Row():
                    mask_mode = gr.Radio(label="Mask mode", choices=["Inpaint masked", "Inpaint not masked"],
                                         value="Inpaint masked", elem_id="img2img_mask_mode")
                    masked_content = gr.Radio(label="Masked content", choices=[m.label for m in MaskedContent],
                                              value=MaskedContent.ORIGINAL.label, elem_id="img2img_inpainting_fill")
                with gr.Row():
                    inpaint_area = gr.Radio(label="Inpaint area", choices=["Whole picture", "Only masked"],
                                            value="Whole picture", elem_id="img2img_inpaint_full_res")
                    padding = gr.Slider(label="Only masked padding, pixels", minimum=0, maximum=256, step=4, value=32,
                                        elem_id="img2img_inpaint_full_res_padding")
            fields = build_sampling_controls(ctx, "img2img", default_size)
            with gr.Row():
                script = gr.Dropdown(label="Script", choices=[*SCRIPTS, *script_titles(ctx, True)], value="None",
                                     elem_id="img2img_script")
            with gr.Group(visible=False) as outpaint_group:
                outpaint_pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                                            elem_id="img2img_outpaint_pixels")
                outpaint_directions = gr.CheckboxGroup(label="Outpainting direction", choices=list(OUTPAINT_DIRECTIONS),
                                                       value=list(OUTPAINT_DIRECTIONS), elem_id="img2img_outpaint_directions")
            xyz_group, xyz_controls = build_xyz_script_controls("img2img", ctx.xyz.registry.labels())
            scripts = build_script_controls(ctx, "img2img", True, list(SCRIPTS), script)
            script.change(lambda name: [gr.update(visible=name == "Outpainting"), gr.update(visible=name == XYZ_SCRIPT),
                                        *scripts.visibility(name)],
                          inputs=script, outputs=[outpaint_group, xyz_group, *scripts.groups])
        with gr.Column(scale=1):
            output = build_output_area("img2img")

    extra_inputs = {
        "mode": mode, "init_img": init_img, "sketch": sketch, "inpaint": inpaint, "inpaint_sketch": inpaint_sketch,
        "upload_image": upload_image, "upload_mask": upload_mask, "batch_input": batch_input,
        "batch_output": batch_output, "batch_masks": batch_masks, "resize_mode": resize_mode, "resize_by": resize_by,
        "denoising_strength": denoising_strength, "mask_blur": mask_blur, "mask_mode": mask_mode,
        "masked_content": masked_content, "inpaint_area": inpaint_area, "padding": padding, "script": script,
        "outpaint_pixels": outpaint_pixels, "outpaint_directions": outpaint_directions, **xyz_controls,
        **scripts.inputs,
    }

    def submit(named: dict[str, Any], owner: User):
        values = request_values(named, named["styles"], named["vae"])
        outpaint = {}
        if named["script"] == "Outpainting":
            pixels = to_int(named["outpaint_pixels"], "Pixels to expand")
            directions = named["outpaint_directions"] or []
            if not directions:
                raise ValueError("Outpainting needs at least one direction")
            outpaint = {f"outpaint_{side}": pixels for side in directions}
        options = dict(
            resize_mode=ResizeMode.from_value(named["resize_mode"]).value,
            denoising_strength=float(named["denoising_strength"]), mask_blur=to_int(named["mask_blur"], "Mask blur"),
            inpainting_mask_invert=int(named["mask_mode"] == "Inpaint not masked"),
            inpainting_fill=MaskedContent.from_value(named["masked_content"]).value,
            inpaint_full_res=named["inpaint_area"] == "Only masked",
            inpaint_full_res_padding=to_int(named["padding"], "Only masked padding"), **outpaint,
            upscaler_for_img2img=ctx.options.values()["upscaler_for_img2img"],  # the Settings tab's choice
        )
        if named["mode"] == "batch":
            template = Img2ImgRequest(**values, **options)
            return ctx.generation.submit_img2img_batch(template, named["batch_input"] or "", named["batch_output"] or "",
                                            named["batch_masks"] or "", owner)
        image, mask = source_and_mask(named["mode"], named, ctx.request_limits)
        if image is None:
            raise ValueError(f"Upload an image in the {MODE_LABELS[named['mode']]} tab first")
        scale = float(named["resize_by"] or 0)
        if scale > 0:
            values["width"] = max(64, int(image.width * scale) // 8 * 8)
            values["height"] = max(64, int(image.height * scale) // 8 * 8)
        request = scripts.prepare(ctx, Img2ImgRequest(**values, **options, init_images=(image,), mask=mask), named)
        if named["script"] == XYZ_SCRIPT:
            return submit_xyz_script(ctx, request, named, owner)
        return scripts.submit(ctx, request, named, owner) or ctx.generation.submit_img2img(request, owner)

    controls = wire_generation(ctx, "img2img", prompt_area, fields, output, vae, submit, extra_inputs=extra_inputs,
                               paste_fields=scripts.paste_fields)
    controls.extra.update(mode_tabs=mode_tabs, mode=mode, init_img=init_img, inpaint=inpaint)
    return controls
