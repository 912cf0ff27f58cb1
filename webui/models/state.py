"""The wanted model state as one value: checkpoint, VAE, LoRAs, embeddings and control models (ControlNets).

A job says what model it wants by building a :class:`ModelState`; the manager's ``checkout(state)``
reconciles the resident model to it. :meth:`ModelState.key` names the state by content, so equal
wanted states get equal keys in every process and on every machine: a worker can tell whether it
already holds what a job wants without loading anything.

Every file is identified by its sha256 from the shared :class:`~webui.models.hashing.HashCache`
(computed once per file version and kept on disk across restarts). The manager hashes each checkpoint
it loads anyway (for the infotext's model hash), LoRA tags are hashed when prompts are parsed (for
``Lora hashes``), and VAEs and embeddings are hashed for the infotext too, so the key costs no extra
reading after a file's first use; it never falls back to path + modification time, whose values differ
between machines and would make the key unstable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from webui.models.catalog import CheckpointRecord
from webui.models.embeddings import Embedding
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraUse

KEY_VERSION = "model-state-2"  # bump when what the key covers changes


@dataclass(frozen=True)
class ModelFile:
    """A file (or diffusers folder) a state names: its name for people, path to read, content hash."""

    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA in a state with its text-encoder and UNet weights."""

    file: ModelFile
    te_weight: float
    unet_weight: float

    @property
    def use(self) -> LoraUse:
        """The same LoRA as prompt tags describe it (name, weights, A1111's 12-digit short hash)."""
        return LoraUse(self.file.name, self.file.path, self.te_weight, self.unet_weight, self.file.sha256[:12])


@dataclass(frozen=True)
class ModelState:
    """What a job wants loaded. ``loras`` keep the order they were asked in (the order of merging);
    ``embeddings`` are the embeddings that may be used in prompts, by name (today every readable one in
    the folder; the manager injects those that fit the checkpoint's text encoders). ``vae`` None means
    the checkpoint's own VAE. ``controls`` are the ControlNet files the job's units use (each once, in the order
    of the units): the manager builds their modules for the checkpoint in ``checkout``."""

    checkpoint: ModelFile
    vae: ModelFile | None = None
    loras: tuple[LoraChoice, ...] = ()
    embeddings: tuple[ModelFile, ...] = ()
    controls: tuple[ModelFile, ...] = ()

    def key(self) -> str:
        """A content key: equal for equal wanted states in any process, different when the checkpoint,
        the VAE, a LoRA, a LoRA's weight, the LoRAs' order, the embeddings or the control models differ. Names and paths
        are left out (the same file under another name or folder is the same state), except embedding
        names, which are the words prompts use."""
        described = {
            "version": KEY_VERSION,
            "checkpoint": self.checkpoint.sha256,
            "vae": self.vae.sha256 if self.vae is not None else None,
            "loras": [[lora.file.sha256, float(lora.te_weight), float(lora.unet_weight)] for lora in self.loras],
            "embeddings": sorted([embedding.name, embedding.sha256] for embedding in self.embeddings),
            "controls": [control.sha256 for control in self.controls],
        }
        text = json.dumps(described, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def lora_uses(self) -> tuple[LoraUse, ...]:
        return tuple(lora.use for lora in self.loras)


def model_file(name: str, path: Path, hashes: HashCache) -> ModelFile:
    """A file named in a state, hashed through the shared cache (read once per file version)."""
    return ModelFile(name, Path(path), hashes.sha256(Path(path)))


def build_state(record: CheckpointRecord, hashes: HashCache, loras: Sequence[LoraUse] = (),
                vae: Path | None = None, embeddings: Mapping[str, Embedding] | None = None,
                controls: Sequence[tuple[str, Path]] = ()) -> ModelState:
    """The state for what callers pass today: a checkpoint record, the LoRAs of the prompt's tags, a VAE
    file (None: the checkpoint's own), the usable embeddings by name and the (name, path) of each control
    model the job uses."""
    return ModelState(
        checkpoint=model_file(record.name, record.path, hashes),
        vae=model_file(vae.name, vae, hashes) if vae is not None else None,
        loras=tuple(LoraChoice(model_file(use.name, use.path, hashes), float(use.te_weight),
                               float(use.unet_weight)) for use in loras),
        embeddings=tuple(model_file(name, embedding.path, hashes)
                         for name, embedding in sorted((embeddings or {}).items())),
        controls=tuple(model_file(name, path, hashes) for name, path in dict(controls).items()),
    )
