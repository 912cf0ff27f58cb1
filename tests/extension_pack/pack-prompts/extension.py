"""Prompt expansion, before-request, after-batch and model-loaded hooks of the test pack."""

import json

from webui.extensions import api

COLORS = ("red", "green", "blue")


def setup(ext: api.ExtensionSetup) -> None:
    log = ext.data_folder / "events.jsonl"

    def write(event: dict) -> None:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")

    def expand(context: api.PromptExpansion):
        if "PACKCOLORS" not in context.prompt:
            return None
        # One image per color, whatever the batch asked for (the count changes).
        return [context.prompt.replace("PACKCOLORS", color) for color in COLORS]

    def before(context: api.BeforeRequest):
        if "PACKBADSTEPS" in context.request.prompt:
            return context.request.with_changes(steps=100000)  # the app's checks refuse this change
        if "PACKSTEPS2" not in context.request.prompt:
            return None
        return context.request.with_changes(steps=2)

    def after_batch(context: api.BatchDone) -> None:
        write({"event": "batch", "seeds": context.seeds, "prompts": context.prompts, "images": len(context.images)})

    def loaded(context: api.ModelLoaded) -> None:
        write({"event": "model", "name": context.name, "hash": context.hash, "family": context.family})

    ext.on_prompt_expansion(expand)
    ext.on_before_request(before)
    ext.on_after_batch(after_batch)
    ext.on_model_loaded(loaded)
