"""Tabs that extensions add (`ext.add_tab`), after the app's own tabs.

Each build function runs through the registry (isolated and timed) inside the tab the app opened for it.
A build that raises switches its extension off and its tab is hidden, so the page still builds and
every other tab works.
"""

from __future__ import annotations

import gradio as gr

from webui.context import AppContext
from webui.extensions import api
from webui.extensions.host import extension_data_root
from webui.extensions.registry import HookFailure


def tab_elem_id(extension: str, index: int) -> str:
    return "tab_ext_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in extension) + f"_{index}"


def build_extension_tabs(ctx: AppContext) -> None:
    """Call inside the app's gr.Tabs, after its own tabs."""
    services = api.Services(ctx)
    data_root = extension_data_root(ctx.settings)
    for index, row in enumerate(ctx.extensions.rows(api.TAB)):
        folder = data_root / row.extension
        folder.mkdir(parents=True, exist_ok=True)
        with gr.Tab(row.payload, id=f"ext-{index}", elem_id=tab_elem_id(row.extension, index)) as tab:
            try:
                ctx.extensions.call_one(row, api.TabContext(services, row.extension, folder))
            except HookFailure:
                tab.visible = False  # what the build made so far stays out of sight
