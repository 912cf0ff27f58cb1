"""The ControlNet accordion's controls: one tab per unit in A1111's layout (enable, image, preprocessor,
model, weight, start/end, control mode, resize mode, pixel perfect) and a Preview of the preprocessed map.

The uploaded image travels as a base64 PNG in a hidden text field (the script's `unitN_image` value), so
requests from the UI and from the API carry the same data and no file path ever reaches the server."""

from __future__ import annotations

from typing import Any

import gradio as gr
import torch
from PIL import Image

from webui.extensions import api

from . import annotators, preprocessors, units

UNAVAILABLE = " (unavailable: see Preview)"


def build_units(where: api.ScriptUi, runtime: Any) -> dict[str, Any]:
    components: dict[str, Any] = {}
    with gr.Tabs():
        for index in range(units.UNITS):
            with gr.Tab(f"ControlNet Unit {index}"):
                components.update(_unit(where, index, runtime))
    return components


def _unit(where: api.ScriptUi, index: int, runtime: Any) -> dict[str, Any]:
    prefix = f"{where.elem_prefix}_unit{index}"
    with gr.Row():
        upload = gr.Image(label="Control image", type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                          elem_id=f"{prefix}_upload")
        preview = gr.Image(label="Preprocessor preview", type="pil", interactive=False, elem_id=f"{prefix}_preview")
    image = gr.Textbox(visible=False, elem_id=f"{prefix}_image")
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enabled")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{prefix}_pixel_perfect")
    with gr.Row():
        module = gr.Dropdown(label="Preprocessor", choices=_module_choices(runtime), value="none",
                             elem_id=f"{prefix}_module")
        model = gr.Dropdown(label="Model", choices=[units.NO_MODEL], value=units.NO_MODEL, allow_custom_value=True,
                            elem_id=f"{prefix}_model")
        refresh = gr.Button("🔄", elem_id=f"{prefix}_refresh", scale=0, min_width=40)
        run_preview = gr.Button("Preview", elem_id=f"{prefix}_run_preview", scale=0)
    weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{prefix}_weight")
    with gr.Row():
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{prefix}_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{prefix}_end")
    with gr.Row():
        processor_res = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution",
                                  elem_id=f"{prefix}_processor_res")
        threshold_a = gr.Number(value=-1, label="Threshold A (-1: default)", elem_id=f"{prefix}_threshold_a")
        threshold_b = gr.Number(value=-1, label="Threshold B (-1: default)", elem_id=f"{prefix}_threshold_b")
    control_mode = gr.Radio(list(api.CONTROL_MODES), value=api.CONTROL_MODES[0], label="Control Mode",
                            elem_id=f"{prefix}_control_mode")
    resize_mode = gr.Radio(list(units.RESIZE_MODES), value=units.RESIZE_MODES[1], label="Resize Mode",
                           elem_id=f"{prefix}_resize_mode")
    union_mode = gr.Dropdown([""], value="", label="Union control type", allow_custom_value=True,
                             info="Union ControlNets only (Flux Union / Union-Pro): which kind of map this is",
                             elem_id=f"{prefix}_union_mode")
    hr_option = gr.Dropdown(list(units.HR_OPTIONS), value=units.HR_OPTIONS[0], label="Hires fix pass",
                            info="With hires fix: the pass this unit acts in", elem_id=f"{prefix}_hr_option")

    def stored(picture: Image.Image | None) -> tuple[str, Any]:
        """The upload as the unit's base64 value; uploading also enables the unit, as A1111 does."""
        if picture is None:
            return "", gr.update()
        return units.encode_image(picture), gr.update(value=True)

    def refreshed() -> tuple[Any, Any, Any]:
        return (gr.update(choices=[units.NO_MODEL, *runtime.model_titles()]),
                gr.update(choices=["", *runtime.union_modes()]), gr.update(choices=_module_choices(runtime)))

    def previewed(picture: Image.Image | None, name: str, res: float, a: float, b: float, perfect: bool) -> Any:
        if picture is None:
            raise gr.Error("Upload a control image first")
        try:
            resolution = min(picture.size) if perfect else int(res)
            # Not a job: annotators that need weights run on the CPU (GPU work goes through the scheduler).
            shown = runtime.preprocess(name, picture, resolution, float(a), float(b), 0, torch.device("cpu"))
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error)) from None
        return shown.convert("RGB")

    upload.change(stored, inputs=upload, outputs=[image, enabled])
    refresh.click(refreshed, inputs=None, outputs=[model, union_mode, module])
    model.focus(refreshed, inputs=None, outputs=[model, union_mode, module])
    module.focus(lambda: gr.update(choices=_module_choices(runtime)), inputs=None, outputs=module)
    run_preview.click(previewed, inputs=[upload, module, processor_res, threshold_a, threshold_b, pixel_perfect],
                      outputs=preview)
    fields = {"enabled": enabled, "image": image, "module": module, "model": model, "weight": weight,
              "guidance_start": start, "guidance_end": end, "control_mode": control_mode, "resize_mode": resize_mode,
              "pixel_perfect": pixel_perfect, "processor_res": processor_res, "threshold_a": threshold_a,
              "threshold_b": threshold_b, "hr_option": hr_option, "union_mode": union_mode}
    return {f"unit{index}_{name}": component for name, component in fields.items()}


def _module_choices(runtime: Any) -> list[tuple[str, str]]:
    """Every preprocessor; an annotator that cannot run here (weights or controlnet_aux missing) is marked,
    and choosing it and pressing Preview shows exactly what is missing."""
    usable = set(runtime.module_names())
    names = [*preprocessors.MODULES, *annotators.ANNOTATORS, *annotators.NOT_RUN]
    return [(name if name in usable else name + UNAVAILABLE, name) for name in names]
