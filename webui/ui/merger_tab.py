"""Checkpoint Merger tab: pick two or three checkpoints, a method and a multiplier, save the result."""

from __future__ import annotations

import gradio as gr

from webui.context import AppContext
from webui.models.merger import ADD_DIFFERENCE, MERGE_METHODS, WEIGHTED_SUM, MergeRecipe
from webui.ui.access import require_admin
from webui.errors import user_error

NO_MODEL = "None"


def build_merger_tab(ctx: AppContext, checkpoint: gr.Dropdown, tab: gr.Tab) -> None:
    titles = ctx.models.checkpoint_titles()
    with gr.Row():
        # Custom values allowed: a title gains its hash once the file was hashed, and the catalog (not a
        # possibly stale choice list) decides what a name means, with a message naming the known ones.
        primary = gr.Dropdown(label="Primary model (A)", choices=titles, elem_id="merger_primary",
                              allow_custom_value=True)
        secondary = gr.Dropdown(label="Secondary model (B)", choices=titles, elem_id="merger_secondary",
                                allow_custom_value=True)
        tertiary = gr.Dropdown(label="Tertiary model (C)", choices=[NO_MODEL] + titles, value=NO_MODEL,
                               allow_custom_value=True,
                               elem_id="merger_tertiary")
    name = gr.Textbox(label="Custom name", elem_id="merger_name")
    multiplier = gr.Slider(label="Multiplier (M)", minimum=0.0, maximum=1.0, step=0.05, value=0.3, elem_id="merger_multiplier")
    method = gr.Radio(label="Interpolation method", choices=list(MERGE_METHODS), value=WEIGHTED_SUM, elem_id="merger_method",
                      info=f"{WEIGHTED_SUM}: A*(1-M)+B*M · {ADD_DIFFERENCE}: A+(B-C)*M")
    with gr.Row():
        save_as = gr.Radio(label="Save as", choices=["fp16", "fp32"], value="fp16", elem_id="merger_dtype")
        bake_vae = gr.Dropdown(label="Bake in VAE", choices=[NO_MODEL] + ctx.models.vae_names()[2:], value=NO_MODEL,
                               elem_id="merger_vae")
    merge = gr.Button("Merge", variant="primary", elem_id="merger_merge")
    result = gr.Markdown(elem_id="merger_result")

    def run_merge(a, b, c, output_name, m, chosen_method, dtype, vae, request: gr.Request):
        owner = require_admin(request, "Merging checkpoints").name
        if not a or not b:
            raise gr.Error("Choose a primary and a secondary model.")
        recipe = MergeRecipe(method=chosen_method, multiplier=float(m), primary=a, secondary=b,
                             tertiary=None if c in (None, NO_MODEL) else c, save_dtype=dtype,
                             baked_vae=None if vae in (None, NO_MODEL) else vae)
        try:
            record = ctx.models.merge_checkpoints(recipe, (output_name or "").strip(), owner)
        except Exception as error:  # shown to the user; nothing is half-written
            raise gr.Error(user_error(error)) from None
        return f"Saved **{record.title}** to `{record.path}`.", gr.update(choices=ctx.models.checkpoint_choices())

    def current_choices():
        titles = ctx.models.checkpoint_titles()
        return (gr.update(choices=titles), gr.update(choices=titles), gr.update(choices=[NO_MODEL] + titles),
                gr.update(choices=[NO_MODEL] + ctx.models.vae_names()[2:]))

    tab.select(current_choices, outputs=[primary, secondary, tertiary, bake_vae])  # models added since start
    merge.click(run_merge, inputs=[primary, secondary, tertiary, name, multiplier, method, save_as, bake_vae],
                outputs=[result, checkpoint])
