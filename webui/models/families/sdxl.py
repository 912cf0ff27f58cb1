"""SDXL: CLIP ViT-L and OpenCLIP bigG text encoders (penultimate layers concatenated), the pooled bigG
embedding and size/crop time ids as extra UNet conditioning, 1024 px, epsilon prediction. Its kohya LoRAs
and single-file checkpoints use the original SGM module names."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

import torch

from webui.models.families.base import (
    IMG2IMG, INPAINT, TXT2IMG, UNET_LORA_MARKERS, LdmTextEncoder, ModelFamily, frozen,
)
from webui.models.families.fitted_configs import fit_clip_config, fit_text_time_unet_config, fit_vae_config

LDM_CLIP_PREFIX = "conditioner.embedders.0.transformer."
LDM_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    text_encoder_widths = (768, 1280)
    cross_attention_width = 2048
    preset_prefix = "sdxl_"
    native_size = 1024
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    pipeline_classes = frozen({TXT2IMG: "StableDiffusionXLPipeline", IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
                               INPAINT: "StableDiffusionXLInpaintPipeline"})
    conditions_on_pooled_text = True
    pooled_step_input = "add_text_embeds"
    # Published least-squares fit of the SDXL VAE's latent channels to RGB.
    preview_coefficients = (
        (0.3448, 0.4168, 0.4395),
        (-0.1953, -0.0290, 0.0250),
        (0.1074, 0.0886, -0.0163),
        (-0.3730, -0.2499, -0.2088),
    )
    ldm_text_encoders = (LdmTextEncoder("text_encoder", LDM_CLIP_PREFIX, "clip"),
                         LdmTextEncoder("text_encoder_2", LDM_OPEN_CLIP_PREFIX, "open_clip", with_projection=True))
    kohya_lora_prefixes = frozen({"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})
    kohya_base_model_version = "sdxl_base_v1-0"
    lora_key_markers = (*UNET_LORA_MARKERS, "input_blocks", "middle_block", "output_blocks")  # + its kohya LDM names
    lora_module_naming = "sgm"
    comfyui_clip_lora_prefixes = MappingProxyType({"text_encoder": ("lora_te_", "lora_te1_", "text_encoder."),
                                                   "text_encoder_2": ("lora_te2_", "text_encoder_2.")})
    a1111_text_lora_names = MappingProxyType({"text_encoder": (("lora_te1_", "clip"),),
                                              "text_encoder_2": (("lora_te2_", "open_clip"),)})

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        return "stable-diffusion-xl-v1-base"

    def time_ids(self, height: int, width: int, positive: bool) -> list[float]:
        """Original size, crop corner (none) and target size, as the SDXL pipelines default them."""
        return [height, width, 0, 0, height, width]

    def scheduler_overrides(self, single_file_keys: Collection[str]) -> dict[str, Any]:
        """v-prediction fine-tunes (NoobAI-XL v-pred and the like) carry an empty `v_pred` tensor, and those
        trained with zero terminal SNR also `ztsnr` (the markers ComfyUI and Forge read): rescaled betas make
        the last training timestep pure noise, which every A1111 schedule here starts from."""
        if "v_pred" not in single_file_keys:
            return {}
        overrides: dict[str, Any] = {"prediction_type": "v_prediction"}
        if "ztsnr" in single_file_keys:
            overrides["rescale_betas_zero_snr"] = True
        return overrides

    def fit_configs(self, configs: Mapping[str, dict[str, Any]],
                    state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
        """Sizes from the weights (published files give the shipped configs back; reduced test models fit)."""
        projection = state_dicts.get("text_encoder_2", {}).get("text_projection.weight")
        fitters = {
            "unet": lambda config, state: fit_text_time_unet_config(
                config, state, int(projection.shape[0]) if projection is not None else None,
                len(self.time_ids(1, 1, True))),
            "vae": fit_vae_config, "text_encoder": fit_clip_config, "text_encoder_2": fit_clip_config,
        }
        return {name: fitters[name](config, state_dicts[name]) if name in state_dicts else dict(config)
                for name, config in configs.items()}

    def encode_token_ids(self, text_encoders: list[torch.nn.Module], token_ids: list[torch.Tensor],
                         clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both encoders' penultimate layers (clip skip N moves N-1 further back), without the final norm,
        concatenated; the pooled embedding is the second encoder's projection."""
        layer = -(clip_skip + 1)
        first = text_encoders[0](token_ids[0], output_hidden_states=True)
        second = text_encoders[1](token_ids[1], output_hidden_states=True)
        return torch.cat([first.hidden_states[layer], second.hidden_states[layer]], dim=-1), second.text_embeds

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return unet_config.get("addition_embed_type") == "text_time" or "text_encoder_2" in component_folders

    def takes_controlnet(self, context_width: int, added_conditioning: bool) -> bool:
        return added_conditioning

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return base_model_version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl-v1-base")
