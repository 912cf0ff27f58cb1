"""Standalone VAE files: finding them (the VAE folder, A1111's "<checkpoint>.vae.*" convention) and
reading any common layout into a diffusers ``AutoencoderKL`` state dict.

A VAE that does not fit the loaded model must be refused with a reason rather than half-loaded, so
every result is checked key by key and shape by shape against a weightless model built from the
target config: whatever this module returns loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from torch import Tensor

from webui.models.checkpoint_files import CheckpointReadError, read_key_shapes, read_state_dict

VAE_FILE_SUFFIXES = frozenset({".safetensors", ".pt", ".ckpt", ".bin"})
# A1111 looks for these next to a checkpoint, in this order of preference (safetensors is safest).
BESIDE_CHECKPOINT_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
# Prefixes under which full checkpoints (LDM: first_stage_model., some exports: vae.) keep the VAE.
_CONTAINER_PREFIXES = ("first_stage_model.", "vae.")
# Training leftovers in original VAE .ckpt files that A1111 also ignores.
_TRAINING_ONLY_PREFIXES = ("loss.", "model_ema.")
_DIFFUSERS_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.", "decoder.mid_block.")
_LDM_MARKERS = ("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")
# diffusers < 0.14 named the VAE attention projections differently.
_DEPRECATED_ATTENTION_NAMES = (
    (".query.", ".to_q."),
    (".key.", ".to_k."),
    (".value.", ".to_v."),
    (".proj_attn.", ".to_out.0."),
)
_LDM_ENCODER_LEVEL = re.compile(r"^encoder\.down\.(\d+)\.")
_Value = TypeVar("_Value")


class VaeFileError(ValueError):
    """A VAE file or folder cannot be used with the loaded model; the message names it and says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot use VAE '{self.path}': {reason}")


@dataclass(frozen=True)
class VaeRecord:
    """One selectable VAE; ``error`` is set when a cheap check already shows it is unusable."""

    name: str
    path: Path
    error: str | None


# --------------------------------------------------------------------------------------------
# Finding VAE files
# --------------------------------------------------------------------------------------------


def _diffusers_weights_file(folder: Path) -> Path | None:
    for name in DIFFUSERS_WEIGHT_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _diffusers_vae_folder(folder: Path) -> Path | None:
    """The folder holding config.json and weights: the folder itself or a pipeline's vae/ subfolder."""
    for candidate in (folder, folder / "vae"):
        if (candidate / "config.json").is_file() and _diffusers_weights_file(candidate) is not None:
            return candidate
    return None


def _layout_of(keys: list[str]) -> str | None:
    if any(key.startswith(_DIFFUSERS_MARKERS) for key in keys):
        return "diffusers"
    if any(key.startswith(_LDM_MARKERS) for key in keys):
        return "ldm"
    return None


def _vae_part(items: Mapping[str, _Value]) -> dict[str, _Value]:
    """The VAE proper: a full checkpoint's VAE entries (prefix removed), minus training leftovers."""
    for prefix in _CONTAINER_PREFIXES:
        if any(key.startswith(prefix) for key in items):
            return {key[len(prefix) :]: value for key, value in items.items() if key.startswith(prefix)}
    return {key: value for key, value in items.items() if not key.startswith(_TRAINING_ONLY_PREFIXES)}


def _sample_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{shown} and {len(keys) - 3} more" if len(keys) > 3 else shown or "no tensors"


def _quick_check_file(path: Path) -> str | None:
    """An error for files whose header already shows they are no VAE; pickle files are checked on load.

    Reading a pickle-based .pt/.ckpt means loading all of it, which a folder scan should not do.
    """
    if path.stat().st_size == 0:
        return "file is empty"
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        keys = list(read_key_shapes(path))
    except CheckpointReadError as error:
        return error.reason
    if _layout_of(list(_vae_part(dict.fromkeys(keys)))) is None:
        return f"holds no VAE weights (found {_sample_keys(keys)})"
    return None


def _quick_check_folder(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return f"config.json is unreadable ({error})"
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in (None, "AutoencoderKL"):
        return f"config.json describes a {class_name}, not an AutoencoderKL"
    return None


def scan_vaes(vae_folder: Path) -> list[VaeRecord]:
    """Every VAE file and diffusers VAE folder below ``vae_folder``, named by relative path.

    Top-level files are named by their file name, as A1111 names them in its SD VAE list.
    """
    root = Path(vae_folder)
    if not root.is_dir():
        return []
    records: list[VaeRecord] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            name = entry.relative_to(root).as_posix()
            if entry.is_dir():
                weights_folder = _diffusers_vae_folder(entry)
                if weights_folder is not None:
                    records.append(VaeRecord(name, entry, _quick_check_folder(weights_folder)))
                else:
                    pending.append(entry)
            elif entry.is_file() and entry.suffix.lower() in VAE_FILE_SUFFIXES:
                records.append(VaeRecord(name, entry, _quick_check_file(entry)))
    return sorted(records, key=lambda record: record.name.lower())


def vae_beside_checkpoint(checkpoint_path: Path) -> Path | None:
    """A1111's automatic VAE: "<checkpoint name>.vae.safetensors" (or .vae.pt/.vae.ckpt) beside it."""
    checkpoint_path = Path(checkpoint_path)
    stem = checkpoint_path.name if checkpoint_path.is_dir() else checkpoint_path.stem
    for suffix in BESIDE_CHECKPOINT_SUFFIXES:
        candidate = checkpoint_path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Reading a VAE into diffusers layout
# --------------------------------------------------------------------------------------------


def _read_tensors(path: Path) -> dict[str, Tensor]:
    source = path
    if path.is_dir():
        folder = _diffusers_vae_folder(path)
        if folder is None:
            raise VaeFileError(path, "folder holds no config.json with diffusion_pytorch_model weights")
        source = _diffusers_weights_file(folder)
    try:
        return read_state_dict(source)
    except CheckpointReadError as error:
        raise VaeFileError(path, error.reason) from error
    except Exception as error:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        detail = str(error).splitlines()[0] if str(error) else ""
        raise VaeFileError(path, f"corrupt or not a PyTorch file ({type(error).__name__}: {detail})") from error


def _rename_deprecated_attention(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if ".mid_block.attentions." in key:
            for old, new in _DEPRECATED_ATTENTION_NAMES:
                key = key.replace(old, new)
        renamed[key] = value
    return renamed


def _convert_ldm(path: Path, vae_state: dict[str, Tensor], vae_config: Mapping[str, object]) -> dict[str, Tensor]:
    levels_in_file = {int(match[1]) for key in vae_state if (match := _LDM_ENCODER_LEVEL.match(key))}
    expected_levels = len(vae_config.get("block_out_channels", ()))
    if levels_in_file and len(levels_in_file) != expected_levels:
        raise VaeFileError(
            path, f"the file's VAE has {len(levels_in_file)} resolution levels, this model's has {expected_levels}"
        )
    try:
        converted = convert_ldm_vae_checkpoint(vae_state, dict(vae_config))
    except (KeyError, AttributeError, TypeError, IndexError, RuntimeError, ValueError) as error:
        reason = f"incomplete or unexpected LDM VAE layout ({type(error).__name__}: {error})"
        raise VaeFileError(path, reason) from error
    converted = {key: value for key, value in converted.items() if value is not None}
    if len(converted) < len(vae_state):
        raise VaeFileError(
            path,
            f"{len(vae_state) - len(converted)} of the file's {len(vae_state)} VAE tensors have no place "
            "in this model's VAE (different layer count)",
        )
    return converted


def _expected_shapes(vae_config: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = AutoencoderKL.from_config(dict(vae_config))
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def _latent_channels_hint(state_dict: Mapping[str, Tensor], vae_config: Mapping[str, object]) -> str:
    conv_in = state_dict.get("decoder.conv_in.weight")
    expected = vae_config.get("latent_channels", 4)
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] != expected:
        return f"; it has {conv_in.shape[1]} latent channels, this model uses {expected}"
    return ""


def _check_fits(path: Path, state_dict: Mapping[str, Tensor], vae_config: Mapping[str, object]) -> None:
    expected = _expected_shapes(vae_config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(state_dict) if tuple(state_dict[key].shape) != expected[key]
    )
    problems = []
    if mismatched:
        first = mismatched[0]
        problems.append(
            f"{len(mismatched)} tensors have other shapes (e.g. {first} is {list(state_dict[first].shape)} "
            f"in the file but {list(expected[first])} in this model)"
        )
    if missing:
        problems.append(f"{len(missing)} tensors are missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are unknown to this model (e.g. {unexpected[0]})")
    if problems:
        hint = _latent_channels_hint(state_dict, vae_config)
        raise VaeFileError(path, "does not fit this model's VAE: " + "; ".join(problems) + hint)


def read_vae_tensors(path: Path) -> tuple[dict[str, Tensor], str]:
    """A VAE file's own tensors (a full checkpoint's VAE part, prefix removed) and their layout, "ldm" (BFL's
    and LDM's `encoder.down...` names, e.g. Flux's ae.safetensors) or "diffusers", not yet converted."""
    path = Path(path)
    if not path.exists():
        raise VaeFileError(path, "file does not exist")
    vae_state = _vae_part(_read_tensors(path))
    layout = _layout_of(list(vae_state))
    if layout is None:
        raise VaeFileError(path, f"holds no VAE weights (found {_sample_keys(list(vae_state))})")
    return vae_state, layout


def read_vae_state_dict(path: Path, vae_config: dict) -> dict[str, Tensor]:
    """A diffusers ``AutoencoderKL`` state dict from an LDM/A1111 or diffusers VAE file or folder.

    ``vae_config`` is the loaded model's VAE config (as in its config.json); the result loads into an
    AutoencoderKL built from it with ``strict=True``, or :class:`VaeFileError` says why it cannot.
    """
    path = Path(path)
    vae_state, layout = read_vae_tensors(path)
    if layout == "ldm":
        converted = _convert_ldm(path, vae_state, vae_config)
    else:
        converted = _rename_deprecated_attention(vae_state)
    _check_fits(path, converted, vae_config)
    return {key: value.contiguous() for key, value in converted.items()}
