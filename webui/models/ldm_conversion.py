"""Convert between single-file "LDM" checkpoints (the A1111 layout) and diffusers component state dicts.

Reading uses diffusers' own single-file converters, so a checkpoint loads exactly as
``from_single_file`` would load it. Writing (needed to export DreamBooth results as A1111
checkpoints) is the inverse of those converters, implemented here key by key; the round trip
diffusers -> LDM -> diffusers is bitwise exact, which the unit tests check for every family.

Architectures are told apart from key names and shapes only, so the catalog can classify files from
a safetensors header without loading any weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_open_clip_checkpoint,
    convert_sd3_t5_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from webui.models.families import (
    FAMILIES, SDXL_REFINER, ModelFamily, family_names, family_named, family_of_ldm_keys, flux, sd1, sd2, sd3, sdxl,
)
from webui.models.families.base import LdmTextEncoder

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = sd1.LDM_CLIP_PREFIX
SD2_OPEN_CLIP_PREFIX = sd2.LDM_OPEN_CLIP_PREFIX
SDXL_CLIP_PREFIX = sdxl.LDM_CLIP_PREFIX
SDXL_OPEN_CLIP_PREFIX = sdxl.LDM_OPEN_CLIP_PREFIX
SDXL_EMBEDDER_PREFIX = "conditioner.embedders."
UNET_CONV_IN_KEY = LDM_UNET_PREFIX + "input_blocks.0.0.weight"

# diffusers ResnetBlock2D parameter names -> LDM ResBlock names (UNet).
_UNET_RESNET_TO_LDM = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
# Top-level UNet modules whose names differ only by a fixed rename.
_UNET_TOP_LEVEL_TO_LDM = (
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
)
_VAE_TOP_LEVEL_TO_LDM = (
    ("encoder.conv_in", "encoder.conv_in"),
    ("encoder.conv_out", "encoder.conv_out"),
    ("encoder.conv_norm_out", "encoder.norm_out"),
    ("decoder.conv_in", "decoder.conv_in"),
    ("decoder.conv_out", "decoder.conv_out"),
    ("decoder.conv_norm_out", "decoder.norm_out"),
    ("quant_conv", "quant_conv"),
    ("post_quant_conv", "post_quant_conv"),
)
# diffusers VAE Attention -> LDM AttnBlock, whose projections are 1x1 convolutions.
_VAE_ATTENTION_TO_LDM = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)
_OPEN_CLIP_LAYER_TO_LDM = (
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)
# LDM SD1 files written with old transformers lack the "text_model." level; A1111 renames these too.
_LEGACY_SD1_CLIP_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


@dataclass(frozen=True)
class Architecture:
    """What a single-file checkpoint is, as far as loading it is concerned."""

    family: str
    unet_in_channels: int          # the denoiser's input channels (UNet or transformer)
    label: str
    variant: str | None = None     # which model of the family (SD3.5 "sd3.5-medium" / "sd3.5-large" ...)


class UnsupportedCheckpointError(ValueError):
    """The file is not a checkpoint of a supported family; the message says what it looks like."""


# --------------------------------------------------------------------------------------------
# Architecture detection
# --------------------------------------------------------------------------------------------


def _any_key_starts(keys: Iterable[str], *prefixes: str) -> bool:
    return any(key.startswith(prefixes) for key in keys)


def _any_key_contains(keys: Iterable[str], *fragments: str) -> bool:
    return any(fragment in key for key in keys for fragment in fragments)


def _foreign_model_with_sd_like_keys(keys: list[str]) -> str | None:
    """Models that share LDM key prefixes with SD but cannot be loaded as SD1/SD2/SDXL."""
    if _any_key_starts(keys, "text_encoders.") and not _any_key_contains(keys, "joint_blocks."):
        return ("Stable Diffusion 3 / 3.5 text encoders without the MMDiT transformer "
                "(text-encoder files belong in models/text_encoder)")
    if _any_key_contains(keys, "joint_blocks."):
        return "an MMDiT (SD3-like) model whose transformer is not at model.diffusion_model.joint_blocks"
    if _any_key_contains(keys, "double_blocks.", "single_blocks."):
        return "a Flux derivative (e.g. Chroma or Flux.2) whose transformer is not Flux.1's"
    if "edm_mean" in keys or "edm_std" in keys:
        return "Playground v2.5 (EDM-parameterised SDXL)"
    has_sdxl_embedders = _any_key_starts(keys, SDXL_EMBEDDER_PREFIX)
    if has_sdxl_embedders and not (
        _any_key_starts(keys, SDXL_CLIP_PREFIX) and _any_key_starts(keys, SDXL_OPEN_CLIP_PREFIX)
    ) and not SDXL_REFINER.matches_ldm_keys(keys):
        embedder_ids = {key.split(".")[2] for key in keys if key.startswith(SDXL_EMBEDDER_PREFIX)}
        return f"an SGM model with text embedders {sorted(embedder_ids)} (not SDXL base)"
    if _any_key_starts(keys, "embedder.model.", "noise_augmentor."):
        return "SD2 unCLIP"
    if _any_key_starts(keys, "depth_model."):
        return "SD2 depth-to-image"
    if _any_key_starts(keys, "cond_stage_model.roberta."):
        return "AltDiffusion (XLM-RoBERTa text encoder)"
    if _any_key_starts(keys, "low_scale_model."):
        return "the SD2 x4 upscaler"
    return None


NOT_A_MODEL = "not a Stable Diffusion model"


def _describe_non_checkpoint(keys: list[str]) -> str:
    """Best guess at what a file without a complete SD checkpoint is, for the error message."""
    if _any_key_starts(keys, "lora_unet_", "lora_te", "lora_transformer_") or _any_key_contains(
        keys, ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w", ".lokr_w"
    ):
        return "a LoRA / LyCORIS network"
    if _any_key_contains(keys, "string_to_param", "emb_params") or set(keys) <= {"clip_l", "clip_g"}:
        return "a textual inversion embedding"
    if _any_key_starts(keys, "control_model.") or _any_key_contains(
        keys, "input_hint_block.", "controlnet_cond_embedding."
    ):
        return "a ControlNet"
    if _any_key_starts(keys, "down_blocks.", "mid_block.", "text_model.", "encoder.down_blocks."):
        return "a diffusers-format component (not a single-file LDM checkpoint)"
    has_unet_blocks = _any_key_starts(keys, LDM_UNET_PREFIX + "input_blocks.")
    if _any_key_starts(keys, LDM_UNET_PREFIX) and not has_unet_blocks:
        return "a transformer (DiT) model, not a Stable Diffusion UNet"
    vae_parts = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    if keys and all(key.startswith(vae_parts) for key in keys):
        return "a standalone VAE"
    if _any_key_starts(keys, LDM_UNET_PREFIX):
        return "Stable Diffusion UNet weights without a text encoder"
    if _any_key_starts(keys, SD1_CLIP_PREFIX, SD2_OPEN_CLIP_PREFIX, SDXL_EMBEDDER_PREFIX):
        return "a text encoder without UNet weights"
    return NOT_A_MODEL


def detect_architecture(key_shapes: Mapping[str, tuple[int, ...]]) -> Architecture:
    """Classify an LDM-layout checkpoint from its key names and shapes (no tensor data needed)."""
    keys = list(key_shapes)
    if not keys:
        raise UnsupportedCheckpointError("Unsupported checkpoint: the file holds no tensors")
    family = family_of_ldm_keys(keys)
    if family is not None and family.single_file_denoiser != LDM_UNET_FORMAT:
        return _transformer_architecture(family, key_shapes)
    foreign = _foreign_model_with_sd_like_keys(keys)
    if foreign is not None:
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: looks like {foreign}; only "
            f"{', '.join(family_named(name).label for name in reversed(family_names()))} are supported"
        )
    conv_in_shape = key_shapes.get(UNET_CONV_IN_KEY)
    if family is None or conv_in_shape is None:
        described = _describe_non_checkpoint(keys)
        if described == NOT_A_MODEL:  # name what was looked for, and what the file holds
            looked_for = "; ".join(f"{known.label}: {known.ldm_detection_names()}" for known in FAMILIES)
            shown = ", ".join(keys[:4]) + (f" ... ({len(keys)} tensors)" if len(keys) > 4 else "")
            described += f" (no family's tensor names were found; looked for {looked_for}; the file holds {shown})"
        raise UnsupportedCheckpointError(f"Unsupported checkpoint: looks like {described}")
    if len(conv_in_shape) != 4:
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: UNet input convolution has shape {tuple(conv_in_shape)}, "
            "expected a 4-D convolution weight"
        )
    in_channels = int(conv_in_shape[1])
    if in_channels == 8:
        raise UnsupportedCheckpointError(
            "Unsupported checkpoint: looks like InstructPix2Pix (8-channel UNet)"
        )
    if in_channels not in (4, 9):
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: the UNet takes {in_channels} input channels "
            "(only 4 = text-to-image and 9 = inpainting are supported)"
        )
    return Architecture(family=family.name, unet_in_channels=in_channels, label=family.architecture_label(in_channels))


def _transformer_architecture(family: ModelFamily, key_shapes: Mapping[str, tuple[int, ...]]) -> Architecture:
    """A DiT family's single file: its variant from the block structure, its channels from the patch
    embedding (text encoders may be missing: the loader reads them from models/text_encoder)."""
    keys = list(key_shapes)
    if _any_key_contains(keys, ".quant_state.", ".absmax", ".quant_map"):
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: a bitsandbytes NF4/FP4-quantized {family.label} model (such as Forge's "
            f"*-bnb-nf4 files); use its fp8, fp16 or bf16 file")
    in_channels = family.ldm_in_channels(key_shapes)
    if in_channels is None:
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: looks like {family.label} but has no transformer input projection")
    if in_channels != family.denoiser_in_channels:
        raise UnsupportedCheckpointError(
            f"Unsupported checkpoint: the {family.label} transformer takes {in_channels} input channels "
            f"(only {family.denoiser_in_channels}, text-to-image, is supported; Fill/Depth/inpainting models "
            f"are not)")
    variant = family.variant_of_ldm_keys(keys)
    return Architecture(family=family.name, unet_in_channels=in_channels,
                        label=family.architecture_label(in_channels, variant), variant=variant)


# --------------------------------------------------------------------------------------------
# LDM -> diffusers (diffusers' own converters, plus the fit-up they leave to the caller)
# --------------------------------------------------------------------------------------------


def _with_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key: value for key, value in state_dict.items() if key.startswith(prefix)}


def _build_text_model_on_meta(
    config: Mapping[str, object], with_projection: bool
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A weightless instance: the converters only need its config and its parameter names."""
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    text_config = CLIPTextConfig.from_dict(dict(config))
    with torch.device("meta"):
        return model_class(text_config)


def _fit_text_encoder_keys(converted: dict[str, Tensor], model: PreTrainedModel) -> dict[str, Tensor]:
    """Match the converters' "text_model.*" names to the installed transformers' module layout.

    transformers >= 5.6 flattened CLIPTextModel (no "text_model." level) while
    CLIPTextModelWithProjection kept it; position_ids is no longer a saved buffer; SD2's
    CLIPTextModel has no text projection. Anything else unexpected is left for strict loading to
    report.
    """
    expected_keys = set(model.state_dict().keys())
    has_wrapper = any(key.startswith("text_model.") for key in expected_keys)
    fitted: dict[str, Tensor] = {}
    for key, value in converted.items():
        name = key if has_wrapper else key.removeprefix("text_model.")
        droppable = name.endswith("position_ids") or name in ("text_projection.weight", "logit_scale")
        if droppable and name not in expected_keys:
            continue
        fitted[name] = value
    return fitted


def _normalise_legacy_sd1_clip_keys(clip_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Insert the "text_model." level that SD1 files saved with old transformers lack."""
    normalised: dict[str, Tensor] = {}
    for key, value in clip_state.items():
        rest = key[len(SD1_CLIP_PREFIX) :]
        if rest.startswith(_LEGACY_SD1_CLIP_PARTS):
            key = f"{SD1_CLIP_PREFIX}text_model.{rest}"
        normalised[key] = value
    return normalised


def _drop_open_clip_layers_beyond(
    open_clip_state: dict[str, Tensor], prefix: str, num_layers: int
) -> dict[str, Tensor]:
    """SD2 ships 24 OpenCLIP blocks but diffusers keeps 23 (it uses the penultimate layer)."""
    layer_pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    kept: dict[str, Tensor] = {}
    for key, value in open_clip_state.items():
        match = layer_pattern.match(key)
        if match is not None and int(match.group(1)) >= num_layers:
            continue
        kept[key] = value
    return kept


def _convert_clip_l(
    state_dict: Mapping[str, Tensor], prefix: str, config: Mapping[str, object], legacy_key_fixup: bool = False,
    with_projection: bool = False,
) -> dict[str, Tensor]:
    """CLIP in transformers' layout under `prefix` (SD1, SDXL's first encoder, both of SD3's)."""
    clip_state = _with_prefix(state_dict, prefix)
    if legacy_key_fixup:
        clip_state = _normalise_legacy_sd1_clip_keys(clip_state)
    converted = convert_ldm_clip_checkpoint(clip_state, remove_prefix=prefix)
    if with_projection and "text_projection.weight" not in converted:
        # SD3's CLIP-L files often leave out the projection diffusers' pipeline applies: it is the identity.
        width = int(converted["text_model.embeddings.token_embedding.weight"].shape[1])
        converted["text_projection.weight"] = torch.eye(width, dtype=converted[
            "text_model.embeddings.token_embedding.weight"].dtype)
    model = _build_text_model_on_meta(config, with_projection=with_projection)
    return _fit_text_encoder_keys(converted, model)


def _convert_t5(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """SD3's T5-XXL encoder: transformers' names under `prefix`; the token table is also the encoder's
    input embedding (tied in T5EncoderModel, stored once in the files)."""
    converted = convert_sd3_t5_checkpoint_to_diffusers({k.replace(prefix, sd3.LDM_T5_PREFIX, 1): v
                                                        for k, v in _with_prefix(state_dict, prefix).items()})
    converted.setdefault("encoder.embed_tokens.weight", converted["shared.weight"])
    return converted


def _convert_open_clip(
    state_dict: Mapping[str, Tensor], prefix: str, config: Mapping[str, object], with_projection: bool
) -> dict[str, Tensor]:
    model = _build_text_model_on_meta(config, with_projection=with_projection)
    open_clip_state = _drop_open_clip_layers_beyond(
        _with_prefix(state_dict, prefix), prefix, model.config.num_hidden_layers
    )
    converted = convert_open_clip_checkpoint(model, open_clip_state, prefix=prefix)
    return _fit_text_encoder_keys(converted, model)


def ldm_to_diffusers(
    state_dict: Mapping[str, Tensor], family: str, configs: Mapping[str, dict]
) -> dict[str, dict[str, Tensor]]:
    """Split an LDM checkpoint into diffusers-keyed state dicts, one per pipeline component.

    ``configs`` holds the component configs as in diffusers' config.json files ("unet", "vae",
    "text_encoder" and, for SDXL, "text_encoder_2"). The result loads with
    ``load_state_dict(strict=True)``. A checkpoint saved without a VAE yields no "vae" entry, so the
    caller can fall back to a separate VAE file.
    """
    model_family = family_named(family)  # ValueError for an unknown family, first
    components: dict[str, dict[str, Tensor]] = {
        model_family.denoiser: _denoiser_from_ldm(state_dict, model_family, configs[model_family.denoiser])
    }
    vae_prefix = next((prefix for prefix in model_family.ldm_vae_prefixes
                       if any(key.startswith(prefix) for key in state_dict)), None)
    if vae_prefix is not None:
        components["vae"] = vae_from_ldm({LDM_VAE_PREFIX + key[len(vae_prefix):]: value for key, value
                                          in state_dict.items() if key.startswith(vae_prefix)}, configs)
    for encoder in model_family.ldm_text_encoders:
        if encoder.component in model_family.separate_text_encoder_files and not any(
                key.startswith(encoder.prefix) for key in state_dict):
            continue  # left for the loader to read from models/text_encoder
        components[encoder.component] = text_encoder_from_single_file(state_dict, encoder, configs[encoder.component])
    return components


LDM_UNET_FORMAT = "ldm_unet"
SD3_MMDIT_FORMAT = "sd3_mmdit"
BFL_FLUX_FORMAT = "bfl_flux"


def vae_from_ldm(vae_state: Mapping[str, Tensor], configs: Mapping[str, dict]) -> dict[str, Tensor]:
    """A VAE in LDM names under `first_stage_model.` (a checkpoint's, or a standalone file such as Flux's
    ae.safetensors given that prefix) -> diffusers names, through diffusers' converter."""
    return convert_ldm_vae_checkpoint(dict(vae_state), _fitted_ldm_vae_config(configs, vae_state))


def flux_transformer_from_bfl(transformer_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Flux.1's transformer in BFL names (prefix removed) -> diffusers names, through diffusers' converter.

    The converter splits each single-stream block's fused `linear1` (q, k, v and the MLP input) at Flux.1's
    published width (3072); every other tensor it maps by name. So that narrower models of the same
    architecture (test models) take the same path, `linear1` is split here at the width the weights have
    (`img_in`'s output width, MLP ratio 4) and the converter is handed shape-only placeholders of the
    published sizes (zero-stride views: no memory) whose results are replaced."""
    state = dict(transformer_state)
    width = int(state["img_in.weight"].shape[0])
    sizes = (width, width, width, 4 * width)
    published = (3072, 3072, 3072, 4 * 3072)
    blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("single_blocks.")})
    splits: dict[str, tuple[Tensor, ...]] = {}
    for block in blocks:
        for kind in ("weight", "bias"):
            key = f"single_blocks.{block}.linear1.{kind}"
            splits[key] = torch.split(state[key], sizes, dim=0)
            shape = (sum(published),) + (1,) * (state[key].ndim - 1)
            state[key] = state[key].new_zeros((1,) * state[key].ndim).expand(shape)
    converted = convert_flux_transformer_checkpoint_to_diffusers(state)  # pops what it converts
    for block in blocks:
        for kind in ("weight", "bias"):
            q, k, v, mlp = splits[f"single_blocks.{block}.linear1.{kind}"]
            prefix = f"single_transformer_blocks.{block}."
            for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
                converted[f"{prefix}{name}.{kind}"] = part.contiguous()
    return converted


def _denoiser_from_ldm(state_dict: Mapping[str, Tensor], family: ModelFamily,
                       config: Mapping[str, object]) -> dict[str, Tensor]:
    """The denoiser's weights through diffusers' converter for the family's single-file layout."""
    if family.single_file_denoiser == LDM_UNET_FORMAT:
        unet_state = _with_prefix(state_dict, LDM_UNET_PREFIX)
        if not unet_state:
            raise UnsupportedCheckpointError("Unsupported checkpoint: no UNet weights (model.diffusion_model.*)")
        return convert_ldm_unet_checkpoint(unet_state, dict(config))
    if family.single_file_denoiser == BFL_FLUX_FORMAT:
        return flux_transformer_from_bfl(flux.ldm_transformer_state(state_dict))
    transformer_state = sd3.ldm_transformer_state(state_dict)
    if not any(key.startswith(sd3.JOINT_BLOCKS) for key in transformer_state):
        raise UnsupportedCheckpointError(
            "Unsupported checkpoint: no MMDiT weights (model.diffusion_model.joint_blocks.*)")
    return convert_sd3_transformer_checkpoint_to_diffusers(dict(transformer_state))  # it pops what it converts


def _fitted_ldm_vae_config(configs: Mapping[str, dict], vae_state: Mapping[str, Tensor]) -> dict:
    """diffusers' VAE converter counts levels from the config; it gets the file's level count, read from the
    LDM names (`encoder.down.<level>.`): the published VAEs have the shipped four, reduced ones (families
    that fit sizes to the weights: SDXL, SD3) may have fewer."""
    config = dict(configs["vae"])
    levels = len(_indices(vae_state, re.escape(LDM_VAE_PREFIX) + r"encoder\.down\.(\d+)\."))
    config["down_block_types"] = [config["down_block_types"][0]] * levels
    config["up_block_types"] = [config["up_block_types"][0]] * levels
    return config


def text_encoder_from_single_file(state_dict: Mapping[str, Tensor], encoder: LdmTextEncoder,
                                  config: Mapping[str, object]) -> dict[str, Tensor]:
    """One text encoder's diffusers weights from its tensors under `encoder.prefix` (in a checkpoint, or a
    separate text-encoder file given that prefix)."""
    if encoder.kind == "clip":
        return _convert_clip_l(state_dict, encoder.prefix, config, encoder.legacy_key_fixup,
                               with_projection=encoder.with_projection)
    if encoder.kind == "t5":
        return _convert_t5(state_dict, encoder.prefix)
    return _convert_open_clip(state_dict, encoder.prefix, config, with_projection=encoder.with_projection)


# --------------------------------------------------------------------------------------------
# diffusers -> LDM (the inverse of diffusers' converters)
# --------------------------------------------------------------------------------------------


def _rename_first(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    """Rename the leading module path of ``name`` (e.g. "norm1.weight" -> "in_layers.0.weight")."""
    for diffusers_name, ldm_name in renames:
        if name.startswith(diffusers_name + "."):
            return ldm_name + name[len(diffusers_name) :]
    raise ValueError(f"no LDM equivalent for parameter {name!r}")


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    compiled = re.compile(pattern)
    return {int(match.group(1)) for key in keys if (match := compiled.match(key)) is not None}


_UNET_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UNET_DOWNSAMPLE = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$")
_UNET_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_UNET_UP = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UNET_UPSAMPLE = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$")


def _unet_key_to_ldm(
    key: str, layers_per_block: int, up_blocks_with_attention: set[int]
) -> str:
    """LDM numbers UNet blocks sequentially: per level, the layers then the resampler."""
    entries_per_level = layers_per_block + 1
    if match := _UNET_DOWN.match(key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + level * entries_per_level + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_rename_first(rest, _UNET_RESNET_TO_LDM)}"
        return f"input_blocks.{index}.1.{rest}"
    if match := _UNET_DOWNSAMPLE.match(key):
        index = 1 + int(match[1]) * entries_per_level + layers_per_block
        return f"input_blocks.{index}.0.op.{match[2]}"
    if match := _UNET_MID.match(key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_rename_first(rest, _UNET_RESNET_TO_LDM)}"
        return f"middle_block.{2 * layer + 1}.{rest}"
    if match := _UNET_UP.match(key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = level * entries_per_level + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_rename_first(rest, _UNET_RESNET_TO_LDM)}"
        return f"output_blocks.{index}.1.{rest}"
    if match := _UNET_UPSAMPLE.match(key):
        level = int(match[1])
        index = level * entries_per_level + layers_per_block
        position = 2 if level in up_blocks_with_attention else 1
        return f"output_blocks.{index}.{position}.conv.{match[2]}"
    try:
        return _rename_first(key, _UNET_TOP_LEVEL_TO_LDM)
    except ValueError:
        raise ValueError(f"UNet parameter {key!r} has no LDM equivalent") from None


def unet_to_ldm(unet_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    keys = list(unet_state)
    down_resnets = _indices(keys, r"^down_blocks\.0\.resnets\.(\d+)\.")
    if not down_resnets:
        raise ValueError("UNet state dict has no down_blocks.0 resnets; is it a UNet2DConditionModel?")
    layers_per_block = len(down_resnets)
    up_resnets = _indices(keys, r"^up_blocks\.0\.resnets\.(\d+)\.")
    if len(up_resnets) != layers_per_block + 1:
        raise ValueError(
            f"UNet has {layers_per_block} resnets per down block but {len(up_resnets)} per up block; "
            "the LDM layout needs layers_per_block + 1"
        )
    up_blocks_with_attention = _indices(keys, r"^up_blocks\.(\d+)\.attentions\.")
    return {
        LDM_UNET_PREFIX + _unet_key_to_ldm(key, layers_per_block, up_blocks_with_attention): value
        for key, value in unet_state.items()
    }


_VAE_MID_RESNET = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$")
_VAE_MID_ATTENTION = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$")
_VAE_DOWN_RESNET = re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_VAE_DOWNSAMPLE = re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$")
_VAE_UP_RESNET = re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_VAE_UPSAMPLE = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$")


def _vae_resnet_name(rest: str) -> str:
    return "nin_shortcut" + rest[len("conv_shortcut") :] if rest.startswith("conv_shortcut.") else rest


def _vae_item_to_ldm(key: str, value: Tensor, num_up_blocks: int) -> tuple[str, Tensor]:
    """LDM's decoder counts up-levels from the bottom; diffusers counts from the top."""
    if match := _VAE_MID_RESNET.match(key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet_name(match[3])}", value
    if match := _VAE_MID_ATTENTION.match(key):
        rest = _rename_first(match[2], _VAE_ATTENTION_TO_LDM)
        is_projection = rest.split(".")[0] in ("q", "k", "v", "proj_out")
        if is_projection and rest.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        return f"{match[1]}.mid.attn_1.{rest}", value
    if match := _VAE_DOWN_RESNET.match(key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet_name(match[3])}", value
    if match := _VAE_DOWNSAMPLE.match(key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}", value
    if match := _VAE_UP_RESNET.match(key):
        level = num_up_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{_vae_resnet_name(match[3])}", value
    if match := _VAE_UPSAMPLE.match(key):
        level = num_up_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.upsample.conv.{match[2]}", value
    try:
        return _rename_first(key, _VAE_TOP_LEVEL_TO_LDM), value
    except ValueError:
        raise ValueError(f"VAE parameter {key!r} has no LDM equivalent") from None


def _vae_to_ldm(vae_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    num_up_blocks = len(_indices(vae_state, r"^decoder\.up_blocks\.(\d+)\."))
    converted: dict[str, Tensor] = {}
    for key, value in vae_state.items():
        ldm_key, ldm_value = _vae_item_to_ldm(key, value, num_up_blocks)
        converted[LDM_VAE_PREFIX + ldm_key] = ldm_value
    return converted


def _clip_l_to_ldm(text_state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIP-L keeps Hugging Face names under the prefix; originals also carry position_ids."""
    converted = {
        f"{prefix}text_model.{key.removeprefix('text_model.')}": value for key, value in text_state.items()
    }
    position_ids_key = f"{prefix}text_model.embeddings.position_ids"
    position_embedding_key = f"{prefix}text_model.embeddings.position_embedding.weight"
    if position_ids_key not in converted and position_embedding_key in converted:
        num_positions = converted[position_embedding_key].shape[0]
        converted[position_ids_key] = torch.arange(num_positions, dtype=torch.int64).unsqueeze(0)
    return converted


_OPEN_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_QKV = re.compile(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$")


def _open_clip_to_ldm(text_state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """OpenCLIP fuses q/k/v into in_proj_* and stores text_projection as (width, embed_dim)."""
    converted: dict[str, Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in text_state.items():
        if key == "text_projection.weight":
            converted[prefix + "text_projection"] = value.T.contiguous()
            continue
        name = key.removeprefix("text_model.")
        if name.endswith("position_ids"):
            continue
        if name == "embeddings.token_embedding.weight":
            converted[prefix + "token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            converted[prefix + "positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            converted[prefix + "ln_final." + name[len("final_layer_norm.") :]] = value
        elif match := _OPEN_CLIP_LAYER.match(name):
            layer, rest = int(match[1]), match[2]
            if qkv := _OPEN_CLIP_QKV.match(rest):
                qkv_parts.setdefault((layer, qkv[2]), {})[qkv[1]] = value
            else:
                ldm_rest = _rename_first(rest, _OPEN_CLIP_LAYER_TO_LDM)
                converted[f"{prefix}transformer.resblocks.{layer}.{ldm_rest}"] = value
        else:
            raise ValueError(f"text encoder parameter {key!r} has no OpenCLIP equivalent")
    for (layer, param), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer} lacks one of q/k/v_proj.{param}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        converted[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return converted


def diffusers_to_ldm(components: Mapping[str, Mapping[str, Tensor]], family: str) -> dict[str, Tensor]:
    """Assemble one LDM-layout state dict (as A1111 loads it) from diffusers component state dicts.

    Needs "unet" and the family's text encoder(s) ("text_encoder", plus "text_encoder_2" for SDXL);
    "vae" is written when given. The result is detected by :func:`detect_architecture` as ``family``.
    """
    required = ["unet", *family_named(family).text_encoders]
    missing = [name for name in required if name not in components]
    if missing:
        raise ValueError(f"{family} export needs components {missing}")
    ldm_state = unet_to_ldm(components["unet"])
    if "vae" in components:
        ldm_state.update(_vae_to_ldm(components["vae"]))
    for encoder in family_named(family).ldm_text_encoders:
        to_ldm = _clip_l_to_ldm if encoder.kind == "clip" else _open_clip_to_ldm
        ldm_state.update(to_ldm(components[encoder.component], encoder.prefix))
    return ldm_state
