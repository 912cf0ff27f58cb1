"""Queue tab: every job of the signed-in user (an admin: everyone's) with its state, place, progress and
ETA; cancel a waiting job or interrupt a running one; resume a stopped training run from its last saved
state (`webui.training.resume`); recent results with their parameters, to send on.

The table refreshes on a timer while jobs are live and stops when none is, so an idle tab costs nothing.
Who sees and stops what is decided by the queue service (`webui.jobs.queue_service`), as for the API.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.errors import user_error
from webui.jobs.job import FINAL_STATES
from webui.security.paths import is_within
from webui.training.monitor import TrainingBusyError
from webui.training.resume import NotResumable, resume_job
from webui.ui.access import caller_of

COLUMNS = ["Job", "Kind", "Owner", "State", "Position", "Progress", "ETA", "Submitted", "Summary"]
REFRESH_SECONDS = 1.5
HISTORY_IMAGES = 24


@dataclass
class QueueTab:
    infotext: gr.Textbox     # the parameters of the result image the user clicked
    picked: gr.State         # that image's file path ("" before a click)
    send_txt2img: gr.Button
    send_img2img: gr.Button


def job_rows(views: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per job, newest first; ids are shortened to their first 8 characters."""
    rows = []
    for view in views:
        progress = view["progress"]
        percent = f"{int(progress['fraction'] * 100)}%" if progress else ("100%" if view["state"] == "done" else "")
        eta = f"{view['eta']:.0f} s" if view["eta"] is not None else ""
        position = "running" if view["position"] == 0 else (str(view["position"]) if view["position"] else "")
        submitted = datetime.datetime.fromtimestamp(view["created_at"]).strftime("%H:%M:%S")
        rows.append([view["id"][:8], view["kind"], view["owner"] or "(server)", view["state"], position, percent,
                     eta, submitted, view["summary"]])
    return rows


def build_queue_tab(ctx: AppContext, tab: gr.Tab) -> QueueTab:
    with gr.Row():
        refresh = gr.Button("🔄 Refresh", elem_id="queue_refresh", scale=0, min_width=120)
        cancel = gr.Button("Cancel selected job", variant="stop", elem_id="queue_cancel", scale=0, min_width=200)
        resume = gr.Button("Resume selected training", elem_id="queue_resume", scale=0, min_width=200)
        status = gr.Markdown(elem_id="queue_status")
    table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="queue_table")
    selected_id = gr.State("")
    ids = gr.State([])
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    gr.Markdown("### Recent results")
    with gr.Row():
        gallery = gr.Gallery(label="Results", columns=6, height=320, allow_preview=True, elem_id="queue_gallery")
        with gr.Column(scale=0, min_width=280):
            infotext = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="queue_infotext")
            send_txt2img = gr.Button("Send to txt2img", elem_id="queue_send_txt2img")
            send_img2img = gr.Button("Send to img2img", elem_id="queue_send_img2img")
    shown, texts, picked = gr.State([]), gr.State([]), gr.State("")

    def load(previous: list[str], request: gr.Request):
        user = caller_of(request)
        views = ctx.jobs.list(user, limit=100)
        live = any(view["state"] not in FINAL_STATES for view in views)
        results = [(path, text) for view in views if view["state"] in ("done", "interrupted")
                   for path, text in zip(view["image_files"], view["infotexts"] + [""] * len(view["image_files"]))
                   if is_within(Path(path), ctx.jobs.outputs_folder) and Path(path).is_file()][:HISTORY_IMAGES]
        paths = [path for path, _ in results]
        gallery_update = gr.update() if paths == previous else [_thumbnail(path) for path in paths]
        return (job_rows(views), [view["id"] for view in views], gr.Timer(active=live), gallery_update, paths,
                [text for _, text in results])

    def select_row(row_ids: list[str], event: gr.SelectData) -> tuple[str, str]:
        """The clicked row's job, found by the short id the row shows, so a refresh that moved the rows between
        the click and this call cannot pick a neighbour; the status line says which job Cancel/Resume act on."""
        shown_id = event.row_value[0] if event.row_value else None
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        matches = [job_id for job_id in row_ids if shown_id and job_id.startswith(str(shown_id))]
        job_id = matches[0] if matches else (row_ids[row] if 0 <= row < len(row_ids) else "")
        return job_id, (f"Selected job {job_id[:8]}." if job_id else "")

    def cancel_selected(job_id: str, request: gr.Request):
        if not job_id:
            raise gr.Error("Click a job in the table first, then Cancel.")
        try:
            outcome = ctx.jobs.stop(caller_of(request), job_id)
        except (LookupError, PermissionError) as error:
            raise gr.Error(user_error(error)) from None
        return {None: f"Job {job_id[:8]} had already finished.",
                "cancelled": f"Job {job_id[:8]} was cancelled; it will not run.",
                "interrupted": f"Job {job_id[:8]} is being interrupted; it keeps what it finished."}[outcome]

    def resume_selected(job_id: str, request: gr.Request):
        if not job_id:
            raise gr.Error("Click a cancelled training job in the table first, then Resume.")
        try:
            new, state = resume_job(ctx.training, ctx.jobs, caller_of(request), job_id)
        except TrainingBusyError as error:  # another run holds the trainer
            raise gr.Error(str(error)) from None
        except (LookupError, PermissionError, NotResumable) as error:
            raise gr.Error(user_error(error)) from None
        return f"Job {job_id[:8]} resumes as job {new.job_id[:8]}, from the saved state {state.name}."

    def pick_result(paths: list[str], infotexts: list[str], event: gr.SelectData) -> tuple[str, str]:
        index = event.index if isinstance(event.index, int) else 0
        return (infotexts[index], paths[index]) if 0 <= index < len(paths) else ("", "")

    outputs = [table, ids, timer, gallery, shown, texts]
    for trigger in (refresh.click, tab.select, timer.tick):
        trigger(load, inputs=shown, outputs=outputs)
    table.select(select_row, inputs=ids, outputs=[selected_id, status])
    cancel.click(cancel_selected, inputs=selected_id, outputs=status).then(load, inputs=shown, outputs=outputs)
    resume.click(resume_selected, inputs=selected_id, outputs=status).then(load, inputs=shown, outputs=outputs)
    gallery.select(pick_result, inputs=[shown, texts], outputs=[infotext, picked])
    return QueueTab(infotext, picked, send_txt2img, send_img2img)


def _thumbnail(path: str) -> Image.Image:
    """The gallery gets image copies, not file paths, so gradio serves them from its cache (paths under
    the data folder are not in its allowed list)."""
    with Image.open(path) as image:
        image.load()
        return image.copy()
