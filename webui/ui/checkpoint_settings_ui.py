"""The Settings tab's "Checkpoint settings" group: per checkpoint, the prediction type and zero terminal SNR
(for v-prediction files published without the `v_pred` marker). Everyone sees the values; only an admin
saves them, since they change how a shared model loads (`webui.models.checkpoint_settings`)."""

from __future__ import annotations

import gradio as gr

from webui.context import AppContext
from webui.errors import user_error
from webui.models.checkpoint_settings import AUTOMATIC, PREDICTIONS, CheckpointSetting
from webui.ui.access import caller_of, require_admin


def build_checkpoint_settings(ctx: AppContext, blocks: gr.Blocks) -> None:
    with gr.Group(elem_id="settings_checkpoint"):
        gr.Markdown("### Checkpoint settings")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=ctx.models.checkpoint_titles(), value=None,
                                     allow_custom_value=True, elem_id="setting_checkpoint_name")
            prediction = gr.Dropdown(label="Prediction type", choices=list(PREDICTIONS), value=AUTOMATIC,
                                     info="Automatic: as the file says (its v_pred key, else the family's default)",
                                     elem_id="setting_checkpoint_prediction")
            zero_snr = gr.Checkbox(label="Zero terminal SNR (rescaled betas)", value=False,
                                   elem_id="setting_checkpoint_zero_snr")
        save = gr.Button("Save checkpoint settings", visible=False, elem_id="setting_checkpoint_save")
        result = gr.Markdown(elem_id="setting_checkpoint_result")

    def show(title: str | None):
        if not title:
            return AUTOMATIC, False, ""
        try:
            _, setting = ctx.models.checkpoint_setting(title)
        except (LookupError, ValueError) as error:
            raise gr.Error(user_error(error)) from None
        return setting.prediction, setting.zero_terminal_snr, ""

    def store(title: str | None, chosen: str, rescale: bool, request: gr.Request) -> str:
        require_admin(request, "Changing a checkpoint's settings")
        if not title:
            raise gr.Error("Choose a checkpoint first.")
        try:
            record, setting = ctx.models.set_checkpoint_setting(
                title, CheckpointSetting(prediction=chosen, zero_terminal_snr=bool(rescale)))
        except (LookupError, ValueError) as error:
            raise gr.Error(user_error(error)) from None
        return (f"Saved for {record.name}: {setting.prediction}"
                + (", zero terminal SNR" if setting.zero_terminal_snr else "") + ". The next generation uses it.")

    def on_load(request: gr.Request):
        admin = caller_of(request).is_admin
        return (gr.update(choices=ctx.models.checkpoint_titles()), gr.update(interactive=admin),
                gr.update(interactive=admin), gr.update(visible=admin))

    checkpoint.change(show, inputs=checkpoint, outputs=[prediction, zero_snr, result])
    save.click(store, inputs=[checkpoint, prediction, zero_snr], outputs=result)
    blocks.load(on_load, outputs=[checkpoint, prediction, zero_snr, save])
