"""Files a single-file checkpoint needs beside it, and whether they are there.

Transformer-only downloads (Flux.1's `flux1-dev.safetensors`, SD3.5 files without bundled encoders) need the
family's VAE (`ae.safetensors` in models/VAE) and text encoders (`clip_l`, `t5xxl_*` in models/text_encoder).
What a file lacks is read from its tensor names once; whether the companions are present is checked at each
catalog scan (the user may add them later) and again before loading. The catalog lists a checkpoint whose
required companions are missing as unusable, with this module's message naming the files and the folders.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from webui.models.families import ModelFamily


@dataclass(frozen=True)
class CompanionFolders:
    """Where separate VAEs and text encoders live (models/VAE, models/text_encoder by default)."""

    vae: Path
    text_encoder: Path


def find_first(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    """The first file in `folder` matching the patterns, in their order of preference."""
    if not folder.is_dir():
        return None
    for pattern in patterns:
        matches = sorted(path for path in folder.glob(pattern) if path.is_file())
        if matches:
            return matches[0]
    return None


@dataclass(frozen=True)
class CompanionNeeds:
    """What one single file leaves out that its family can read from the companion folders."""

    family: ModelFamily
    vae: bool                        # the VAE comes from the VAE folder
    text_encoders: tuple[str, ...]   # these text encoders come from the text-encoder folder

    @classmethod
    def of_keys(cls, family: ModelFamily, keys: Collection[str]) -> CompanionNeeds:
        def bundles(*prefixes: str) -> bool:
            return any(key.startswith(prefixes) for key in keys)

        lacks_vae = bool(family.separate_vae_files) and not bundles(*family.ldm_vae_prefixes)
        lacking = tuple(encoder.component for encoder in family.ldm_text_encoders
                        if encoder.component in family.separate_text_encoder_files and not bundles(encoder.prefix))
        return cls(family, lacks_vae, lacking)

    def vae_file(self, folders: CompanionFolders) -> Path | None:
        return find_first(folders.vae, self.family.separate_vae_files) if self.vae else None

    def missing_message(self, folders: CompanionFolders, checkpoint_name: str) -> str | None:
        """None when every required companion is present; else what to put where."""
        family = self.family
        wanted: list[str] = []
        if self.vae and self.vae_file(folders) is None:
            wanted.append(f"{family.separate_vae_files[0]} in {folders.vae}")
        missing_encoders = [family.separate_text_encoder_files[name][0] for name in self.text_encoders
                            if name not in family.optional_text_encoders
                            and find_first(folders.text_encoder, family.separate_text_encoder_files[name]) is None]
        optional = [family.separate_text_encoder_files[name][0] for name in self.text_encoders
                    if name in family.optional_text_encoders]
        if missing_encoders:
            extra = f" (and optionally {', '.join(optional)})" if optional else ""
            wanted.append(f"{' and '.join(missing_encoders)}{extra} in {folders.text_encoder}")
        if not wanted:
            return None
        parts = (["VAE"] if self.vae else []) + (["text encoders"] if self.text_encoders else [])
        return (f"{checkpoint_name} holds no {' and no '.join(parts)}: put {'; and '.join(wanted)} "
                f"({family.label} checkpoints without them use those files)")
