"""The Settings tab: the app's runtime options and every extension's declared settings, one Apply.

The app's part are the A1111 options this app honours (`webui.generation.server_options`: the VAE and
clip skip of requests that name none, whether images are saved), the same `ServerOptions` that
`/sdapi/v1/options` changes, kept in `<data>/config.json`. Below them, each extension's settings under
its name, with the control its declaration asks for (`webui.ui.typed_controls`), kept in
`<data>/extension_settings.json`.

Apply checks every value first and stores nothing when one is refused (a gr.Error names each refused
setting). The values are read again on every page load. Settings apply to everyone, so only an admin
changes them: a plain user sees the tab read-only (controls greyed, no Apply button) with a note saying so.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.errors import user_error
from webui.extensions.settings_store import SettingError, SettingSpec
from webui.generation.server_options import OPTION_LABELS, check_options
from webui.ui.access import caller_of, require_admin
from webui.ui.checkpoint_settings_ui import build_checkpoint_settings
from webui.ui.typed_controls import control_for, typed_value
from webui.ui.upscaler_lists import extras_choices

READ_ONLY_NOTE = "Only an admin can change settings; these are the current values."


def setting_elem_id(extension: str, key: str) -> str:
    """`setting_<extension>_<key>`, with characters a CSS selector would trip on replaced."""
    return "setting_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in f"{extension}_{key}")


def build_settings_tab(ctx: AppContext, blocks: gr.Blocks) -> gr.Dropdown:
    """Build the tab; returns the "Upscaler for img2img" dropdown, whose choices the upscaler 🔄 buttons
    refresh with the other upscaler lists (`webui.ui.upscaler_lists`)."""
    note = gr.Markdown(elem_id="settings_access")
    app_values = ctx.options.values()
    with gr.Group(elem_id="settings_app"):
        gr.Markdown("### SD Studio")
        app_controls = {
            "sd_vae": gr.Dropdown(label=OPTION_LABELS["sd_vae"], choices=ctx.models.vae_names(),
                                  value=app_values["sd_vae"], elem_id="setting_sd_vae_default",
                                  allow_custom_value=True),
            "CLIP_stop_at_last_layers": gr.Slider(label=OPTION_LABELS["CLIP_stop_at_last_layers"], minimum=1,
                                                  maximum=12, step=1, value=app_values["CLIP_stop_at_last_layers"],
                                                  elem_id="setting_CLIP_stop_at_last_layers"),
            "samples_save": gr.Checkbox(label=OPTION_LABELS["samples_save"], value=app_values["samples_save"],
                                        elem_id="setting_samples_save"),
            "ESRGAN_tile": gr.Slider(label=OPTION_LABELS["ESRGAN_tile"], minimum=0, maximum=512, step=16,
                                     value=app_values["ESRGAN_tile"], elem_id="setting_ESRGAN_tile"),
            "ESRGAN_tile_overlap": gr.Slider(label=OPTION_LABELS["ESRGAN_tile_overlap"], minimum=0, maximum=48,
                                             step=1, value=app_values["ESRGAN_tile_overlap"],
                                             elem_id="setting_ESRGAN_tile_overlap"),
            "upscaler_for_img2img": gr.Dropdown(label=OPTION_LABELS["upscaler_for_img2img"],
                                                choices=extras_choices(ctx), value=app_values["upscaler_for_img2img"],
                                                elem_id="setting_upscaler_for_img2img", allow_custom_value=True),
        }
    build_checkpoint_settings(ctx, blocks)
    by_extension: dict[str, list[SettingSpec]] = defaultdict(list)
    for extension, spec in ctx.extensions.settings.declared():
        by_extension[extension].append(spec)
    extension_controls: dict[tuple[str, str], tuple[SettingSpec, gr.components.Component]] = {}
    for extension, specs in by_extension.items():
        with gr.Group(elem_id=setting_elem_id(extension, "group")):
            gr.Markdown(f"### {extension}")
            for spec in specs:
                control = control_for(spec, ctx.extensions.settings.value(extension, spec.key),
                                      setting_elem_id(extension, spec.key))
                extension_controls[(extension, spec.key)] = (spec, control)
    if not by_extension:
        gr.Markdown("No loaded extension declares settings.")
    # Shown by the page load for an admin, once the controls hold the current values.
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply", visible=False)
    result = gr.Markdown(elem_id="settings_result")

    app_keys, extension_keys = list(app_controls), list(extension_controls)
    controls = list(app_controls.values()) + [control for _, control in extension_controls.values()]

    def apply_settings(request: gr.Request, *values: Any) -> str:
        require_admin(request, "Changing settings")
        app_changes = dict(zip(app_keys, values))  # check_options types them (a slider's 3.0 is clip skip 3)
        extension_changes = {key: typed_value(extension_controls[key][0], value)
                             for key, value in zip(extension_keys, values[len(app_keys):])}
        problems = []
        try:
            app_changes = check_options(app_changes, ctx.models.resolve_vae,
                                        ctx.upscalers.check if ctx.upscalers is not None else None)
        except (ValueError, LookupError) as error:
            problems.append(f"SD Studio: {user_error(error)}")
        for (extension, key), value in extension_changes.items():
            try:
                extension_controls[(extension, key)][0].check(value)
            except SettingError as error:
                problems.append(f"{extension}: {error}")
        if problems:  # nothing is stored: the values on screen stay for the user to correct
            raise gr.Error("Nothing was applied. " + "; ".join(problems))
        ctx.extensions.settings.set_many(extension_changes)
        ctx.options.update(app_changes)
        return f"Applied {len(app_changes) + len(extension_changes)} settings."

    def current_values(request: gr.Request) -> list:
        admin = caller_of(request).is_admin
        app_now = ctx.options.values()
        choices = {"sd_vae": ctx.models.vae_names, "upscaler_for_img2img": lambda: extras_choices(ctx)}
        updates = [gr.update(value=app_now[key], interactive=admin,
                             **({"choices": choices[key]()} if key in choices else {}))
                   for key in app_keys]
        updates += [gr.update(value=ctx.extensions.settings.value(extension, key), interactive=admin)
                    for extension, key in extension_keys]
        return [*updates, gr.update(visible=admin), "" if admin else READ_ONLY_NOTE]

    apply.click(apply_settings, inputs=controls, outputs=result)
    blocks.load(current_values, outputs=[*controls, apply, note])
    return app_controls["upscaler_for_img2img"]
