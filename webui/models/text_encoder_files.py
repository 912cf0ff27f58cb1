"""Separate text-encoder files (models/text_encoder) for checkpoints that ship without them.

SD3.5 single files often hold only the transformer and VAE; people download `clip_l.safetensors`,
`clip_g.safetensors` and `t5xxl_fp16.safetensors` (or an fp8 / fp8-scaled `t5xxl_*` file) once, in ComfyUI's and
Forge's names, and share them between checkpoints. The family says which files fit which component
(`ModelFamily.separate_text_encoder_files`); this module finds them, converts them with the same converters
as bundled encoders, and says what is missing: a required encoder is an error naming the files and the
folder, an optional one (SD3's T5) a note that generation goes on without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

import torch

from webui.models.checkpoint_files import dequantize_scaled_fp8, read_state_dict, upcast_float8
from webui.models.companion_files import find_first
from webui.models.families import ModelFamily
from webui.models.ldm_conversion import text_encoder_from_single_file


class MissingTextEncoderError(ValueError):
    """A checkpoint needs text-encoder files that are not in the text-encoder folder; the message names them."""


@dataclass
class SeparateTextEncoders:
    """What was read from the text-encoder folder for one checkpoint."""

    state_dicts: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_separate_text_encoders(family: ModelFamily, components: list[str], folder: Path,
                                configs: Mapping[str, Mapping[str, Any]], checkpoint_name: str,
                                dtype: torch.dtype = torch.float32) -> SeparateTextEncoders:
    """Read `components` (text encoders the checkpoint lacks) from `folder`; raise when a required one is
    missing, note an optional one. Float8 files (t5xxl_fp8_e4m3fn) are upcast to `dtype`, with a note."""
    found = SeparateTextEncoders()
    missing_required: list[str] = []
    encoders = {encoder.component: encoder for encoder in family.ldm_text_encoders}
    for component in components:
        patterns = family.separate_text_encoder_files.get(component, ())
        path = find_first(folder, patterns)
        if path is None:
            wanted = patterns[0] if patterns else component
            if component in family.optional_text_encoders:
                found.notes.append(f"{checkpoint_name}: no {wanted} in {folder}; generating without that text "
                                   f"encoder (prompts are understood less well)")
            else:
                missing_required.append(wanted)
            continue
        encoder = encoders[component]
        state, was_float8 = upcast_float8(dequantize_scaled_fp8(read_state_dict(path)), dtype)
        if was_float8:
            found.notes.append(float8_note(path.name, dtype))
        if not any(key.startswith(encoder.prefix) for key in state):
            state = {encoder.prefix + key: value for key, value in state.items()}
        found.state_dicts[component] = text_encoder_from_single_file(state, encoder, configs[component])
        found.files[component] = path
    if missing_required:
        optional = [family.separate_text_encoder_files[name][0] for name in family.optional_text_encoders
                    if name in components]
        extra = f" (and optionally {', '.join(optional)})" if optional else ""
        raise MissingTextEncoderError(
            f"{checkpoint_name} holds no text encoders: put {' and '.join(missing_required)}{extra} "
            f"in {folder} ({family.label} checkpoints without bundled encoders use those files)")
    return found


def float8_note(file_name: str, dtype: torch.dtype) -> str:
    """The load note for a file stored in float8: its weights were upcast, their precision is fp8's."""
    return (f"{file_name} stores float8 weights; they were upcast to {str(dtype).removeprefix('torch.')} "
            f"(memory as for that precision, quality as the fp8 file's)")
