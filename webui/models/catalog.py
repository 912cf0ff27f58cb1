"""Checkpoint catalog: scan the checkpoint folder into records, without loading any weights.

Single files are classified from their safetensors header alone (key names and shapes), so a folder
of hundreds of models scans in well under a second. A file that cannot be read or classified is still
listed, with the reason, so the user sees why it cannot be used; every other model keeps working.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.models.checkpoint_files import CheckpointReadError, read_key_shapes
from webui.models.companion_files import CompanionFolders, CompanionNeeds
from webui.models.families import denoiser_folders, family_named, family_of_diffusers
from webui.models.hashing import HashCache
from webui.models.ldm_conversion import Architecture, UnsupportedCheckpointError, detect_architecture
from webui.security.network import NetworkPolicy

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class UnknownCheckpointError(LookupError):
    """A checkpoint name that is not in the catalog; the message lists what is."""


@dataclass(frozen=True)
class CheckpointRecord:
    """One model the user can pick: a single file or a diffusers folder."""

    name: str                      # path relative to the folder, without extension (A1111's model name)
    path: Path
    format: str                    # "safetensors" | "ckpt" | "diffusers"
    architecture: Architecture | None
    sha256: str | None = None      # known once hashed (cached across restarts)
    error: str | None = None       # why it cannot be loaded; None when usable

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        """A1111's dropdown title: `name [shorthash]` once the hash is known."""
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def usable(self) -> bool:
        return self.error is None

    def matches(self, wanted: str) -> bool:
        """A1111 accepts a title, a bare name, a file name or a short hash."""
        wanted = wanted.strip()
        if wanted in {self.title, self.name, self.path.name, self.path.stem}:
            return True
        # "name [hash]" with a stale hash still names this model; a bare short hash does too.
        return wanted.split(" [")[0] == self.name or (self.shorthash is not None and wanted == self.shorthash)


def architecture_of_diffusers_folder(folder: Path) -> Architecture:
    """The family of a diffusers folder, from its denoiser's config (unet/ or transformer/) and its
    component folders."""
    names = denoiser_folders()
    denoiser_folder = next((name for name in names if (folder / name / "config.json").is_file()), names[-1])
    try:
        denoiser = json.loads((folder / denoiser_folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UnsupportedCheckpointError(
            f"{folder.name}: unreadable {denoiser_folder}/config.json ({error})") from error
    in_channels = int(denoiser.get("in_channels", 4))
    family = family_of_diffusers(denoiser, {path.name for path in folder.iterdir() if path.is_dir()})
    if family.denoiser != denoiser_folder:
        raise UnsupportedCheckpointError(
            f"{folder.name}: a {denoiser_folder}/ denoiser ({denoiser.get('_class_name', 'unknown class')}) "
            f"of no supported family")
    variant = family.variant_of_denoiser_config(denoiser)
    return Architecture(family=family.name, unet_in_channels=in_channels,
                        label=family.architecture_label(in_channels, variant), variant=variant)


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


class CheckpointCatalog:
    """The list of checkpoints in one folder; `refresh()` rescans without restarting the app.

    A name that is not in the folder but looks like a Hub repo id (`owner/name`) is downloaded only when
    `network` allows the Hub (off by default: see `webui.security.network`).
    """

    def __init__(self, folder: Path, hash_cache: HashCache, network: NetworkPolicy = NetworkPolicy(),
                 text_encoder_folder: Path | None = None, vae_folder: Path | None = None,
                 denoiser_folders: tuple[Path, ...] | None = None):
        self.folder = folder
        # Transformer/UNet-only files where ComfyUI keeps them (models/unet, models/diffusion_models), listed
        # after the checkpoint folder's and named "<folder name>/<file>" so that names never collide.
        self.denoiser_folders = tuple(denoiser_folders if denoiser_folders is not None else (
            folder.parent / "unet", folder.parent / "diffusion_models"))
        # Separate text encoders (clip_l, clip_g, t5xxl) and VAEs (Flux's ae.safetensors) for checkpoints
        # without them: A1111/Forge keep models/text_encoder and models/VAE beside models/Stable-diffusion.
        self.text_encoder_folder = text_encoder_folder or folder.parent / "text_encoder"
        self.vae_folder = vae_folder or folder.parent / "VAE"
        self._hashes = hash_cache
        self._network = network
        self._lock = threading.Lock()
        self._records: list[CheckpointRecord] = []
        self._classified: dict[tuple, tuple[Architecture | None, str | None, CompanionNeeds | None]] = {}

    def refresh(self) -> list[CheckpointRecord]:
        records = self._scan(self.folder, prefix="")
        for folder in self.denoiser_folders:
            if folder.resolve() != self.folder.resolve():
                records.extend(self._scan(folder, prefix=f"{folder.name}/", diffusers=False))
        with self._lock:
            self._records = records
        return list(records)

    def _scan(self, folder: Path, prefix: str, diffusers: bool = True) -> list[CheckpointRecord]:
        records: list[CheckpointRecord] = []
        if not folder.is_dir():
            return records
        for path in sorted(folder.rglob("*")):
            if diffusers and is_diffusers_folder(path):
                records.append(self._record(path, "diffusers", prefix + path.relative_to(folder).as_posix()))
            elif path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES and not any(
                is_diffusers_folder(parent) for parent in path.parents
            ) and not path.name.endswith(".vae.safetensors"):
                name = prefix + path.relative_to(folder).as_posix().rsplit(".", 1)[0]
                records.append(self._record(path, path.suffix.lower().lstrip("."), name))
        return records

    def _record(self, path: Path, file_format: str, name: str) -> CheckpointRecord:
        architecture, error, needs = self._classify(path, file_format)
        if needs is not None and error is None:  # companions are looked for at every scan: they may come later
            error = needs.missing_message(CompanionFolders(self.vae_folder, self.text_encoder_folder), path.name)
        return CheckpointRecord(
            name=name, path=path, format=file_format, architecture=architecture,
            sha256=self._hashes.cached(path), error=error,
        )

    def _classify(self, path: Path, file_format: str
                  ) -> tuple[Architecture | None, str | None, CompanionNeeds | None]:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime)
        if key in self._classified:
            return self._classified[key]
        try:
            if file_format == "diffusers":
                result = (architecture_of_diffusers_folder(path), None, None)
            else:
                key_shapes = read_key_shapes(path)
                architecture = detect_architecture(key_shapes)
                result = (architecture, None, CompanionNeeds.of_keys(family_named(architecture.family), key_shapes))
        except (CheckpointReadError, UnsupportedCheckpointError) as error:
            result = (None, str(error), None)
        self._classified[key] = result
        return result

    @property
    def hashes(self) -> HashCache:
        """The on-disk sha256 cache, shared with other model files (VAEs, embeddings, LoRAs)."""
        return self._hashes

    def records(self) -> list[CheckpointRecord]:
        with self._lock:
            return list(self._records)

    def usable_records(self) -> list[CheckpointRecord]:
        return [record for record in self.records() if record.usable]

    def find(self, wanted: str) -> CheckpointRecord:
        """The record a title/name/hash names; refreshes once if it is not known yet."""
        for attempt in range(2):
            for record in self.records():
                if record.matches(wanted):
                    return record
            if attempt == 0:
                self.refresh()
        names = ", ".join(record.title for record in self.records()) or "(none)"
        raise UnknownCheckpointError(f"checkpoint {wanted!r} not found; available: {names}")

    def check_available(self, wanted: str) -> CheckpointRecord | None:
        """The local record `wanted` names, or None for a Hub repo id that `find_or_fetch` may download.

        Touches no network: an unknown `owner/name` raises `HubDisabled` (naming this folder) unless the
        Hub is allowed, and any other unknown name raises `UnknownCheckpointError`.
        """
        from webui.models.hub import looks_like_repo_id

        try:
            return self.find(wanted)
        except UnknownCheckpointError:
            if not looks_like_repo_id(wanted):
                raise
        self._network.require_hub(f"checkpoint {wanted.strip()!r}",
                                  f"put the model (a .safetensors file or a diffusers folder) in {self.folder}")
        return None

    def find_or_fetch(self, wanted: str) -> CheckpointRecord:
        """`find`, and for an unknown `owner/name` a download from the Hugging Face Hub when that is allowed."""
        from webui.models.hub import fetch_diffusers_model

        record = self.check_available(wanted)
        if record is not None:
            return record
        fetch_diffusers_model(wanted.strip(), self.folder)
        self.refresh()
        return self.find(wanted.strip().replace("/", "--"))

    def with_hash(self, record: CheckpointRecord) -> CheckpointRecord:
        """The record with its sha256 filled in (computed once, then cached on disk)."""
        if record.sha256:
            return record
        hashed = CheckpointRecord(
            name=record.name, path=record.path, format=record.format, architecture=record.architecture,
            sha256=self._hashes.sha256(record.path), error=record.error,
        )
        with self._lock:
            self._records = [hashed if r.path == record.path else r for r in self._records]
        return hashed
