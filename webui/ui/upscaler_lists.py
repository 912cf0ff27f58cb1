"""Every upscaler dropdown (txt2img's Hires upscaler, the Extras tab's Upscaler 1 and 2, the Settings tab's
"Upscaler for img2img") kept in step with the upscaler folders.

The lists come from the upscaler service (`AppContext.upscalers`). Listing a model file means reading it
once, so the dropdowns are built with the built-in names and filled when a page loads, not while the
server starts. Both 🔄 buttons (the checkpoint one and the Extras one) re-scan the folders for an admin
and refresh all four dropdowns in one handler, so no list is read before the rescan finished. The Settings
tab fills its own dropdown's value on page load (the stored setting); here only its choices change, so a
refresh never shows a value that was not applied.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.generation.upscaler_choices import UpscalerNames, hires_upscaler_names
from webui.ui.access import caller_of
from webui.upscaling.catalog import BUILTIN_UPSCALERS, NONE_UPSCALER

DEFAULT_HIRES_UPSCALER = "Latent"


def extras_choices(ctx: AppContext) -> list[str]:
    """Every usable upscaler, built-ins first ("None", "Lanczos", "Nearest"), then model files by name."""
    return ctx.upscalers.names() if ctx.upscalers is not None else list(BUILTIN_UPSCALERS)


def hires_choices(ctx: AppContext) -> list[str]:
    """Latent modes, then the pixel filters, then the usable model upscalers."""
    return hires_upscaler_names(ctx.upscalers)


def kept(value: str | None, choices: list[str], fallback: str) -> Any:
    """A dropdown update to new choices that keeps the chosen value while it is still offered."""
    return gr.update(choices=choices, value=value if value in choices else fallback)


def pasted_hires_upscaler(upscalers: UpscalerNames | None):
    """The infotext converter for "Hires upscaler": selects a listed upscaler (the choices refreshed with
    it, so a model added since the page loaded is offered); one not installed here leaves the dropdown
    as it was, with a warning naming it."""
    def convert(name: str) -> Any:
        choices = hires_upscaler_names(upscalers)
        if name not in choices:
            gr.Warning(f"Hires upscaler {name!r} from the pasted parameters is not installed here; "
                       "the Upscaler setting was left as it was.")
            raise ValueError(name)
        return gr.update(choices=choices, value=name)
    return convert


def wire_upscaler_lists(ctx: AppContext, blocks: gr.Blocks, hires: gr.Dropdown, upscaler_1: gr.Dropdown,
                        upscaler_2: gr.Dropdown, img2img_setting: gr.Dropdown, checkpoint_refresh: gr.Button,
                        extras_refresh: gr.Button) -> None:
    """Fill the dropdowns on page load; each 🔄 re-scans (admins) and refreshes all four."""
    outputs = [hires, upscaler_1, upscaler_2]
    refreshed = [*outputs, img2img_setting]

    def lists(hires_value: str | None, first: str | None, second: str | None) -> list[Any]:
        extras = extras_choices(ctx)
        return [kept(hires_value, hires_choices(ctx), DEFAULT_HIRES_UPSCALER),
                kept(first, extras, NONE_UPSCALER), kept(second, extras, NONE_UPSCALER)]

    def all_lists(*values: str | None) -> list[Any]:
        return [*lists(*values), gr.update(choices=extras_choices(ctx))]

    def rescan(request: gr.Request, warn: bool) -> None:
        if caller_of(request).is_admin:
            if ctx.upscalers is not None:
                ctx.upscalers.refresh()
        elif warn:  # the checkpoint 🔄 warns plain users itself
            gr.Warning("Rescanning the model folders needs an admin account; this is the current list.")

    def from_checkpoint_refresh(request: gr.Request, *values: str | None) -> list[Any]:
        rescan(request, warn=False)
        return all_lists(*values)

    def from_extras_refresh(request: gr.Request, *values: str | None) -> list[Any]:
        rescan(request, warn=True)
        return all_lists(*values)

    blocks.load(lists, inputs=outputs, outputs=outputs)
    checkpoint_refresh.click(from_checkpoint_refresh, inputs=outputs, outputs=refreshed)
    extras_refresh.click(from_extras_refresh, inputs=outputs, outputs=refreshed)
