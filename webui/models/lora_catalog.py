"""LoRA folder catalog and `<lora:name:te[:unet]>` prompt tags -> what the manager should merge.

Names are A1111's: the file's path relative to the LoRA folder without extension (a bare file name also
matches). Hashes are A1111's 12-hex-digit short sha256, cached on disk, for the infotext's `Lora hashes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from webui.generation.prompt_syntax import NetworkTag
from webui.models.checkpoint_files import CheckpointReadError, read_metadata
from webui.models.hashing import HashCache

LORA_TAG_KINDS = ("lora", "lyco")
LORA_SUFFIXES = (".safetensors",)


class LoraTagError(ValueError):
    """A `<lora:...>` tag that names no file or carries a weight that is not a number."""


@dataclass(frozen=True)
class LoraUse:
    """One LoRA requested for a generation, with its weights for the text encoder(s) and the UNet."""

    name: str
    path: Path
    te_weight: float
    unet_weight: float
    shorthash: str


@dataclass(frozen=True)
class NetworkCard:
    """What the extra-networks panel shows for one file: name, preview and the metadata people look for."""

    name: str
    path: Path
    preview: Path | None
    description: str


def preview_image_for(path: Path) -> Path | None:
    """A1111 previews: `name.png` or `name.preview.png` beside the file."""
    for candidate in (path.with_suffix(".png"), path.with_suffix(".preview.png")):
        if candidate.is_file():
            return candidate
    return None


def describe_lora_metadata(metadata: dict[str, str]) -> str:
    """Base model, rank and trigger words from kohya `ss_*` / `modelspec.*` metadata (header only)."""
    parts = []
    base = metadata.get("modelspec.architecture") or metadata.get("ss_base_model_version")
    if base:
        parts.append(f"base: {base}")
    if metadata.get("ss_network_dim"):
        parts.append(f"rank {metadata['ss_network_dim']}")
    triggers = metadata.get("modelspec.trigger_phrase", "")
    if not triggers and metadata.get("ss_tag_frequency"):
        import json

        try:
            counts: dict[str, int] = {}
            for folder_tags in json.loads(metadata["ss_tag_frequency"]).values():
                for tag, count in folder_tags.items():
                    counts[tag.strip()] = counts.get(tag.strip(), 0) + int(count)
            triggers = ", ".join(sorted(counts, key=lambda tag: -counts[tag])[:3])
        except (ValueError, AttributeError, TypeError):
            triggers = ""
    if triggers:
        parts.append(f"triggers: {triggers}")
    return " · ".join(parts)


class LoraCatalog:
    def __init__(self, folder: Path, hash_cache: HashCache):
        self.folder = folder
        self._hashes = hash_cache

    def files(self) -> dict[str, Path]:
        """name -> path for every LoRA file (rescanned on each call: folders change while the app runs)."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for path in sorted(self.folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in LORA_SUFFIXES:
                found[path.relative_to(self.folder).with_suffix("").as_posix()] = path
        return found

    def cards(self, query: str = "") -> list[NetworkCard]:
        """Cards for the files whose name or description contains `query` (case-insensitive)."""
        cards = []
        for name, path in self.files().items():
            try:
                description = describe_lora_metadata(read_metadata(path))
            except CheckpointReadError as error:
                description = f"unreadable: {error.reason}"
            if query.lower() in f"{name} {description}".lower():
                cards.append(NetworkCard(name, path, preview_image_for(path), description))
        return cards

    def find(self, name: str) -> Path:
        files = self.files()
        if name in files:
            return files[name]
        by_stem = [path for key, path in files.items() if Path(key).name == name]
        if len(by_stem) == 1:
            return by_stem[0]
        listing = ", ".join(files) or "(none)"
        raise LoraTagError(f"LoRA {name!r} not found in {self.folder}; available: {listing}")

    def resolve_tags(self, tags: Sequence[NetworkTag]) -> tuple[LoraUse, ...]:
        """The LoRAs the prompt's tags ask for; a tag naming a missing file or a non-number weight raises."""
        uses = []
        for tag in tags:
            if tag.kind not in LORA_TAG_KINDS:
                continue
            text = f"<{tag.kind}:{tag.name}{''.join(':' + a for a in tag.args)}>"
            try:
                weights = [float(arg) for arg in tag.args[:2]]
            except ValueError:
                raise LoraTagError(f"the weight in {text} is not a number") from None
            te_weight = weights[0] if weights else 1.0
            unet_weight = weights[1] if len(weights) > 1 else te_weight
            path = self.find(tag.name)
            uses.append(LoraUse(tag.name, path, te_weight, unet_weight, self._hashes.sha256(path)[:12]))
        return tuple(uses)
