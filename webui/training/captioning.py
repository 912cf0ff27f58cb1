"""Caption training images, with a BLIP model when one is available and a template otherwise.

Captions decide what a LoRA learns to tie to its trigger word, so the Train tab offers to write them:
a BLIP captioning model (from a local folder, or a Hub id when the server was started with
`--allow-hub`: see `webui.security.network`) describes each image and the trigger word is put in front (``"sks, a dog sitting on grass"``). Without a usable model the captions
fall back to a template (``"sks, a dog"``); the result always says which was used and why, so a
missing model never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webui.security.network import NetworkPolicy
from webui.security.paths import is_within
from webui.training.config import check_caption_extension

DEFAULT_TEMPLATE = "{trigger}, a {class}"
TEMPLATE_SOURCE = "template"
CAPTION_BATCH_SIZE = 8
MAX_CAPTION_TOKENS = 40


@dataclass(frozen=True)
class CaptionResult:
    """Captions by image path, where they came from ("template" or the model's name), and why."""

    captions: dict[Path, str]
    source: str
    notes: list[str] = field(default_factory=list)


def template_caption(template: str, trigger: str, class_word: str) -> str:
    """Fill ``{trigger}`` and ``{class}``; a template with other fields is reported, not half-filled."""
    try:
        caption = template.format_map({"trigger": trigger, "class": class_word})
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"caption template {template!r} may only use {{trigger}} and {{class}} ({error})") from None
    return " ".join(caption.split()).strip(" ,")


def with_trigger(trigger: str, description: str) -> str:
    """The trigger word in front of a generated description, unless the description already starts with it."""
    description = " ".join(description.split()).strip(" ,")
    if not trigger:
        return description
    if description.lower().startswith(trigger.lower()):
        return description
    return f"{trigger}, {description}" if description else trigger


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _check_hub_reachable(timeout_s: float = 3.0) -> None:
    """Fail fast when the Hub cannot be reached: the Hub client retries for minutes before giving up.

    Skipped behind a proxy, where a direct connection says nothing about reachability.
    """
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise OSError("HF_HUB_OFFLINE is set")
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            pass
    except OSError as error:
        raise OSError(f"cannot reach {endpoint.hostname} ({error}); offline?") from None


def check_model_allowed(model_dir: Path | None, model_id: str | None, network: NetworkPolicy) -> None:
    """A Hub id needs the Hub (even a cached one lives outside the app's folders); a folder does not."""
    if model_dir is None and model_id:
        network.require_hub(f"captioning model {model_id!r}",
                            "put a BLIP model folder under models/ and enter that folder instead")


def _load_blip(model_dir: Path | None, model_id: str | None, device: str):
    """(processor, model, name) of a BLIP captioning model; raises what loading raises.

    A Hub id is looked up in the local cache first, so a model downloaded once works offline.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from webui.models.module_construction import ModuleConstructionBusy, constructing_modules

    if model_dir is not None:
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        processor = BlipProcessor.from_pretrained(str(folder), local_files_only=True)
        with constructing_modules():  # transformers disables torch's weight init process-wide while it builds
            model = BlipForConditionalGeneration.from_pretrained(str(folder), local_files_only=True)
        name = folder.name
    else:
        name = str(model_id)
        try:
            processor = BlipProcessor.from_pretrained(name, local_files_only=True)
            with constructing_modules():
                model = BlipForConditionalGeneration.from_pretrained(name, local_files_only=True)
        except ModuleConstructionBusy:
            raise
        except OSError:  # not in the local cache
            _check_hub_reachable()
            processor = BlipProcessor.from_pretrained(name)
            with constructing_modules():  # held during the one-time download too (transformers cannot split them)
                model = BlipForConditionalGeneration.from_pretrained(name)
    return processor, model.to(device).eval(), name


def _describe_images(images: list, processor, model, device: str, max_new_tokens: int) -> list[str]:
    import torch

    inputs = processor(images=images, return_tensors="pt").to(device)
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
    return [text.strip() for text in processor.batch_decode(generated, skip_special_tokens=True)]


def caption_images(paths: Sequence[Path], *, trigger: str, class_word: str, template: str = DEFAULT_TEMPLATE,
                   model_dir: Path | None = None, model_id: str | None = None, device: str = "cpu",
                   max_new_tokens: int = MAX_CAPTION_TOKENS, network: NetworkPolicy = NetworkPolicy()) -> CaptionResult:
    """Caption every image: BLIP description with the trigger in front, else the filled template.

    Greedy decoding, so the same images and model always give the same captions. A Hub id (`model_id`)
    is refused with `HubDisabled` unless `network` allows the Hub, before anything is looked up.
    """
    from PIL import Image, UnidentifiedImageError

    paths = [Path(path) for path in paths]
    fallback = template_caption(template, trigger, class_word)
    notes: list[str] = []
    if model_dir is None and not model_id:
        return CaptionResult({path: fallback for path in paths}, TEMPLATE_SOURCE,
                             ["no captioning model given (a BLIP folder or Hub id); every caption is the template"])
    check_model_allowed(model_dir, model_id, network)
    try:
        processor, model, name = _load_blip(model_dir, model_id, device)
    except (OSError, ValueError, RuntimeError, ImportError) as error:
        wanted = str(model_dir) if model_dir is not None else model_id
        return CaptionResult({path: fallback for path in paths}, TEMPLATE_SOURCE,
                             [f"captioning model {wanted} could not be loaded ({_first_line(error)}); "
                              "every caption is the template"])
    captions: dict[Path, str] = {}
    for start in range(0, len(paths), CAPTION_BATCH_SIZE):
        batch: list[tuple[Path, object]] = []
        for path in paths[start:start + CAPTION_BATCH_SIZE]:
            try:
                with Image.open(path) as image:
                    batch.append((path, image.convert("RGB")))
            except (OSError, UnidentifiedImageError) as error:
                captions[path] = fallback
                notes.append(f"{path.name}: not a readable image ({_first_line(error)}); template caption used")
        if not batch:
            continue
        descriptions = _describe_images([image for _, image in batch], processor, model, device, max_new_tokens)
        for (path, _), description in zip(batch, descriptions):
            if description:
                captions[path] = with_trigger(trigger, description)
            else:
                captions[path] = fallback
                notes.append(f"{path.name}: {name} produced an empty caption; template caption used")
    return CaptionResult({path: captions[path] for path in paths}, name, notes)


def write_caption_files(captions: dict[Path, str], *, extension: str = ".txt", overwrite: bool = False) -> list[Path]:
    """Write each caption beside its image (``image.txt``, the kohya / A1111 convention); return the files.

    Existing caption files are kept unless ``overwrite``: users often hand-edit them.
    """
    check_caption_extension(extension)
    written = []
    for image_path, caption in captions.items():
        caption_path = Path(image_path).with_suffix(extension)
        if (caption_path.exists() and not overwrite) or not is_within(caption_path, Path(image_path).parent):
            continue  # kept, or a (dangling) symlink that would write outside the dataset
        caption_path.write_text(caption + "\n", encoding="utf-8")
        written.append(caption_path)
    return written
