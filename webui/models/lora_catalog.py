"""LoRA folder catalog and `<lora:name:te[:unet]>` prompt tags -> what the manager should merge.

Names are A1111's: the file's path relative to the LoRA folder without extension (a bare file name also
matches). Hashes are A1111's 12-hex-digit short sha256, cached on disk, for the infotext's `Lora hashes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from webui.generation.prompt_syntax import NetworkTag
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
