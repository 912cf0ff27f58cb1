"""Fetch a diffusers model from the Hugging Face Hub by repo id, when the machine is online.

Everything else in SD Studio is offline; this is the one place that may download a checkpoint, and only
when a user names a checkpoint as `owner/name` that is not in the checkpoint folder and the server was
started with `--allow-hub` (the catalog asks `webui.security.network.NetworkPolicy` first). The download
lands in the checkpoint folder as an ordinary diffusers folder, so it is listed and loaded like any
other model afterwards (and works offline from then on).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Only what a text-to-image pipeline needs: configs, tokenizer files and safetensors weights.
# The denoiser is unet/ (SD1/SD2/SDXL) or transformer/ (SD3.5).
ALLOW_PATTERNS = ["model_index.json", "*/config.json", "*/scheduler_config.json", "tokenizer*/*",
                  "unet/*.safetensors", "transformer/*.safetensors", "vae/*.safetensors",
                  "text_encoder*/*.safetensors"]


class HubDownloadError(LookupError):
    """The repo id could not be fetched (offline, unknown repo, not a diffusers pipeline)."""


def looks_like_repo_id(name: str) -> bool:
    return bool(REPO_ID.match(name.strip()))


def local_folder_for(repo_id: str, checkpoint_folder: Path) -> Path:
    return checkpoint_folder / repo_id.replace("/", "--")


def fetch_diffusers_model(repo_id: str, checkpoint_folder: Path) -> Path:
    """Download `repo_id`'s pipeline files into the checkpoint folder; return the folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = local_folder_for(repo_id, checkpoint_folder)
    try:
        snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, local_dir=target)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise HubDownloadError(
            f"checkpoint {repo_id!r} is not in {checkpoint_folder} and could not be downloaded from the "
            f"Hugging Face Hub ({type(error).__name__}: {str(error)[:200]}). Offline, put the model in the folder."
        ) from None
    if not (target / "model_index.json").is_file():
        raise HubDownloadError(f"{repo_id!r} is not a diffusers pipeline (no model_index.json)")
    return target
