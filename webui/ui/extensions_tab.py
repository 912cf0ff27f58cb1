"""Extensions tab: what is installed and how each extension is doing (a failed one with its traceback,
slow hooks named), switches on and off, install from a git URL, update and uninstall. Everyone sees the
table; the controls (and the tracebacks) are an admin's. The rules live in `ExtensionService`."""

from __future__ import annotations

import datetime
import html

import gradio as gr

from webui.errors import user_error
from webui.extensions.service import UNINSTALLED, ExtensionInfo, ExtensionService
from webui.security.identity import User
from webui.ui.access import caller_of

INTRO = ("Extensions load when the app starts. Switching one **off** stops its hooks at once; its tabs, settings "
         "and routes go at the next start. Switching one **on**, installing and updating take effect at the next "
         "start. An extension runs code with the app's rights: install only what you trust.")
STATE_MARK = {"loaded": "✅ loaded", "disabled": "⏸️ disabled", "failed": "❌ failed", "refused": "⛔ refused",
              "not loaded yet": "🆕 not loaded yet", UNINSTALLED: "🗑️ uninstalled"}


def table_html(rows: list[ExtensionInfo], show_details: bool) -> str:
    """The extensions as an HTML table (everything escaped: names and problems come from extension files)."""
    if not rows:
        return "<p>No extension is installed.</p>"
    head = ("<tr><th>Extension</th><th>Version</th><th>State</th><th>Next start</th><th>Origin</th>"
            "<th>Problems and timings</th></tr>")
    body = []
    for row in rows:
        origin = "shipped" if row.builtin else (
            f"{html.escape(row.remote)} @ {row.commit[:10]}" + (f" ({_date(row.commit_date)})" if row.commit_date else "")
            if row.remote else "local folder")
        notes = []
        if row.problem:
            notes.append(f"<div class='sd-ext-problem'>{html.escape(row.problem)}</div>")
        if row.traceback and show_details:
            notes.append(f"<details><summary>traceback</summary><pre>{html.escape(row.traceback)}</pre></details>")
        if row.slow_hooks:
            notes.append("<div class='sd-ext-slow'>slow: " + html.escape("; ".join(row.slow_hooks)) + "</div>")
        if row.state == "loaded":
            notes.append(f"<div>import {row.import_seconds * 1000:.0f} ms; hooks: "
                         f"{html.escape(', '.join(row.hooks) or 'none')}</div>")
        title = f"<b>{html.escape(row.name)}</b>" + (f"<br><small>{html.escape(row.description)}</small>"
                                                       if row.description else "")
        body.append(f"<tr data-extension='{html.escape(row.name)}' data-state='{html.escape(row.state)}'>"
                    f"<td>{title}</td><td>{html.escape(row.version)}</td>"
                    f"<td class='sd-ext-state'>{STATE_MARK.get(row.state, html.escape(row.state))}</td>"
                    f"<td class='sd-ext-next'>{'on' if row.enabled else 'off'}"
                    f"{(' — ' + html.escape(row.pending)) if row.pending else ''}</td>"
                    f"<td>{origin}</td><td>{''.join(notes)}</td></tr>")
    return f"<table class='sd-extensions'>{head}{''.join(body)}</table>"


def _date(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def build_extensions_tab(service: ExtensionService, tab: gr.Tab) -> None:
    gr.Markdown(INTRO)
    refusal = service.changes_refusal()
    gr.Markdown(f"⚠️ {refusal}" if refusal else "", elem_id="extensions_refusal")
    table = gr.HTML(elem_id="extensions_table")
    refresh = gr.Button("🔄 Refresh", elem_id="extensions_refresh", size="sm")
    with gr.Group(visible=False) as admin_group:
        enabled = gr.CheckboxGroup(label="Switched on (tick to enable, untick to disable, then Apply)", choices=[],
                                   elem_id="extensions_enabled")
        apply = gr.Button("Apply", variant="primary", elem_id="extensions_apply")
        with gr.Row():
            url = gr.Textbox(label="Install from URL (git: https://..., git@host:owner/repo.git, file:///...)",
                             placeholder="https://github.com/owner/extension.git", elem_id="extensions_install_url",
                             scale=4)
            install = gr.Button("Install", elem_id="extensions_install", scale=1)
        with gr.Row():
            picked = gr.Dropdown(label="Installed extension", choices=[], elem_id="extensions_pick", scale=4)
            update = gr.Button("Update (git pull)", elem_id="extensions_update", scale=1)
            uninstall = gr.Button("Uninstall", variant="stop", elem_id="extensions_uninstall", scale=1)
    result = gr.Markdown(elem_id="extensions_result")

    def view(caller: User) -> list:
        rows = service.records()
        listed = [row for row in rows if row.state != UNINSTALLED]
        return [table_html(rows, caller.is_admin), gr.update(visible=caller.is_admin),
                gr.update(choices=[row.name for row in listed], value=[row.name for row in listed if row.enabled]),
                gr.update(choices=[row.name for row in listed if not row.builtin], value=None)]

    outputs = [table, admin_group, enabled, picked]

    def show(request: gr.Request):
        return view(caller_of(request))

    def act(request: gr.Request, action) -> list:
        """Run a change for the caller; a refusal is a gr.Error with its reason, the view is refreshed after."""
        caller = caller_of(request)
        try:
            message = action(caller)
        except PermissionError as error:
            raise gr.Error(str(error)) from None
        except (ValueError, LookupError, OSError) as error:
            raise gr.Error(user_error(error)) from None
        return [*view(caller), message]

    def apply_switches(names: list[str], request: gr.Request):
        return act(request, lambda caller: service.apply_enabled(caller, names or []))

    def install_from(address: str, request: gr.Request):
        return act(request, lambda caller: service.install(caller, address).message)

    def chosen(name: str | None) -> str:
        if not name:
            raise ValueError("choose an installed extension first")
        return name

    def update_one(name: str | None, request: gr.Request):
        return act(request, lambda caller: service.update(caller, chosen(name)).message)

    def uninstall_one(name: str | None, request: gr.Request):
        return act(request, lambda caller: service.uninstall(caller, chosen(name)).message)

    refresh.click(show, outputs=outputs)
    tab.select(show, outputs=outputs)
    apply.click(apply_switches, inputs=enabled, outputs=[*outputs, result])
    install.click(install_from, inputs=url, outputs=[*outputs, result])
    update.click(update_one, inputs=picked, outputs=[*outputs, result])
    uninstall.click(uninstall_one, inputs=picked, outputs=[*outputs, result])
