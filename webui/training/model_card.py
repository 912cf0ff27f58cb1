"""A Hugging Face model card (README.md) for a training run, with a sample grid beside it.

A card is what people see first on the Hub and what tells them how to use the files: the YAML header
makes the Hub list the model under the right base model, tags and trigger word (its widget and
"instance prompt"), and the body gives the settings and copy-paste usage for SD Studio / A1111
(``<lora:name:0.8>``, embedding names) and for diffusers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from PIL import Image

from webui.models.checkpoint_files import CheckpointReadError, read_key_shapes
from webui.models.hub import looks_like_repo_id
from webui.models.families import DEFAULT_FAMILY, TXT2IMG, family_named
from webui.models.ldm_conversion import UnsupportedCheckpointError, detect_architecture

CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "samples.png"

METHOD_LORA = "lora"
METHOD_DREAMBOOTH = "dreambooth"
METHOD_DREAMBOOTH_LORA = "dreambooth_lora"
METHOD_TEXTUAL_INVERSION = "textual_inversion"
METHOD_PIVOTAL = "pivotal"

_METHOD_ALIASES = MappingProxyType({
    "lora": METHOD_LORA,
    "dreambooth": METHOD_DREAMBOOTH,
    "dreambooth_lora": METHOD_DREAMBOOTH_LORA,
    "textual_inversion": METHOD_TEXTUAL_INVERSION,
    "ti": METHOD_TEXTUAL_INVERSION,
    "embedding": METHOD_TEXTUAL_INVERSION,
    "pivotal": METHOD_PIVOTAL,
    "pivotal_tuning": METHOD_PIVOTAL,
})
_METHOD_LABELS = MappingProxyType({
    METHOD_LORA: "LoRA",
    METHOD_DREAMBOOTH: "DreamBooth (full fine-tune)",
    METHOD_DREAMBOOTH_LORA: "DreamBooth LoRA",
    METHOD_TEXTUAL_INVERSION: "Textual Inversion",
    METHOD_PIVOTAL: "Pivotal tuning (LoRA + textual inversion)",
})
_METHOD_TAGS = MappingProxyType({
    METHOD_LORA: ("lora", "template:sd-lora"),
    METHOD_DREAMBOOTH: ("dreambooth",),
    METHOD_DREAMBOOTH_LORA: ("lora", "dreambooth", "template:sd-lora"),
    METHOD_TEXTUAL_INVERSION: ("textual_inversion",),
    METHOD_PIVOTAL: ("lora", "textual_inversion", "pivotal-tuning", "template:sd-lora"),
})
_BASE_TAGS = ("stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers", "sd-studio")
_EMBEDDING_KEYS = frozenset({"emb_params", "clip_l", "clip_g", "string_to_param"})


def normalise_method(method: str) -> str:
    """"DreamBooth-LoRA", "dreambooth lora" and "dreambooth_lora" all name one method."""
    key = re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")
    return _METHOD_ALIASES.get(key, key)


def _yaml_string(value: str) -> str:
    """A double-quoted scalar; JSON's escaping is valid YAML, so any text survives."""
    return json.dumps(value, ensure_ascii=False)


def _markdown_cell(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def _python_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def save_sample_grid(images: Sequence[Image.Image], path: Path) -> Path:
    """Tile samples into a near-square grid (every tile the first image's size) and save it as PNG."""
    if not images:
        raise ValueError("no sample images for the grid")
    width, height = images[0].size
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for position, image in enumerate(images):
        tile = image.convert("RGB")
        if tile.size != (width, height):
            tile = tile.resize((width, height), Image.Resampling.LANCZOS)
        grid.paste(tile, ((position % columns) * width, (position // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def _tensor_names(path: Path) -> set[str]:
    try:
        return set(read_key_shapes(path))
    except CheckpointReadError:
        return set()


def _file_role(path: Path) -> str:
    """"lora", "embedding" or "checkpoint", from the file's tensor names (header only) where it has any."""
    if path.is_dir():
        return "checkpoint"
    if path.suffix.lower() in (".pt", ".bin"):
        return "embedding"
    names = _tensor_names(path)
    if names & _EMBEDDING_KEYS:
        return "embedding"
    if any(name.startswith("lora_") or ".lora_" in name for name in names):
        return "lora"
    return "checkpoint"


def _header(name: str, method: str, base_model: str, triggers: list[str], license: str,
            grid_name: str | None) -> list[str]:
    tags = list(_BASE_TAGS) + [tag for tag in _METHOD_TAGS.get(method, ()) if tag not in _BASE_TAGS]
    lines = ["---", f"license: {_yaml_string(license)}", f"base_model: {_yaml_string(base_model)}",
             "library_name: diffusers", "pipeline_tag: text-to-image", "tags:"]
    lines += [f"- {_yaml_string(tag)}" for tag in tags]
    if triggers:
        lines.append(f"instance_prompt: {_yaml_string(', '.join(triggers))}")
    if grid_name:
        prompt = ", ".join(triggers) or name
        lines += ["widget:", f"- text: {_yaml_string(prompt)}", "  output:", f"    url: {_yaml_string(grid_name)}"]
    lines.append("---")
    return lines


def _usage_webui(name: str, triggers: list[str], loras: list[Path], embeddings: list[Path],
                 checkpoints: list[Path]) -> list[str]:
    trigger_text = ", ".join(triggers)
    lines = ["### SD Studio / AUTOMATIC1111 / Forge", ""]
    if loras:
        lines.append(f"Put `{loras[0].name}` in `models/Lora` and add the tag to your prompt:")
        lines += ["", "```text", f"<lora:{loras[0].stem}:0.8> {trigger_text}".rstrip(), "```", ""]
    for embedding in embeddings:
        lines += [f"Put `{embedding.name}` in `embeddings/` and write `{embedding.stem}` in the prompt where the "
                  "learned concept belongs (the file name is the token).", ""]
    if checkpoints:
        lines += [f"Put `{checkpoints[0].name}` in `models/Stable-diffusion` and select it as the checkpoint"
                  + (f"; use `{trigger_text}` in the prompt." if trigger_text else "."), ""]
    if not (loras or embeddings or checkpoints):
        lines += [f"Use `{trigger_text or name}` in the prompt.", ""]
    return lines


def _pipeline_class_of(checkpoint: Path) -> str:
    """The diffusers pipeline class for a single-file checkpoint, from its header."""
    try:
        family = family_named(detect_architecture(read_key_shapes(checkpoint)).family)
    except (CheckpointReadError, UnsupportedCheckpointError):
        family = DEFAULT_FAMILY
    return family.pipeline_class_name(TXT2IMG)


def _checkpoint_reference(checkpoint: Path, folder: Path, source: str) -> str:
    """How the snippet names a checkpoint: a path in this folder, or its place in the Hub repo."""
    if source == ".":
        return "." if checkpoint == folder else _display_name(checkpoint, folder)
    if checkpoint.is_dir():
        return source
    return f"https://huggingface.co/{source}/blob/main/{_display_name(checkpoint, folder)}"


def _usage_diffusers(base_model: str, folder: Path, source: str, triggers: list[str], loras: list[Path],
                     embeddings: list[Path], checkpoints: list[Path]) -> list[str]:
    """A runnable snippet; ``source`` is where the files are (the Hub repo id, or "." for this folder)."""
    # An embedding is addressed by the token it is loaded under (its file name, as in A1111).
    prompt_words = [embedding.stem for embedding in embeddings] + triggers
    prompt = ", ".join(list(dict.fromkeys(prompt_words)) + ["high quality photo"])
    origin = _python_string(source)
    if checkpoints and not loras:
        reference = _python_string(_checkpoint_reference(checkpoints[0], folder, source))
        if checkpoints[0].is_dir():
            code = ["import torch", "from diffusers import AutoPipelineForText2Image", "",
                    f"pipe = AutoPipelineForText2Image.from_pretrained({reference}, "
                    "torch_dtype=torch.float16).to(\"cuda\")"]
        else:
            pipeline_class = _pipeline_class_of(checkpoints[0])
            code = ["import torch", f"from diffusers import {pipeline_class}", "",
                    f"pipe = {pipeline_class}.from_single_file({reference}, torch_dtype=torch.float16).to(\"cuda\")"]
    else:
        code = ["import torch", "from diffusers import AutoPipelineForText2Image", "",
                f"pipe = AutoPipelineForText2Image.from_pretrained({_python_string(base_model)}, "
                "torch_dtype=torch.float16).to(\"cuda\")"]
    for lora in loras[:1]:
        code.append(f"pipe.load_lora_weights({origin}, weight_name={_python_string(_display_name(lora, folder))})")
    for embedding in embeddings:
        token, weight = _python_string(embedding.stem), _python_string(_display_name(embedding, folder))
        if "clip_g" in _tensor_names(embedding):
            code += [
                "from huggingface_hub import hf_hub_download" if source != "." else "import os",
                "from safetensors.torch import load_file",
                "# SDXL embeddings hold one set of vectors per text encoder",
                f"state = load_file(hf_hub_download({origin}, {weight}))" if source != "."
                else f"state = load_file(os.path.join({origin}, {weight}))",
                f"pipe.load_textual_inversion(state[\"clip_l\"], token={token}, text_encoder=pipe.text_encoder, "
                "tokenizer=pipe.tokenizer)",
                f"pipe.load_textual_inversion(state[\"clip_g\"], token={token}, text_encoder=pipe.text_encoder_2, "
                "tokenizer=pipe.tokenizer_2)",
            ]
        else:
            code.append(f"pipe.load_textual_inversion({origin}, weight_name={weight}, token={token})")
    code += [f"image = pipe({_python_string(prompt)}).images[0]", "image.save(\"sample.png\")"]
    intro = ("Run from the folder that holds this card:" if source == "." else f"From the Hub repo `{source}`:")
    return ["### diffusers", "", intro, "", "```python", *code, "```", ""]


def write_model_card(folder_or_path: Path, *, name: str, method: str, base_model: str, trigger_words: Sequence[str],
                     settings: Mapping[str, object], sample_images: Sequence[Image.Image], license: str,
                     files: Sequence[Path], repo_id: str | None = None) -> Path:
    """Write ``README.md`` (a Hub model card) and, with samples, ``samples.png`` beside it; return the card.

    ``folder_or_path`` is the output folder or the card's path. ``files`` are the run's outputs (LoRA,
    embedding, checkpoint; relative paths are taken inside the folder), listed with their sizes and
    used in the usage snippets, which load from ``repo_id`` when given (the card is uploaded there),
    else from the card's folder.
    """
    target = Path(folder_or_path)
    card_path = target if target.suffix.lower() == ".md" else target / CARD_NAME
    folder = card_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(trigger_words, str):
        trigger_words = [trigger_words]
    triggers = [word.strip() for word in trigger_words if word.strip()]
    method_key = normalise_method(method)
    method_label = _METHOD_LABELS.get(method_key, method)
    file_paths = [Path(file) if Path(file).is_absolute() else folder / file for file in files]
    grid_name = None
    if sample_images:
        grid_name = SAMPLE_GRID_NAME
        save_sample_grid(list(sample_images), folder / grid_name)
    roles = {file: _file_role(file) for file in file_paths}
    loras = [file for file in file_paths if roles[file] == "lora"]
    embeddings = [file for file in file_paths if roles[file] == "embedding"]
    checkpoints = [file for file in file_paths if roles[file] == "checkpoint"]

    lines = _header(name, method_key, base_model, triggers, license, grid_name)
    lines += ["", f"# {name}", "",
              f"A {method_label} of [{base_model}](https://huggingface.co/{base_model}) trained with SD Studio."
              if looks_like_repo_id(base_model) else f"A {method_label} of `{base_model}` trained with SD Studio.", ""]
    if triggers:
        lines += [f"Trigger words: {', '.join(f'`{word}`' for word in triggers)}", ""]
    if grid_name:
        lines += ["## Samples", "", f"![samples]({grid_name})", ""]
    lines += ["## Usage", ""]
    lines += _usage_webui(name, triggers, loras, embeddings, checkpoints)
    lines += _usage_diffusers(base_model, folder, repo_id or ".", triggers, loras, embeddings, checkpoints)
    lines += ["## Training settings", "", "| setting | value |", "| --- | --- |",
              f"| method | {_markdown_cell(method_label)} |", f"| base model | {_markdown_cell(base_model)} |"]
    lines += [f"| {_markdown_cell(key)} | {_markdown_cell(value)} |" for key, value in settings.items()]
    lines.append("")
    if file_paths:
        lines += ["## Files", "", "| file | size |", "| --- | --- |"]
        for file in file_paths:
            lines.append(f"| `{_display_name(file, folder)}` | {_size_label(file)} |")
        lines.append("")
    lines += ["## License", "", f"{license}", ""]
    card_path.write_text("\n".join(lines), encoding="utf-8")
    return card_path


def _display_name(file: Path, folder: Path) -> str:
    try:
        return file.relative_to(folder).as_posix()
    except ValueError:
        return file.name


def _size_label(file: Path) -> str:
    if file.is_dir():
        size = sum(part.stat().st_size for part in file.rglob("*") if part.is_file())
    elif file.is_file():
        size = file.stat().st_size
    else:
        return "missing"
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"
