"""diffusers components -> one single-file checkpoint in the layout people download, for every family.

UNet families (SD1/SD2/SDXL) go through `ldm_conversion.diffusers_to_ldm`. Transformer families are the
inverse of diffusers' single-file converters that read them (`ldm_conversion._denoiser_from_ldm`):

- SD3.5: `model.diffusion_model.<MMDiT names>` + `first_stage_model.<VAE>` + the text encoders given, under
  `text_encoders.clip_l/clip_g/t5xxl.transformer.` (Stability's "incl_clips" files; without them the loader
  reads models/text_encoder).
- Flux.1: a file holding the transformer alone is BFL's `flux1-dev.safetensors` layout (bare `double_blocks.*`,
  `single_blocks.*` ...; `ae`, `clip_l` and `t5xxl` stay separate files); with a VAE or text encoders it is
  ComfyUI's "all in one" layout (`model.diffusion_model.`, `vae.`, `text_encoders.*`).

The transformer's names come from the family's own table of original modules (`ModelFamily.lora_original_names`,
the one the LoRA reader uses: which installed modules and rows each fused original layer became, which halves
are swapped) plus `original_parameter_names` for the norms and tables outside those layers. Every installed
parameter must land in the file: one left over is an error, never a silently dropped weight.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor

from webui.models.families import family_named
from webui.models.families.base import LdmTextEncoder, ModelFamily
from webui.models.formats.dit_lora import RowPart
from webui.models.ldm_conversion import LDM_UNET_FORMAT, LDM_UNET_PREFIX, LDM_VAE_PREFIX, _vae_to_ldm, diffusers_to_ldm
from webui.models.model_configs import load_model_index
from webui.models.module_construction import empty_weights

PARAMETER_KINDS = ("weight", "bias")


def single_file_state(components: Mapping[str, Mapping[str, Tensor]], family: str,
                      configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Tensor]:
    """The tensors of one single file holding `components` (diffusers-named state dicts) of a `family` model;
    `configs` holds at least the denoiser's config. UNet families need every component (A1111's layout);
    transformer families need the denoiser and write the others that are given."""
    model_family = family_named(family)
    if model_family.single_file_denoiser == LDM_UNET_FORMAT:
        return diffusers_to_ldm(components, family)
    if model_family.denoiser not in components:
        raise ValueError(f"a {model_family.label} single file needs its {model_family.denoiser}")
    original = denoiser_to_original(model_family, components[model_family.denoiser],
                                    configs[model_family.denoiser])
    others = [name for name in components if name != model_family.denoiser]
    if not others and model_family.separate_vae_files:
        return original  # the transformer alone, as its makers ship it (the VAE and encoders are other files)
    state = {LDM_UNET_PREFIX + key: value for key, value in original.items()}
    if "vae" in components:
        vae_prefix = model_family.ldm_vae_prefixes[0]
        state.update({vae_prefix + key[len(LDM_VAE_PREFIX):]: value
                      for key, value in _vae_to_ldm(components["vae"]).items()})
    for encoder in model_family.ldm_text_encoders:
        if encoder.component in components:
            state.update({encoder.prefix + key: value
                          for key, value in text_encoder_file_state(components[encoder.component], encoder).items()})
    return state


def denoiser_to_original(family: ModelFamily, state: Mapping[str, Tensor],
                         config: Mapping[str, Any]) -> dict[str, Tensor]:
    """A transformer's diffusers-named weights -> its original code's names (no prefix): fused layers joined
    back by rows, swapped modulation halves swapped back."""
    denoiser = weightless_denoiser(family, config)
    original: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, parts in family.lora_original_names(denoiser).items():
        for kind in PARAMETER_KINDS:
            keys = [f"{part.path}.{kind}" for part in parts]
            present = [key for key in keys if key in state]
            if not present:
                continue
            if len(present) != len(keys):
                missing = sorted(set(keys) - set(present))
                raise ValueError(f"{family.label} {name}.{kind} cannot be written: {', '.join(missing)} missing")
            original[f"{name}.{kind}"] = _joined_rows(parts, [state[key] for key in keys])
            used.update(keys)
    for name, installed in family.original_parameter_names(denoiser).items():
        if installed in state:
            original[name] = state[installed]
            used.add(installed)
    left_over = sorted(set(state) - used)
    if left_over:
        raise ValueError(f"{len(left_over)} {family.label} {family.denoiser} parameter(s) have no original name "
                         f"to be written under, e.g. {', '.join(left_over[:4])}")
    return original


def _joined_rows(parts: tuple[RowPart, ...], pieces: list[Tensor]) -> Tensor:
    """The original weight whose row ranges (`RowPart.rows`) became each piece (the inverse of the split)."""
    if len(parts) == 1 and parts[0].rows is None:
        return pieces[0]
    total = sum(stop - start for part in parts for start, stop in part.rows or ())
    joined = pieces[0].new_empty((total, *pieces[0].shape[1:]))
    for part, piece in zip(parts, pieces):
        offset = 0
        for start, stop in part.rows or ((0, piece.shape[0]),):
            joined[start:stop] = piece[offset:offset + stop - start]
            offset += stop - start
    return joined


def weightless_denoiser(family: ModelFamily, config: Mapping[str, Any]) -> torch.nn.Module:
    """The denoiser built on the meta device (module names and sizes, no memory), from its config."""
    library, class_name = load_model_index(family.name)[family.denoiser]
    with empty_weights():
        return getattr(importlib.import_module(library), class_name).from_config(dict(config))


def text_encoder_file_state(state: Mapping[str, Tensor], encoder: LdmTextEncoder) -> dict[str, Tensor]:
    """One text encoder as the DiT families' files hold it below their prefix: CLIP in transformers' names
    with the `text_model.` level (and the projection beside it), T5 with its token table once (`shared`)."""
    if encoder.kind == "t5":
        return {key: value for key, value in state.items()
                if not (key == "encoder.embed_tokens.weight" and "shared.weight" in state)}
    if encoder.kind != "clip":
        raise ValueError(f"no single-file writer for {encoder.kind} text encoders of transformer families")
    return {key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}": value
            for key, value in state.items() if not key.endswith("position_ids")}


def file_components(family: str, keys: Collection[str]) -> tuple[str, ...]:
    """The components a single file with these tensor names holds itself (not read from companion files)."""
    from webui.models.companion_files import CompanionNeeds

    model_family = family_named(family)
    needs = CompanionNeeds.of_keys(model_family, keys)
    return tuple(name for name in model_family.components
                 if not (name == "vae" and needs.vae) and name not in needs.text_encoders)
