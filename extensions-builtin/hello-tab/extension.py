"""The example extension docs/EXTENSIONS.md's tutorial walks through, written only against the public
module: a "Hello" tab that greets the signed-in user and counts the checkpoints, a setting (the greeting,
changed in the Settings tab), and a route `GET /extensions/hello-tab/greeting` behind the app's login.
`style.css` and `javascript/hello.js` in this folder are added to the page by convention (A1111's)."""

from __future__ import annotations

import gradio as gr
from fastapi import APIRouter, Request

from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_setting(api.Setting("greeting", "Greeting the Hello tab and its route say", "Hello"))

    def greeting_for(name: str) -> str:
        return f"{ext.setting('greeting')}, {name}!"   # read at each call: a change applies at once

    def build_tab(context: api.TabContext) -> None:
        gr.Markdown("An example tab from the **hello-tab** extension (see docs/EXTENSIONS.md).",
                    elem_classes=["hello-tab-note"])
        button = gr.Button("Say hello", elem_id="hello_tab_button")
        answer = gr.Textbox(label="Answer", interactive=False, elem_id="hello_tab_answer")

        def say_hello(request: gr.Request) -> str:
            count = len(context.services.checkpoint_titles())
            return f"{greeting_for(api.caller_of(request).name)} This server has {count} checkpoint(s)."

        button.click(say_hello, inputs=None, outputs=answer)

    router = APIRouter()

    @router.get("/greeting")
    def greeting(request: Request) -> dict[str, str]:
        return {"greeting": greeting_for(api.caller_of(request).name)}

    ext.add_tab("Hello", build_tab)
    ext.add_router(router)
