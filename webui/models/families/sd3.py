"""Stable Diffusion 3 / 3.5: an MMDiT transformer (`SD3Transformer2DModel`) over a 16-channel VAE, conditioned on
CLIP-L and OpenCLIP bigG (penultimate layers, both with projection) plus an optional T5-XXL, trained with
flow matching. SD3.5 Medium, SD3.5 Large and SD3 Medium are one family; they differ only in shapes (Medium
3.5 is the MMDiT-X with a second attention in its first 13 blocks, Large has 38 wider blocks with RMS q/k
norms, SD3 Medium has neither), so the variant and every size are read from the weights.

Single files come as ComfyUI/Stability ship them: `model.diffusion_model.joint_blocks...` for the transformer,
`first_stage_model.` for the VAE and, in the "incl_clips" files, `text_encoders.clip_l/clip_g/t5xxl.transformer.`;
the others need `clip_l.safetensors`, `clip_g.safetensors` and `t5xxl_*.safetensors` from models/text_encoder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from webui.models.families.base import IMG2IMG, INPAINT, TXT2IMG, LdmTextEncoder, ModelFamily, frozen
from webui.models.formats.dit_lora import RowPart, layer, original_names
from webui.models.families.fitted_configs import (
    StateDict, count_indexed, fit_clip_config, fit_t5_config, fit_vae_config, indexed,
)

LDM_TRANSFORMER_PREFIX = "model.diffusion_model."
JOINT_BLOCKS = "joint_blocks."
LDM_CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
LDM_CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
LDM_T5_PREFIX = "text_encoders.t5xxl.transformer."
IN_CHANNELS_KEY = "x_embedder.proj.weight"

# The original MMDiT's modules -> diffusers' SD3Transformer2DModel's, as diffusers' single-file converter maps
# the weights (`convert_sd3_transformer_checkpoint_to_diffusers`; tests/engine/test_sd3_lora.py checks LoRA merges
# against that converter).
MMDIT_TOP_LEVEL = (
    layer("x_embedder.proj", "pos_embed.proj"), layer("context_embedder", "context_embedder"),
    layer("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    layer("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    layer("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    layer("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    layer("final_layer.linear", "proj_out"),
    layer("final_layer.adaLN_modulation.1", "norm_out.linear", swapped=True),
)
MMDIT_BLOCK = (
    layer("x_block.attn.qkv", "attn.to_q", "attn.to_k", "attn.to_v"),
    layer("context_block.attn.qkv", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    layer("x_block.attn.proj", "attn.to_out.0"), layer("context_block.attn.proj", "attn.to_add_out"),
    layer("x_block.attn2.qkv", "attn2.to_q", "attn2.to_k", "attn2.to_v"),  # MMDiT-X (SD3.5 Medium) only
    layer("x_block.attn2.proj", "attn2.to_out.0"),
    layer("x_block.mlp.fc1", "ff.net.0.proj"), layer("x_block.mlp.fc2", "ff.net.2"),
    layer("context_block.mlp.fc1", "ff_context.net.0.proj"), layer("context_block.mlp.fc2", "ff_context.net.2"),
    layer("x_block.adaLN_modulation.1", "norm1.linear"),
    layer("context_block.adaLN_modulation.1", "norm1_context.linear"),
)
# The last block's context half only modulates (AdaLayerNormContinuous: shift/scale swapped, like final_layer's).
MMDIT_LAST_BLOCK = MMDIT_BLOCK[:-1] + (layer("context_block.adaLN_modulation.1", "norm1_context.linear", swapped=True),)

# The q/k RMS norms of a joint block (SD3.5; the second attention's in MMDiT-X blocks): original -> diffusers.
MMDIT_BLOCK_NORMS = (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                     ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k"),
                     ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k"))

# Variants, as detected from the transformer's structure.
SD35_MEDIUM, SD35_LARGE, SD3_MEDIUM = "sd3.5-medium", "sd3.5-large", "sd3-medium"
VARIANT_LABELS = MappingProxyType({SD35_MEDIUM: "SD3.5 Medium", SD35_LARGE: "SD3.5 Large", SD3_MEDIUM: "SD3 Medium"})
# modelspec ids (`modelspec.architecture`) of each variant, as sd-scripts' "stable-diffusion-3" stem continues.
MODELSPEC_ARCHITECTURES = MappingProxyType({SD35_MEDIUM: "stable-diffusion-3.5-medium",
                                            SD35_LARGE: "stable-diffusion-3.5-large",
                                            SD3_MEDIUM: "stable-diffusion-3-medium"})
CLIP_SEQUENCE_LENGTH = 77
# A LoRA target of the image stream -> the same layer of the text (context) stream in a joint block.
JOINT_TEXT_TWINS = MappingProxyType({"to_q": "add_q_proj", "to_k": "add_k_proj", "to_v": "add_v_proj",
                                     "to_out.0": "to_add_out", "ff.net.0.proj": "ff_context.net.0.proj",
                                     "ff.net.2": "ff_context.net.2"})


def variant_of_structure(has_dual_attention: bool, has_qk_norm: bool) -> str:
    """SD3.5 Medium's MMDiT-X has a second self-attention in its early blocks; SD3.5 Large normalises q/k
    but has no second attention; SD3 Medium has neither."""
    if has_dual_attention:
        return SD35_MEDIUM
    return SD35_LARGE if has_qk_norm else SD3_MEDIUM


class StableDiffusion3(ModelFamily):
    name = "sd3"
    label = "SD3.5"
    native_size = 1024
    preset_prefix = "sd3_"
    training_objective = "flow_matching"
    # Trained LoRAs are saved with diffusers' module names (`transformer.transformer_blocks.0.attn.to_q.lora_A`),
    # the layout diffusers' `StableDiffusion3Pipeline.load_lora_weights`, ComfyUI and this app's reader all load;
    # sd-scripts' `lora_unet_joint_blocks_..._attn_qkv` names fuse q/k/v, which diffusers' SD3 loader cannot read.
    trained_lora_layout = "diffusers"
    # LoRA only: a full fine-tune (DreamBooth) could be saved (`single_file_writer`) but the trainer's full
    # fine-tune of the MMDiT is untested, and textual inversion / pivotal tuning would need T5 embeddings too.
    training_methods = ("lora", "dreambooth_lora")
    size_multiple = 16  # the VAE's 8 x 2x2 latent patches
    denoiser = "transformer"
    single_file_denoiser = "sd3_mmdit"
    latent_channels = 16
    scheduler_class = "FlowMatchEulerDiscreteScheduler"
    flow_matching = True
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    optional_text_encoders = ("text_encoder_3",)
    # T5 reads the whole prompt once, up to diffusers' default `max_sequence_length`; CLIP reads 77-token chunks.
    sequence_text_encoder, sequence_tokenizer, sequence_max_tokens = "text_encoder_3", "tokenizer_3", 256
    repeats_given_embeddings = False
    pooled_denoiser_argument = "pooled_projections"  # a prompt schedule switches the pooled CLIP projections there
    default_sampler = "Euler"
    separate_text_encoder_files = frozen({
        "text_encoder": ("clip_l.safetensors", "clip_l*.safetensors"),
        "text_encoder_2": ("clip_g.safetensors", "clip_g*.safetensors"),
        "text_encoder_3": ("t5xxl_fp16.safetensors", "t5xxl_fp32.safetensors", "t5xxl*.safetensors"),
    })
    pipeline_classes = frozen({TXT2IMG: "StableDiffusion3Pipeline", IMG2IMG: "StableDiffusion3Img2ImgPipeline",
                               INPAINT: "StableDiffusion3InpaintPipeline"})
    text_encoder_widths = (768, 1280, 4096)
    cross_attention_width = 4096  # the transformer's joint attention takes T5-XXL-wide text features
    conditions_on_pooled_text = True
    # Published least-squares fit of the SD3 VAE's 16 latent channels to RGB (ComfyUI's SD3 latent format;
    # recalled, not re-fitted here: only the preview's colours depend on it).
    preview_coefficients = (
        (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
    )
    ldm_text_encoders = (
        LdmTextEncoder("text_encoder", LDM_CLIP_L_PREFIX, "clip", with_projection=True),
        LdmTextEncoder("text_encoder_2", LDM_CLIP_G_PREFIX, "clip", with_projection=True),
        LdmTextEncoder("text_encoder_3", LDM_T5_PREFIX, "t5"),
    )
    # sd-scripts' SD3 LoRAs: "lora_unet_" for the MMDiT (ComfyUI-compatible), te1/te2/te3 for the encoders.
    kohya_lora_prefixes = frozen({"transformer": "lora_unet_", "text_encoder": "lora_te1_",
                                  "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"})
    kohya_base_model_version = "sd3"
    lora_module_naming = "sgm"
    # LoRA files name the MMDiT by its original modules (sd-scripts "lora_unet_joint_blocks_0_x_block_attn_qkv",
    # ComfyUI/ai-toolkit "diffusion_model.joint_blocks.0.x_block.attn.qkv") or by diffusers' (diffusers/PEFT
    # "transformer.transformer_blocks.0.attn.to_q", OneTrainer/SimpleTuner "lora_transformer_transformer_blocks_0_
    # attn_to_q"); both spellings are looked up under every prefix of the transformer.
    lora_key_prefixes = (
        ("lora_unet_", "transformer", False), ("lora_transformer_", "transformer", False),
        ("lora_te1_", "text_encoder", False), ("lora_te2_", "text_encoder_2", False),
        ("lora_te3_", "text_encoder_3", False),
        ("transformer.", "transformer", True), ("diffusion_model.", "transformer", True),
        ("text_encoder.", "text_encoder", True), ("text_encoder_2.", "text_encoder_2", True),
        ("text_encoder_3.", "text_encoder_3", True),
    )
    lora_key_markers = ("joint_blocks", "context_block", "x_block")
    comfyui_clip_lora_prefixes = MappingProxyType({"text_encoder": ("lora_te_", "lora_te1_", "text_encoder."),
                                                   "text_encoder_2": ("lora_te2_", "text_encoder_2.")})
    comfyui_t5_lora_prefixes = MappingProxyType({"text_encoder_3": ("lora_te3_",)})
    comfyui_extra_dit_lora_prefixes = ("base_model.model.",)
    single_file_lora_loader = None  # neither A1111 nor Forge loads SD3 LoRAs
    a1111_text_lora_names = MappingProxyType({})

    def default_prediction_type(self, resolution: tuple[int, int]) -> str:
        return "flow"

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        """"stable-diffusion-3.5-medium", "-3.5-large" or "-3-medium" for the model the weights are (SD3.5
        Medium when unknown: the family's most trained-on model)."""
        return MODELSPEC_ARCHITECTURES.get(variant or SD35_MEDIUM, MODELSPEC_ARCHITECTURES[SD35_MEDIUM])

    def architecture_label(self, unet_in_channels: int, variant: str | None = None) -> str:
        return VARIANT_LABELS.get(variant or "", self.label)

    # -- prompt encoding -------------------------------------------------------------------------
    def encode_token_ids(self, text_encoders: list[torch.nn.Module | None], token_ids: list[torch.Tensor],
                         clip_skip: int, joint_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SD3's conditioning for one CLIP chunk and one T5 sequence (what training's captions and diffusers'
        `encode_prompt` make): `encode_chunk` followed along the sequence by `encode_sequence`; pooled: both
        CLIP projections side by side."""
        t5 = text_encoders[2] if len(text_encoders) > 2 else None
        t5_ids = token_ids[2] if len(token_ids) > 2 else None
        t5_states = self.encode_sequence(t5, t5_ids, joint_width or self.cross_attention_width, clip_ids=token_ids[0],
                                         length=CLIP_SEQUENCE_LENGTH if t5_ids is None else t5_ids.shape[1])
        clip_states, pooled = self.encode_chunk(text_encoders[:2], token_ids[:2], clip_skip, t5_states.shape[-1])
        return torch.cat([clip_states, t5_states.to(clip_states.dtype)], dim=-2), pooled

    def encode_chunk(self, text_encoders: list[torch.nn.Module | None], token_ids: list[torch.Tensor],
                     clip_skip: int, joint_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One 77-token CLIP chunk: the two CLIP encoders' penultimate layers (clip skip N moves N-1 further
        back) concatenated and zero-padded to the transformer's joint width; pooled: both projections."""
        layer = -(clip_skip + 1)
        clip_l = text_encoders[0](token_ids[0], output_hidden_states=True)
        clip_g = text_encoders[1](token_ids[1], output_hidden_states=True)
        clip_states = torch.cat([clip_l.hidden_states[layer], clip_g.hidden_states[layer]], dim=-1)
        pooled = torch.cat([clip_l.text_embeds, clip_g.text_embeds], dim=-1)
        width = joint_width or self.cross_attention_width
        return torch.nn.functional.pad(clip_states, (0, width - clip_states.shape[-1])), pooled

    def encode_sequence(self, encoder: torch.nn.Module | None, token_ids: torch.Tensor | None,
                        joint_width: int, clip_ids: torch.Tensor, length: int) -> torch.Tensor:
        """T5's last layer over the whole prompt's tokens; without T5 (or its tokens), `length` zero vectors
        `joint_width` wide (the transformer's `joint_attention_dim`), as diffusers does with its
        `max_sequence_length`, one row per row of `clip_ids`."""
        if encoder is None or token_ids is None:
            return torch.zeros(clip_ids.shape[0], length, joint_width, device=clip_ids.device)
        return encoder(token_ids).last_hidden_state

    def lora_original_names(self, denoiser: torch.nn.Module) -> Mapping[str, tuple[RowPart, ...]]:
        return original_names(denoiser, MMDIT_TOP_LEVEL, (("joint_blocks", "transformer_blocks", MMDIT_BLOCK),),
                              last_block_rules={"joint_blocks": MMDIT_LAST_BLOCK})

    def original_parameter_names(self, denoiser: torch.nn.Module) -> Mapping[str, str]:
        """The position table and every attention's q/k RMS norms (SD3.5), as diffusers' converter maps them."""
        names = {"pos_embed": "pos_embed.pos_embed"}
        for index in range(len(denoiser.transformer_blocks)):
            for original, installed in MMDIT_BLOCK_NORMS:
                names[f"{JOINT_BLOCKS}{index}.{original}.weight"] = f"transformer_blocks.{index}.{installed}.weight"
        return names

    # -- detection -------------------------------------------------------------------------------
    def matches_ldm_keys(self, keys: list[str]) -> bool:
        return any(key.startswith((LDM_TRANSFORMER_PREFIX + JOINT_BLOCKS, JOINT_BLOCKS)) for key in keys)

    def ldm_detection_names(self) -> str:
        return f"{LDM_TRANSFORMER_PREFIX}{JOINT_BLOCKS}* (or bare {JOINT_BLOCKS}*)"

    def variant_of_ldm_keys(self, keys: list[str]) -> str:
        return variant_of_structure(any(".x_block.attn2." in key for key in keys),
                                    any(".attn.ln_q." in key for key in keys))

    def ldm_in_channels(self, key_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        shape = key_shapes.get(LDM_TRANSFORMER_PREFIX + IN_CHANNELS_KEY) or key_shapes.get(IN_CHANNELS_KEY)
        return int(shape[1]) if shape is not None and len(shape) == 4 else None

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return unet_config.get("_class_name") == "SD3Transformer2DModel"

    def variant_of_denoiser_config(self, config: Mapping[str, Any]) -> str:
        return variant_of_structure(bool(config.get("dual_attention_layers")), bool(config.get("qk_norm")))

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return base_model_version.startswith("sd3") or architecture.startswith("stable-diffusion-3")

    # -- configs from weights --------------------------------------------------------------------
    def fit_configs(self, configs: Mapping[str, dict[str, Any]],
                    state_dicts: Mapping[str, StateDict]) -> dict[str, dict[str, Any]]:
        fitters = {"transformer": fit_transformer_config, "vae": fit_vae_config, "text_encoder": fit_clip_config,
                   "text_encoder_2": fit_clip_config, "text_encoder_3": fit_t5_config}
        return {name: fitters[name](config, state_dicts[name]) if name in state_dicts else dict(config)
                for name, config in configs.items()}

    # -- training --------------------------------------------------------------------------------
    def lora_training_targets(self, denoiser: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
        """The MMDiT's joint blocks: each chosen image-stream layer and its text-stream twin (`to_q` also trains
        `add_q_proj`, `to_out.0` `to_add_out`, `ff.net.2` `ff_context.net.2`), and the MMDiT-X second attention
        (`attn2.to_q`...) of SD3.5 Medium. Both streams, as diffusers' SD3 DreamBooth-LoRA script and sd-scripts
        adapt them: the text tokens attend jointly with the image, so a concept's caption words learn there."""
        wanted = set(suffixes) | {JOINT_TEXT_TWINS[suffix] for suffix in suffixes if suffix in JOINT_TEXT_TWINS}
        return [name for name, module in denoiser.named_modules()
                if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")
                and any(name.endswith("." + suffix) for suffix in wanted)]

    def denoiser_training_call(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                               text_states: torch.Tensor, pooled: torch.Tensor | None,
                               time_ids: torch.Tensor) -> torch.Tensor:
        """The MMDiT takes the joint text sequence and the pooled CLIP projections; no size conditioning."""
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=text_states,
                        pooled_projections=pooled).sample

    def text_encoding_options(self, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """The width of the zeros standing in for a missing T5 is the transformer's joint attention width."""
        return {"joint_width": self.joint_width(denoiser_config)}


def fit_transformer_config(config: Mapping[str, Any], state: StateDict) -> dict[str, Any]:
    """Every size of an `SD3Transformer2DModel` from its diffusers-keyed weights; the head width comes from
    the q/k norm when there is one (SD3.5), else from the shipped config (64, all published models)."""
    fitted = dict(config)
    inner, in_channels, patch, _ = state["pos_embed.proj.weight"].shape
    norm_q = state.get("transformer_blocks.0.attn.norm_q.weight")
    head_width = int(norm_q.shape[0]) if norm_q is not None else int(config["attention_head_dim"])
    positions = int(state["pos_embed.pos_embed"].shape[1])
    fitted.update(
        in_channels=int(in_channels), patch_size=int(patch),
        num_layers=count_indexed(state, r"transformer_blocks\.(\d+)\."),
        attention_head_dim=head_width, num_attention_heads=int(inner) // head_width,
        joint_attention_dim=int(state["context_embedder.weight"].shape[1]),
        caption_projection_dim=int(state["context_embedder.weight"].shape[0]),
        pooled_projection_dim=int(state["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        out_channels=int(state["proj_out.weight"].shape[0]) // (int(patch) ** 2),
        pos_embed_max_size=math.isqrt(positions),
        dual_attention_layers=indexed(state, r"transformer_blocks\.(\d+)\.attn2\."),
        qk_norm=None if norm_q is None else ("layer_norm" if "transformer_blocks.0.attn.norm_q.bias" in state
                                             else "rms_norm"),
    )
    return fitted


def ldm_transformer_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a single file, without the `model.diffusion_model.` prefix (files saved
    without it hold the bare MMDiT names next to the other components' prefixed ones)."""
    prefixed = {key[len(LDM_TRANSFORMER_PREFIX):]: value for key, value in state_dict.items()
                if key.startswith(LDM_TRANSFORMER_PREFIX)}
    if prefixed:
        return prefixed
    other_parts = re.compile(r"^(first_stage_model|text_encoders|vae)\.")
    return {key: value for key, value in state_dict.items() if not other_parts.match(key)}
