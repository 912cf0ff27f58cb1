"""The gradio Blocks: quicksettings bar (checkpoint) above the tabs, one build function per tab."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.models.families import DEFAULT_FAMILY, family_named
from webui.security.accounts import AccountService
from webui.ui.access import caller_of
from webui.ui.account_tab import build_account_tab
from webui.errors import user_error
from webui.generation.infotext import PNG_TEXT_KEY
from webui.ui.extensions_tab import build_extensions_tab
from webui.ui.extras_tab import ExtrasTab, build_extras_tab
from webui.ui.merger_tab import build_merger_tab
from webui.ui.infotext_fields import txt2img_values_from_infotext
from webui.ui.png_info_tab import build_png_info_tab
from webui.ui.queue_tab import QueueTab, build_queue_tab
from webui.ui.train_tab import build_train_tab, compare_epochs_request
from webui.ui.generation_controls import FAMILY_CONTROLS, GenerationControls, family_control_updates
from webui.ui.img2img_tab import build_img2img_tab
from webui.ui.txt2img_tab import build_txt2img_tab
from webui.ui.upscaler_lists import wire_upscaler_lists
from webui.ui.xyz_tab import build_xyz_tab
from webui.ui.extension_tabs import build_extension_tabs
from webui.ui.settings_tab import build_settings_tab

CSS = """
.sd-progress {position: relative; height: 1.6em; border: 1px solid var(--border-color-primary); border-radius: 4px; overflow: hidden;}
.sd-progress-bar {position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent-soft);}
.sd-progress-text {position: relative; padding-left: 0.5em; font-size: 0.9em;}
.sd-pnginfo th {text-align: left; padding-right: 1em;}
.sd-extensions th, .sd-extensions td {text-align: left; vertical-align: top; padding: 0.2em 0.8em 0.2em 0;}
.sd-extensions pre {white-space: pre-wrap; font-size: 0.8em;}
"""

# System fonts only: the UI must work offline, without fetching web fonts.
THEME = gr.themes.Default(
    font=[gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")],
    font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")],
)


def native_size(ctx: AppContext) -> int:
    """Default width/height: the native resolution of the checkpoint that will be loaded first."""
    records = ctx.catalog.usable_records()
    if not records:
        return DEFAULT_FAMILY.native_size
    record = records[0]
    if record.format == "diffusers":
        import json

        try:
            unet = json.loads((record.path / "unet" / "config.json").read_text(encoding="utf-8"))
            vae = json.loads((record.path / "vae" / "config.json").read_text(encoding="utf-8"))
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, KeyError, ValueError):
            pass
    return family_named(record.architecture.family).native_size if record.architecture else DEFAULT_FAMILY.native_size


def build_ui(ctx: AppContext, accounts: AccountService) -> gr.Blocks:
    with gr.Blocks(title="SD Studio", analytics_enabled=False) as blocks:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(
                label="Stable Diffusion checkpoint", choices=ctx.models.checkpoint_choices(),
                value=ctx.models.current_checkpoint_title() or next(iter(ctx.models.checkpoint_titles()), None),
                elem_id="setting_sd_model_checkpoint", scale=4,
                allow_custom_value=True,  # a title gains its hash once hashed; the catalog decides what a name means
            )
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=48)
            vae = gr.Dropdown(label="SD VAE", choices=ctx.models.vae_names(), value="Automatic", elem_id="setting_sd_vae", scale=2)
            unusable = gr.Markdown(elem_id="unusable_checkpoints")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img_tab(ctx, native_size(ctx), checkpoint, vae)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img_tab(ctx, native_size(ctx), checkpoint, vae)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo_raw, send_to_txt2img = build_png_info_tab(ctx.request_limits)
            with gr.Tab("Checkpoint Merger", id="merger", elem_id="tab_merger") as merger_tab:
                build_merger_tab(ctx, checkpoint, merger_tab)
            # tabs: Train (the Train tab's block goes below this line)
            with gr.Tab("Train", id="train", elem_id="tab_train") as train_tab_component:
                train_tab = build_train_tab(ctx, blocks, train_tab_component, native_size(ctx))
            # tabs: X/Y/Z plot (the X/Y/Z tab's block goes below this line)
            with gr.Tab("X/Y/Z plot", id="xyz", elem_id="tab_xyz"):
                xyz = build_xyz_tab(ctx, native_size(ctx), vae, blocks=blocks)
            with gr.Tab("Queue", id="queue", elem_id="tab_queue") as queue_tab_component:
                queue = build_queue_tab(ctx, queue_tab_component)
            with gr.Tab("Account", id="account", elem_id="tab_account") as account_tab:
                build_account_tab(accounts, account_tab)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions") as extensions_tab:
                build_extensions_tab(ctx.extension_service, extensions_tab)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                img2img_upscaler_setting = build_settings_tab(ctx, blocks)
            build_extension_tabs(ctx)  # after the app's own tabs

        def unusable_note() -> str:
            broken = [r for r in ctx.catalog.records() if not r.usable]
            return "\n".join(f"⚠️ **{r.path.name}** cannot be loaded: {r.error}" for r in broken)

        def listing():
            titles = ctx.models.checkpoint_titles()
            return (gr.update(choices=ctx.models.checkpoint_choices(),
                              value=ctx.models.current_checkpoint_title() or next(iter(titles), None)),
                    unusable_note(), gr.update(choices=ctx.models.vae_names()))

        def refresh_checkpoints(request: gr.Request):
            """The 🔄 button: rescanning the model folders is an admin's; others are told and get the listing."""
            if caller_of(request).is_admin:
                ctx.models.refresh_checkpoints()
            else:
                gr.Warning("Rescanning the model folders needs an admin account; this is the current list.")
            return listing()

        def show_checkpoints(request: gr.Request):
            """On page load: an admin's page rescans the folders (new files appear), everyone gets the list."""
            if caller_of(request).is_admin:
                ctx.models.refresh_checkpoints()
            return listing()

        def choose_checkpoint(title: str, request: gr.Request):
            if not title:
                return gr.update()
            owner = caller_of(request).name
            try:
                ctx.models.select_checkpoint(title, owner)
            except Exception as error:  # the previous model stays loaded and usable
                raise gr.Error(user_error(error)) from None
            # The choices only: writing the value back would let a load that finishes after the user chose
            # again put the older choice back into the dropdown.
            return gr.update(choices=ctx.models.checkpoint_choices())

        refresh.click(refresh_checkpoints, outputs=[checkpoint, unusable, vae])
        # always_last: a second choice made while the first model still loads is loaded after it (gradio's
        # default for input events would drop it, leaving the first model loaded under the second's name).
        checkpoint.input(choose_checkpoint, inputs=checkpoint, outputs=checkpoint, trigger_mode="always_last")
        blocks.load(show_checkpoints, outputs=[checkpoint, unusable, vae])

        wire_send_buttons(tabs, txt2img, img2img, pnginfo_raw, send_to_txt2img, queue)
        wire_send_to_extras(tabs, (txt2img, img2img), extras)
        wire_upscaler_lists(ctx, blocks, txt2img.fields["hr_upscaler"], extras.upscaler_1, extras.upscaler_2,
                            img2img_upscaler_setting, refresh, extras.refresh)
        wire_family_controls(ctx, checkpoint, (txt2img, img2img))

        def compare_epochs(request: gr.Request):
            """Train tab -> X/Y/Z plot of the saved epochs x LoRA weight over the first sample prompt."""
            prompt, names, weights = compare_epochs_request(ctx, caller_of(request))
            return [*xyz.fill_epoch_comparison(prompt, names, weights), gr.Tabs(selected="xyz")]

        train_tab.compare_epochs.click(
            compare_epochs, outputs=[xyz.prompt, xyz.x_type, xyz.x_values, xyz.y_type, xyz.y_values, tabs])
    return blocks


def wire_family_controls(ctx: AppContext, checkpoint: gr.Dropdown, tabs: tuple[GenerationControls, ...]) -> None:
    """Whenever the checkpoint changes (chosen, loaded at page load, refreshed), every tab shows the controls
    its family uses and hides the others (Clip skip, Distilled CFG Scale, Shift)."""
    names = [name for controls in tabs for name in FAMILY_CONTROLS if name in controls.fields]
    outputs = [controls.fields[name] for controls in tabs for name in FAMILY_CONTROLS if name in controls.fields]
    samplers = [controls.fields["sampler_name"] for controls in tabs]
    from_image = [controls.prefix != "txt2img" for controls in tabs]

    def updates(title: str | None, *chosen: str) -> list[Any]:
        # A sampler the new model's family cannot use in that tab becomes the family's default (Euler on
        # SD3.5/Flux), as Forge's per-model presets do; a usable one stays.
        return family_control_updates(ctx, title, names) + [
            ctx.generation.sampler_for(title, sampler, image) for sampler, image in zip(chosen, from_image)]

    checkpoint.change(updates, inputs=[checkpoint, *samplers], outputs=[*outputs, *samplers])


def pasted_values(controls: GenerationControls, text: str | None) -> list:
    """Updates for every control of a tab that the infotext determines (others unchanged)."""
    values = txt2img_values_from_infotext(text, controls.paste_fields) if text else {}
    return [values.get(name, gr.update()) for name in controls.paste_fields]


def pastable(controls: GenerationControls) -> list:
    return [controls.fields[name] for name in controls.paste_fields]


def wire_send_buttons(tabs: gr.Tabs, txt2img: GenerationControls, img2img: GenerationControls,
                      pnginfo_raw: gr.Textbox, pnginfo_send: gr.Button, queue: QueueTab) -> None:
    """A1111's "Send to" buttons: the selected output image (and its parameters) into another tab."""

    def chosen(images: list, selected: int, texts_holder: str) -> tuple[Image.Image, str]:
        if not images:
            raise gr.Error("Generate an image first: there is nothing to send.")
        item = images[selected if 0 <= selected < len(images) else 0]
        return (item[0] if isinstance(item, (tuple, list)) else item), texts_holder

    mode_tabs, mode = img2img.extra["mode_tabs"], img2img.extra["mode"]
    for source in (txt2img, img2img):
        if "img2img" in source.send:
            def to_img2img(images, selected, text, source=source):
                image, text = chosen(images, selected, text)
                return [image, gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img"), "img2img",
                        *pasted_values(img2img, text)]

            source.send["img2img"].click(
                to_img2img, inputs=[source.images, source.selected, source.infotext],
                outputs=[img2img.extra["init_img"], tabs, mode_tabs, mode, *pastable(img2img)])
        if "inpaint" in source.send:
            def to_inpaint(images, selected, text, source=source):
                image, text = chosen(images, selected, text)
                editor = {"background": image, "layers": [], "composite": image}
                return [editor, gr.Tabs(selected="img2img"), gr.Tabs(selected="inpaint"), "inpaint",
                        *pasted_values(img2img, text)]

            source.send["inpaint"].click(
                to_inpaint, inputs=[source.images, source.selected, source.infotext],
                outputs=[img2img.extra["inpaint"], tabs, mode_tabs, mode, *pastable(img2img)])

    def to_txt2img(text: str):
        if not text:
            raise gr.Error("No generation parameters to send: generate or drop an image with parameters first.")
        return [*pasted_values(txt2img, text), gr.Tabs(selected="txt2img")]

    img2img.send["txt2img"].click(to_txt2img, inputs=img2img.infotext, outputs=[*pastable(txt2img), tabs])
    pnginfo_send.click(to_txt2img, inputs=pnginfo_raw, outputs=[*pastable(txt2img), tabs])
    queue.send_txt2img.click(to_txt2img, inputs=queue.infotext, outputs=[*pastable(txt2img), tabs])

    def queue_to_img2img(path: str, text: str):
        if not path:
            raise gr.Error("Click a result image first: there is nothing to send.")
        with Image.open(path) as image:  # a file the queue tab listed from the outputs folder
            image.load()
            picture = image.copy()
        return [picture, gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img"), "img2img",
                *pasted_values(img2img, text)]

    queue.send_img2img.click(queue_to_img2img, inputs=[queue.picked, queue.infotext],
                             outputs=[img2img.extra["init_img"], tabs, mode_tabs, mode, *pastable(img2img)])


def wire_send_to_extras(tabs: gr.Tabs, sources: tuple[GenerationControls, ...], extras: ExtrasTab) -> None:
    """"Send to extras": the selected output image into the Extras tab's Single Image, carrying its
    generation parameters in the PNG it becomes there (so the upscaled result keeps them)."""

    def to_extras(images: list, selected: int, text: str):
        if not images:
            raise gr.Error("Generate an image first: there is nothing to send.")
        item = images[selected if 0 <= selected < len(images) else 0]
        picture = (item[0] if isinstance(item, (tuple, list)) else item).copy()
        if text:
            picture.info[PNG_TEXT_KEY] = text  # gradio writes text info into the PNG it caches
        return picture, gr.Tabs(selected="extras"), gr.Tabs(selected="single"), "single"

    for source in sources:
        if "extras" in source.send:
            source.send["extras"].click(to_extras, inputs=[source.images, source.selected, source.infotext],
                                        outputs=[extras.image, tabs, extras.mode_tabs, extras.mode])
