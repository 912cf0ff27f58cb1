"""Flux.1 (Black Forest Labs): a rectified-flow transformer (`FluxTransformer2DModel`: 19 double-stream and 38
single-stream blocks) over a 16-channel VAE whose latents it reads as 2x2 patches packed into 64-wide tokens,
conditioned on CLIP-L's pooled output (the `vector_in` embedding) and T5-XXL's last hidden states (the joint
attention's text tokens). T5 is required: Flux has no CLIP-only prompt path.

Flux.1 dev and schnell are one family with the same shapes; dev is guidance-distilled and carries a guidance
embedding (`guidance_in.*`, diffusers' `time_text_embed.guidance_embedder`), schnell is timestep-distilled (few
steps, no guidance input, no resolution-dependent shift). The variant is read from the weights.

Single files come as BFL and ComfyUI ship them: the transformer alone in BFL names (`double_blocks.N...`,
`single_blocks.N...`, `img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in`, `final_layer`), with or
without a `model.diffusion_model.` prefix, beside `ae.safetensors` (models/VAE) and `clip_l.safetensors` +
`t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn.safetensors` (models/text_encoder); or "all in one" files that
bundle `vae.` and `text_encoders.clip_l/t5xxl.transformer.` parts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from webui.models.families.base import IMG2IMG, INPAINT, TXT2IMG, LdmTextEncoder, ModelFamily, frozen
from webui.models.formats.dit_lora import RowPart, layer, original_names
from webui.models.families.fitted_configs import (
    StateDict, count_indexed, fit_clip_config, fit_t5_config, fit_vae_config,
)

LDM_TRANSFORMER_PREFIX = "model.diffusion_model."
DOUBLE_BLOCKS = "double_blocks."
IN_CHANNELS_KEY = "img_in.weight"
GUIDANCE_KEY = "guidance_in.in_layer.weight"
LDM_CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
LDM_T5_PREFIX = "text_encoders.t5xxl.transformer."
# Parts an "all in one" file bundles beside the transformer (never transformer tensors).
OTHER_PARTS = re.compile(r"^(vae|first_stage_model|text_encoders|conditioner|cond_stage_model)\.")

VAE_SCALE_FACTOR = 8  # the Flux VAE's 4 levels halve the image 3 times
DEV, SCHNELL = "flux.1-dev", "flux.1-schnell"
VARIANT_LABELS = MappingProxyType({DEV: "Flux.1 dev", SCHNELL: "Flux.1 schnell"})
# FLUX.1-schnell's published scheduler: a fixed shift of 1 instead of dev's resolution-dependent one.
SCHNELL_SCHEDULER = MappingProxyType({"shift": 1.0, "use_dynamic_shifting": False})


@dataclass(frozen=True)
class FluxGenerationDefaults:
    """What the generation engine needs to run one variant as BFL publishes it."""

    steps: int                   # dev: 28 (guidance-distilled), schnell: 4 (timestep-distilled)
    sampler: str                 # A1111 name: flow-matching Euler (the shift is in the scheduler config)
    guidance_scale: float        # the distilled guidance fed to the guidance embedding (schnell has none)
    max_sequence_length: int     # T5 tokens (dev 512, schnell 256)


VARIANT_DEFAULTS = MappingProxyType({
    DEV: FluxGenerationDefaults(steps=28, sampler="Euler", guidance_scale=3.5, max_sequence_length=512),
    SCHNELL: FluxGenerationDefaults(steps=4, sampler="Euler", guidance_scale=0.0, max_sequence_length=256),
})


# LoRA training: an image-stream target -> its text-stream twin in a double-stream block, and the single-stream
# block's layer that plays the chosen target's part (its q/k/v are named as the double blocks').
FLUX_TWINS = MappingProxyType({"to_q": "add_q_proj", "to_k": "add_k_proj", "to_v": "add_v_proj",
                               "to_out.0": "to_add_out", "ff.net.0.proj": "ff_context.net.0.proj",
                               "ff.net.2": "ff_context.net.2"})
FLUX_SINGLE_BLOCK_TARGETS = MappingProxyType({"to_out.0": "proj_out", "ff.net.0.proj": "proj_mlp"})
TRAINING_GUIDANCE = 1.0


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, C * 4]: each 2x2 patch one token, channels first within it (FluxPipeline's
    packing)."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents`."""
    batch = tokens.shape[0]
    patches = tokens.reshape(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels, height, width)


def variant_of_guidance(has_guidance_embedding: bool) -> str:
    return DEV if has_guidance_embedding else SCHNELL


def transformer_key(key: str) -> str:
    """A BFL transformer name without ComfyUI's `model.diffusion_model.` prefix."""
    return key[len(LDM_TRANSFORMER_PREFIX):] if key.startswith(LDM_TRANSFORMER_PREFIX) else key


# BFL's Flux modules -> diffusers' FluxTransformer2DModel's, as the checkpoint loader maps the weights (diffusers'
# converter, `ldm_conversion.flux_transformer_from_bfl`): fused qkv / linear1 split by rows, final modulation
# swapped (tests/engine/test_flux_lora.py checks LoRA merges against that converter).
BFL_TOP_LEVEL = (
    layer("img_in", "x_embedder"), layer("txt_in", "context_embedder"),
    layer("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    layer("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    layer("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    layer("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    layer("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),  # dev only
    layer("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    layer("final_layer.linear", "proj_out"),
    layer("final_layer.adaLN_modulation.1", "norm_out.linear", swapped=True),
)
BFL_DOUBLE_BLOCK = (
    layer("img_attn.qkv", "attn.to_q", "attn.to_k", "attn.to_v"),
    layer("txt_attn.qkv", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    layer("img_attn.proj", "attn.to_out.0"), layer("txt_attn.proj", "attn.to_add_out"),
    layer("img_mlp.0", "ff.net.0.proj"), layer("img_mlp.2", "ff.net.2"),
    layer("txt_mlp.0", "ff_context.net.0.proj"), layer("txt_mlp.2", "ff_context.net.2"),
    layer("img_mod.lin", "norm1.linear"), layer("txt_mod.lin", "norm1_context.linear"),
)
BFL_SINGLE_BLOCK = (
    layer("linear1", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),  # q, k, v and the MLP input, fused
    layer("linear2", "proj_out"), layer("modulation.lin", "norm.linear"),
)

# The q/k RMS norms of a double-stream block: BFL -> diffusers (the module's `.scale` is diffusers' `.weight`).
BFL_DOUBLE_BLOCK_NORMS = (("img_attn.norm.query_norm", "norm_q"), ("img_attn.norm.key_norm", "norm_k"),
                          ("txt_attn.norm.query_norm", "norm_added_q"), ("txt_attn.norm.key_norm", "norm_added_k"))


class Flux1(ModelFamily):
    name = "flux"
    label = "Flux.1"
    native_size = 1024
    preset_prefix = "flux_"
    training_objective = "flow_matching"
    trained_lora_layout = "diffusers"  # `transformer.<diffusers path>.lora_A/B`, what FluxPipeline.load_lora_weights reads
    # LoRA only: full fine-tunes (DreamBooth) could be saved (`single_file_writer`) but the trainer's full
    # fine-tune of a 12B transformer is neither fitted to memory nor tested.
    training_methods = ("lora", "dreambooth_lora")
    size_multiple = 16  # the VAE's 8 x 2x2 latent patches
    denoiser = "transformer"
    single_file_denoiser = "bfl_flux"
    latent_channels = 16
    uses_clip_skip = False  # the pooled CLIP output and T5's last layer; no A1111 clip skip
    distilled_guidance = True  # dev's CFG scale is a model input (one pass, no negative prompt); see pipeline_arguments
    scheduler_class = "FlowMatchEulerDiscreteScheduler"
    flow_matching = True
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    separate_text_encoder_files = frozen({
        "text_encoder": ("clip_l.safetensors", "clip_l*.safetensors"),
        "text_encoder_2": ("t5xxl_fp16.safetensors", "t5xxl_fp32.safetensors", "t5xxl*.safetensors"),
    })
    separate_vae_files = ("ae.safetensors", "flux_vae.safetensors", "flux*ae*.safetensors")
    ldm_vae_prefixes = ("vae.", "first_stage_model.")
    pipeline_classes = frozen({TXT2IMG: "FluxPipeline", IMG2IMG: "FluxImg2ImgPipeline",
                               INPAINT: "FluxInpaintPipeline"})
    text_encoder_widths = (768, 4096)
    cross_attention_width = 4096  # the joint attention's text tokens are T5-XXL's
    conditions_on_pooled_text = True
    # Published least-squares fit of the Flux VAE's 16 latent channels to RGB (ComfyUI's Flux latent format;
    # recalled and checked against its published table, not re-fitted here: only preview colours use it).
    preview_coefficients = (
        (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
    )
    ldm_text_encoders = (
        LdmTextEncoder("text_encoder", LDM_CLIP_L_PREFIX, "clip"),
        LdmTextEncoder("text_encoder_2", LDM_T5_PREFIX, "t5"),
    )
    # sd-scripts' Flux LoRAs: "lora_unet_" for the transformer (BFL module names), te1 for CLIP-L, te3 for T5.
    kohya_lora_prefixes = frozen({"transformer": "lora_unet_", "text_encoder": "lora_te1_",
                                  "text_encoder_2": "lora_te3_"})
    kohya_base_model_version = "flux1"
    lora_module_naming = "sgm"
    original_implementation = "https://github.com/black-forest-labs/flux"  # sd-scripts' Flux LoRAs say so
    # LoRA files name the transformer by BFL's modules (sd-scripts "lora_unet_double_blocks_0_img_attn_qkv",
    # ComfyUI/ai-toolkit "diffusion_model.double_blocks.0.img_attn.qkv") or by diffusers' ("transformer.
    # transformer_blocks.0.attn.to_q", OneTrainer "lora_transformer_..."); sd-scripts writes CLIP-L as lora_te1_
    # and T5 as lora_te3_. Older files spell sd-scripts' BFL names with "lora_flux_" instead of "lora_unet_".
    # XLabs' files name attention processors (`double_blocks.0.processor.qkv_lora1.down.weight`): diffusers'
    # converter brings them to diffusers' names first (`readable_lora_state`).
    lora_key_prefixes = (
        ("lora_unet_", "transformer", False), ("lora_flux_", "transformer", False),
        ("lora_transformer_", "transformer", False),
        ("lora_te1_", "text_encoder", False), ("lora_te3_", "text_encoder_2", False),
        ("transformer.", "transformer", True), ("diffusion_model.", "transformer", True),
        ("text_encoder.", "text_encoder", True), ("text_encoder_2.", "text_encoder_2", True),
    )
    lora_key_markers = ("double_blocks", "single_blocks", "single_transformer_blocks")
    comfyui_t5_lora_prefixes = MappingProxyType({"text_encoder_2": ("lora_te2_", "lora_te3_")})
    single_file_lora_loader = "Forge"  # Forge loads Flux LoRAs with ComfyUI's key maps
    a1111_text_lora_names = MappingProxyType({})
    lora_layouts_diffusers_converts = (".processor.proj_lora", ".processor.qkv_lora")

    # ControlNets: diffusers' FluxControlNetModel (InstantX / Shakker-Labs / XLabs diffusers releases). Union ones
    # embed a control mode; InstantX's and Shakker-Labs' Union(-Pro) model cards number them in this order.
    transformer_controlnet = "FluxControlNetModel"
    controlnet_union_modes = ("canny", "tile", "depth", "blur", "pose", "gray", "low quality")

    # -- generation engine (webui/generation): flow samplers, T5 read once per prompt, packed latents --------
    default_sampler = "Euler"
    repeats_given_embeddings = False  # FluxPipeline uses given embeddings as they are
    pooled_denoiser_argument = "pooled_projections"  # a prompt schedule switches CLIP-L's pooled vector there
    sequence_text_encoder, sequence_tokenizer, sequence_max_tokens = "text_encoder_2", "tokenizer_2", 512

    @property
    def denoiser_in_channels(self) -> int:
        return self.latent_channels * 4  # 2x2 patches of the 16 latent channels, packed into one token

    def shipped_tokenizer_folder(self, tokenizer: str) -> Path:
        """CLIP-L's and T5's tokenizer files are SD3's (one shipped copy): tokenizer and tokenizer_3 there."""
        return (self.config_folder.parent / "sd3" / {"tokenizer": "tokenizer", "tokenizer_2": "tokenizer_3"}[tokenizer])

    def default_prediction_type(self, resolution: tuple[int, int]) -> str:
        return "flow"

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        """sd-scripts' ids: "flux-1-dev" (also when unknown) or "flux-1-schnell"."""
        return "flux-1-schnell" if variant == SCHNELL else "flux-1-dev"

    def architecture_label(self, unet_in_channels: int, variant: str | None = None) -> str:
        return VARIANT_LABELS.get(variant or "", self.label)

    def generation_defaults(self, variant: str | None) -> FluxGenerationDefaults:
        """Steps, distilled guidance and T5 length for a variant (dev's when unknown)."""
        return VARIANT_DEFAULTS.get(variant or DEV, VARIANT_DEFAULTS[DEV])

    def unpack_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """FluxPipeline denoises [batch, tokens, 64] (2x2 patches of 16 channels); diffusers' own unpacking
        (the VAE's 8x downscale) gives [batch, 16, height/8, width/8]. Already unpacked latents pass."""
        if latents.ndim == 4:
            return latents
        from diffusers import FluxPipeline

        return FluxPipeline._unpack_latents(latents, height, width, VAE_SCALE_FACTOR)

    def pipeline_arguments(self, variant: str | None, guidance_scale: float | None = None) -> dict[str, Any]:
        """Arguments a Flux pipeline call takes beyond the prompt embeddings: the distilled guidance (dev reads
        it through its guidance embedding; there is no negative prompt pass, `true_cfg_scale` stays 1) and the
        T5 length. FluxPipeline packs the latents into 2x2 patches and builds `txt_ids`/`img_ids` itself."""
        defaults = self.generation_defaults(variant)
        guidance = defaults.guidance_scale if guidance_scale is None or variant == SCHNELL else guidance_scale
        return {"guidance_scale": guidance, "max_sequence_length": defaults.max_sequence_length}

    # -- prompt encoding -------------------------------------------------------------------------
    def flow_sampler_names(self, variant: str | None, fixed_shift: bool = False) -> tuple[str, ...]:
        """FluxPipeline hands the scheduler its own sigmas (FlowMatch Heun takes none) and a resolution shift
        `mu` (the DPM-Solver schedulers take it only with dynamic shifting, which schnell's fixed shift and a
        requested Shift lack)."""
        if variant == SCHNELL or fixed_shift:
            return ("Euler", "UniPC")
        return ("Euler", "DPM++ 2M", "DPM++ 2M SDE", "UniPC")

    def sequence_limit(self, variant: str | None) -> int:
        """T5 tokens per prompt: dev 512, schnell 256 (BFL's published lengths)."""
        return self.generation_defaults(variant).max_sequence_length

    def encode_chunk(self, text_encoders: list[torch.nn.Module | None], token_ids: list[torch.Tensor],
                     clip_skip: int, joint_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A CLIP-L chunk gives only the pooled vector (its pooler output): no CLIP hidden states join T5's
        text tokens (an empty sequence `joint_width` wide)."""
        pooled = text_encoders[0](token_ids[0], output_hidden_states=False).pooler_output
        return pooled.new_zeros(pooled.shape[0], 0, joint_width or self.cross_attention_width), pooled

    def encode_sequence(self, encoder: torch.nn.Module | None, token_ids: torch.Tensor | None,
                        joint_width: int, clip_ids: torch.Tensor, length: int) -> torch.Tensor:
        """T5's last hidden states over the whole prompt: the transformer's text tokens (T5 is required)."""
        if encoder is None or token_ids is None:
            raise ValueError(f"{self.label} needs its T5-XXL text encoder "
                             f"({self.separate_text_encoder_files['text_encoder_2'][0]} in models/text_encoder)")
        return encoder(token_ids).last_hidden_state

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[batch, 16, h, w] VAE-layout latents -> FluxPipeline's 2x2-packed tokens [batch, h/2 * w/2, 64]."""
        from diffusers import FluxPipeline

        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)

    def vae_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed tokens (step callback, "latent" output) of a `height` x `width` image -> the VAE's layout
        (the VAE's scale factor follows from the token count: each token is 2x2 cells of `factor` pixels)."""
        if latents.dim() != 3:
            return latents
        from diffusers import FluxPipeline

        factor = math.isqrt(height * width // (4 * latents.shape[1]))
        return FluxPipeline._unpack_latents(latents, height, width, factor)

    def encode_token_ids(self, text_encoders: list[torch.nn.Module | None], token_ids: list[torch.Tensor],
                         clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flux's conditioning: T5's last hidden states are the text tokens, CLIP-L's pooled output (the final
        LayerNorm at the end token) the pooled vector; clip skip does not apply (`uses_clip_skip`)."""
        if len(text_encoders) < 2 or text_encoders[1] is None:
            raise ValueError(f"{self.label} needs its T5-XXL text encoder "
                             f"({self.separate_text_encoder_files['text_encoder_2'][0]} in models/text_encoder)")
        pooled = text_encoders[0](token_ids[0], output_hidden_states=False).pooler_output
        hidden = text_encoders[1](token_ids[1], output_hidden_states=False).last_hidden_state
        return hidden, pooled

    def lora_original_names(self, denoiser: torch.nn.Module) -> Mapping[str, tuple[RowPart, ...]]:
        return original_names(denoiser, BFL_TOP_LEVEL, (("double_blocks", "transformer_blocks", BFL_DOUBLE_BLOCK),
                                                        ("single_blocks", "single_transformer_blocks", BFL_SINGLE_BLOCK)))

    def original_parameter_names(self, denoiser: torch.nn.Module) -> Mapping[str, str]:
        """The q/k RMS norms (BFL's `.scale`) of every double- and single-stream block."""
        names = {}
        for index in range(len(denoiser.transformer_blocks)):
            for original, installed in BFL_DOUBLE_BLOCK_NORMS:
                names[f"{DOUBLE_BLOCKS}{index}.{original}.scale"] = f"transformer_blocks.{index}.attn.{installed}.weight"
        for index in range(len(denoiser.single_transformer_blocks)):
            for original, installed in (("norm.query_norm", "norm_q"), ("norm.key_norm", "norm_k")):
                names[f"single_blocks.{index}.{original}.scale"] = (
                    f"single_transformer_blocks.{index}.attn.{installed}.weight")
        return names

    # -- detection -------------------------------------------------------------------------------
    def ldm_detection_names(self) -> str:
        return f"{DOUBLE_BLOCKS}* with img_in, txt_in, vector_in and time_in (bare or under model.diffusion_model.)"

    def matches_ldm_keys(self, keys: list[str]) -> bool:
        """BFL's double-stream blocks with Flux.1's input embeddings (Chroma and other derivatives lack
        `vector_in`)."""
        names = {transformer_key(key) for key in keys if not OTHER_PARTS.match(key)}
        return (any(name.startswith(DOUBLE_BLOCKS) for name in names)
                and {"img_in.weight", "txt_in.weight", "vector_in.in_layer.weight", "time_in.in_layer.weight"} <= names)

    def variant_of_ldm_keys(self, keys: list[str]) -> str:
        return variant_of_guidance(any(transformer_key(key) == GUIDANCE_KEY for key in keys))

    def ldm_in_channels(self, key_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        shape = key_shapes.get(LDM_TRANSFORMER_PREFIX + IN_CHANNELS_KEY) or key_shapes.get(IN_CHANNELS_KEY)
        return int(shape[1]) if shape is not None and len(shape) == 2 else None

    def scheduler_overrides(self, single_file_keys: Collection[str]) -> dict[str, Any]:
        """schnell runs a fixed shift of 1; the shipped scheduler is dev's (resolution-dependent shift)."""
        return dict(SCHNELL_SCHEDULER) if self.variant_of_ldm_keys(list(single_file_keys)) == SCHNELL else {}

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return unet_config.get("_class_name") == "FluxTransformer2DModel"

    def variant_of_denoiser_config(self, config: Mapping[str, Any]) -> str:
        return variant_of_guidance(bool(config.get("guidance_embeds")))

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return base_model_version.startswith("flux") or architecture.startswith("flux-1")

    # -- configs from weights --------------------------------------------------------------------
    def fit_configs(self, configs: Mapping[str, dict[str, Any]],
                    state_dicts: Mapping[str, StateDict]) -> dict[str, dict[str, Any]]:
        fitters = {"transformer": fit_transformer_config, "vae": fit_vae_config, "text_encoder": fit_clip_config,
                   "text_encoder_2": fit_t5_config}
        fitted = {name: fitters[name](config, state_dicts[name]) if name in state_dicts else dict(config)
                  for name, config in configs.items()}
        problems = mismatched_components(fitted)
        if problems:
            raise ValueError(f"its {self.label} components do not fit together: {'; '.join(problems)}")
        return fitted

    def transformer_controlnet_config(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return fit_controlnet_config(tensors)

    # -- training --------------------------------------------------------------------------------
    def lora_training_targets(self, denoiser: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
        """Double-stream blocks: each chosen image-stream layer and its text-stream twin (as SD3's joint blocks);
        single-stream blocks: q/k/v, and their fused output `proj_out` for `to_out.0`, the MLP input `proj_mlp`
        for `ff.net.0.proj` (diffusers' Flux DreamBooth-LoRA script adapts the same attention layers)."""
        wanted = set(suffixes) | {FLUX_TWINS[suffix] for suffix in suffixes if suffix in FLUX_TWINS}
        single = {FLUX_SINGLE_BLOCK_TARGETS[suffix] for suffix in suffixes if suffix in FLUX_SINGLE_BLOCK_TARGETS}
        names = []
        for name, module in denoiser.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if name.startswith("transformer_blocks.") and any(name.endswith("." + suffix) for suffix in wanted):
                names.append(name)
            elif name.startswith("single_transformer_blocks.") and (
                    any(name.endswith(".attn." + suffix) for suffix in suffixes if suffix in ("to_q", "to_k", "to_v"))
                    or name.rsplit(".", 1)[-1] in single):
                names.append(name)
        return names

    def denoiser_training_call(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                               text_states: torch.Tensor, pooled: torch.Tensor | None,
                               time_ids: torch.Tensor) -> torch.Tensor:
        """Flux takes 2x2 latent patches as tokens with their (0, row, column) position ids, T5 tokens with zero
        ids, the timestep as a fraction (sigma) and, dev only, the distilled guidance (1.0 while training, as
        LoRA trainers for dev use); the prediction is unpacked back to the latent grid."""
        batch, channels, height, width = noisy.shape
        tokens = pack_latents(noisy)
        rows = torch.arange(height // 2, device=noisy.device, dtype=noisy.dtype)
        columns = torch.arange(width // 2, device=noisy.device, dtype=noisy.dtype)
        image_ids = torch.stack([torch.zeros(height // 2, width // 2, device=noisy.device, dtype=noisy.dtype),
                                 rows[:, None].expand(-1, width // 2), columns[None, :].expand(height // 2, -1)],
                                dim=-1).reshape(-1, 3)
        text_ids = torch.zeros(text_states.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        extra = {}
        if denoiser.config.guidance_embeds:
            extra["guidance"] = torch.full((batch,), TRAINING_GUIDANCE, device=noisy.device, dtype=noisy.dtype)
        prediction = denoiser(hidden_states=tokens, timestep=timesteps / 1000, encoder_hidden_states=text_states,
                              pooled_projections=pooled, img_ids=image_ids, txt_ids=text_ids, **extra).sample
        return unpack_latents(prediction, channels, height, width)


def mismatched_components(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Companion files that are not the transformer's (an SD VAE saved as ae.safetensors, CLIP-G as clip_l):
    each would build, then fail at the first generation; said here, at load, with the file to check."""
    transformer, clip, t5, vae = (configs.get(name) for name in ("transformer", "text_encoder", "text_encoder_2",
                                                                   "vae"))
    if transformer is None:
        return []
    problems = []
    if clip is not None and clip["hidden_size"] != transformer["pooled_projection_dim"]:
        problems.append(f"the CLIP text encoder is {clip['hidden_size']} wide but the transformer takes "
                        f"{transformer['pooled_projection_dim']}-wide pooled text (is clip_l.safetensors CLIP-L?)")
    if t5 is not None and t5["d_model"] != transformer["joint_attention_dim"]:
        problems.append(f"the T5 text encoder is {t5['d_model']} wide but the transformer takes "
                        f"{transformer['joint_attention_dim']}-wide text (is the t5xxl file T5-XXL?)")
    if vae is not None and 4 * vae["latent_channels"] != transformer["in_channels"]:
        problems.append(f"the VAE has {vae['latent_channels']} latent channels but the transformer takes "
                        f"{transformer['in_channels'] // 4} (is ae.safetensors Flux's VAE?)")
    return problems


def rope_axes(head_width: int) -> list[int]:
    """The rotary embedding's split of a head over (index, height, width) positions. It is not in the weights;
    Flux.1 splits its 128-wide heads 16/56/56, i.e. 1/8, 7/16, 7/16 (narrower test models keep the ratio)."""
    first = head_width // 8
    rest = (head_width - first) // 2
    return [first, rest, head_width - first - rest]


def fit_transformer_config(config: Mapping[str, Any], state: StateDict) -> dict[str, Any]:
    """Every size of a `FluxTransformer2DModel` from its diffusers-keyed weights, and dev vs schnell from the
    guidance embedding."""
    fitted = dict(config)
    inner, in_channels = state["x_embedder.weight"].shape
    head_width = int(state["transformer_blocks.0.attn.norm_q.weight"].shape[0])
    fitted.update(
        in_channels=int(in_channels),
        num_layers=count_indexed(state, r"transformer_blocks\.(\d+)\."),
        num_single_layers=count_indexed(state, r"single_transformer_blocks\.(\d+)\."),
        attention_head_dim=head_width, num_attention_heads=int(inner) // head_width,
        joint_attention_dim=int(state["context_embedder.weight"].shape[1]),
        pooled_projection_dim=int(state["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state,
        axes_dims_rope=list(config.get("axes_dims_rope") or []) if head_width == sum(
            config.get("axes_dims_rope") or []) else rope_axes(head_width),
    )
    out_channels = int(state["proj_out.weight"].shape[0])
    fitted["out_channels"] = None if out_channels == int(in_channels) else out_channels  # None: as in_channels
    return fitted


def fit_controlnet_config(state: StateDict) -> dict[str, Any]:
    """Every size of a `FluxControlNetModel` from its diffusers-named weights (a config.json-less file): the
    blocks, widths and guidance embedding as the transformer's (`fit_transformer_config`), a union model's mode
    count (`controlnet_mode_embedder`) and, for XLabs-style ones that read the control image in pixels, the
    width of their conditioning embedding, whose 8x-downscaled output is packed into `in_channels`-wide tokens."""
    inner, in_channels = (int(size) for size in state["x_embedder.weight"].shape)
    norm = next(key for key in sorted(state) if key.endswith("attn.norm_q.weight"))
    head_width = int(state[norm].shape[0])
    config: dict[str, Any] = dict(
        patch_size=1, in_channels=in_channels,
        num_layers=count_indexed(state, r"transformer_blocks\.(\d+)\."),
        num_single_layers=count_indexed(state, r"single_transformer_blocks\.(\d+)\."),
        attention_head_dim=head_width, num_attention_heads=inner // head_width,
        joint_attention_dim=int(state["context_embedder.weight"].shape[1]),
        pooled_projection_dim=int(state["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state,
        axes_dims_rope=rope_axes(head_width), num_mode=None, conditioning_embedding_channels=None)
    if "controlnet_mode_embedder.weight" in state:
        config["num_mode"] = int(state["controlnet_mode_embedder.weight"].shape[0])
    if "input_hint_block.conv_out.weight" in state:
        channels = int(state["input_hint_block.conv_out.weight"].shape[0])
        config.update(conditioning_embedding_channels=channels, patch_size=math.isqrt(in_channels // channels))
    return config


def ldm_transformer_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a single file in BFL names (prefix removed; bundled parts left out)."""
    return {transformer_key(key): value for key, value in state_dict.items()
            if key.startswith(LDM_TRANSFORMER_PREFIX) or not OTHER_PARTS.match(key)}
