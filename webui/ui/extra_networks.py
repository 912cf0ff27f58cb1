"""Extra networks panel under the prompt: cards for checkpoints, LoRAs, embeddings and the network types
extensions add.

Clicking a LoRA card appends `<lora:name:1>` to the prompt, an extension network's card
`<kind:name:1>`, an embedding card its name, a checkpoint card loads that checkpoint, as in A1111. Cards
show the preview image beside the file when there is one, else a tile with the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from webui.context import AppContext
from webui.extensions.generation_hooks import network_items, network_types
from webui.ui.access import caller_of
from webui.errors import user_error

TILE_SIZE = 160


@dataclass(frozen=True)
class Card:
    name: str
    image: Image.Image | str
    caption: str


def name_tile(name: str) -> Image.Image:
    """A plain tile with the network's name, for files without a preview image."""
    tile = Image.new("RGB", (TILE_SIZE, TILE_SIZE), (58, 64, 78))
    draw = ImageDraw.Draw(tile)
    words, lines = name.replace("_", " ").replace("-", " ").split(), [""]
    for word in words:
        lines[-1:] = [lines[-1] + " " + word] if len(lines[-1]) + len(word) < 18 else [lines[-1], word]
    draw.multiline_text((10, 10), "\n".join(line.strip() for line in lines), fill=(235, 235, 235), spacing=4)
    return tile


def _card(name: str, preview: Path | None, description: str) -> Card:
    caption = f"{name}" + (f" · {description}" if description else "")
    return Card(name, str(preview) if preview else name_tile(name), caption)


def lora_cards(ctx: AppContext, query: str) -> list[Card]:
    return [_card(card.name, card.preview, card.description) for card in ctx.loras.cards(query)]


def embedding_cards(ctx: AppContext, query: str) -> list[Card]:
    catalog = ctx.manager.embedding_catalog
    if catalog is None:
        return []
    catalog.refresh()
    cards = []
    for name, embedding in sorted(catalog.embeddings.items()):
        widths = ", ".join(f"{w}" for w in embedding.width().values())
        description = f"{embedding.vector_count} vector(s), width {widths}"
        if query.lower() in f"{name} {description}".lower():
            cards.append(_card(name, None, description))
    return cards


def checkpoint_cards(ctx: AppContext, query: str) -> list[Card]:
    from webui.models.lora_catalog import preview_image_for

    cards = []
    for record in ctx.catalog.usable_records():
        description = record.architecture.label if record.architecture else ""
        if query.lower() in f"{record.title} {description}".lower():
            preview = preview_image_for(record.path) if record.path.is_file() else None
            cards.append(_card(record.title, preview, description))
    return cards


def extension_network_cards(ctx: AppContext, kind: str, query: str) -> list[Card]:
    """The cards of one extension network type (its preview files read here, so no path is served)."""
    return [Card(item.name, _preview(item.preview) or name_tile(item.name),
                 item.name + (f" · {item.description}" if item.description else ""))
            for item in network_items(ctx.extensions, kind)
            if query.lower() in f"{item.name} {item.description}".lower()]


def _preview(path: Path | None) -> Image.Image | None:
    try:
        with Image.open(path) as image:  # type: ignore[arg-type]
            return image.convert("RGB")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def build_extra_networks(ctx: AppContext, prompt: gr.Textbox, checkpoint: gr.Dropdown | None,
                         prefix: str = "txt2img") -> None:
    """The panel under a tab's prompt, its clicks wired into `prompt` (and the checkpoint dropdown, when
    given); elem_ids are `<prefix>_extra_networks...`, as txt2img and img2img each have one."""
    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks") as panel:
        with gr.Row():
            search = gr.Textbox(label="Search", scale=4, elem_id=f"{prefix}_extra_networks_search")
            refresh = gr.Button("🔄 Refresh", scale=0, min_width=100, elem_id=f"{prefix}_extra_networks_refresh")
        galleries = {}
        extension_kinds = network_types(ctx.extensions)
        with gr.Tabs():
            for kind, label in (("checkpoints", "Checkpoints"), ("lora", "LoRA"), ("embeddings", "Textual Inversion"),
                                *extension_kinds):
                with gr.Tab(label, elem_id=f"{prefix}_extra_networks_tab_{kind}"):
                    galleries[kind] = (
                        gr.Gallery(columns=6, height=260, allow_preview=False, show_label=False,
                                   elem_id=f"{prefix}_extra_networks_{kind}"),
                        gr.State([]),
                    )
    builders = {"checkpoints": checkpoint_cards, "lora": lora_cards, "embeddings": embedding_cards,
                **{kind: (lambda ctx, query, kind=kind: extension_network_cards(ctx, kind, query))
                   for kind, _ in extension_kinds}}

    def fill(query: str):
        outputs = []
        for build in builders.values():
            cards = build(ctx, query or "")
            outputs += [[(card.image, card.caption) for card in cards], [card.name for card in cards]]
        return outputs

    all_outputs = [component for pair in galleries.values() for component in pair]
    panel.expand(fill, inputs=search, outputs=all_outputs)
    refresh.click(fill, inputs=search, outputs=all_outputs)
    search.submit(fill, inputs=search, outputs=all_outputs)

    def append(text: str, addition: str) -> str:
        text = (text or "").rstrip()
        return f"{text} {addition}" if text else addition

    def insert_lora(names: list[str], text: str, event: gr.SelectData) -> str:
        return append(text, f"<lora:{names[event.index]}:1>")

    def insert_embedding(names: list[str], text: str, event: gr.SelectData) -> str:
        return append(text, names[event.index])

    lora_gallery, lora_names = galleries["lora"]
    lora_gallery.select(insert_lora, inputs=[lora_names, prompt], outputs=prompt)
    embedding_gallery, embedding_names = galleries["embeddings"]
    embedding_gallery.select(insert_embedding, inputs=[embedding_names, prompt], outputs=prompt)
    for kind, _ in extension_kinds:
        def insert_network(names: list[str], text: str, event: gr.SelectData, kind: str = kind) -> str:
            return append(text, f"<{kind}:{names[event.index]}:1>")

        network_gallery, network_names = galleries[kind]
        network_gallery.select(insert_network, inputs=[network_names, prompt], outputs=prompt)
    if checkpoint is not None:
        checkpoint_gallery, checkpoint_names = galleries["checkpoints"]

        def load_checkpoint(names: list[str], event: gr.SelectData, request: gr.Request):
            owner = caller_of(request).name
            try:
                record = ctx.models.select_checkpoint(names[event.index], owner)
            except Exception as error:  # the current model stays loaded
                raise gr.Error(user_error(error)) from None
            return gr.update(choices=ctx.models.checkpoint_choices(), value=record.title)

        checkpoint_gallery.select(load_checkpoint, inputs=checkpoint_names, outputs=checkpoint)
