"""Stable Diffusion 2.x: one OpenCLIP ViT-H text encoder (1024-wide cross-attention); the 768 px models
(SD2.0-v, SD2.1) predict v, the 512 px ones epsilon."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from webui.models.families.base import LdmTextEncoder, ModelFamily
from webui.models.families.sd1 import SD_PIPELINES, SD_PREVIEW_COEFFICIENTS

LDM_OPEN_CLIP_PREFIX = "cond_stage_model.model."


class StableDiffusion2(ModelFamily):
    # A1111 runs SD2's OpenCLIP: q/k/v/out and the MLP of each layer take kohya's lora_te_ CLIP names.
    a1111_text_lora_names = MappingProxyType({"text_encoder": (("lora_te_", "open_clip"),)})
    name = "sd2"
    label = "SD2.x"
    text_encoder_widths = (1024,)
    cross_attention_width = 1024
    preset_prefix = "sd1_"
    native_size = 768
    pipeline_classes = SD_PIPELINES
    preview_coefficients = SD_PREVIEW_COEFFICIENTS
    ldm_text_encoders = (LdmTextEncoder("text_encoder", LDM_OPEN_CLIP_PREFIX, "open_clip"),)
    kohya_base_model_version = "sd_v2"
    kohya_is_v2 = True

    def default_prediction_type(self, resolution: tuple[int, int]) -> str:
        return "v" if max(resolution) >= 768 else "epsilon"

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        return "stable-diffusion-v2-768-v" if prediction_type == "v" else "stable-diffusion-v2-512"

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return unet_config.get("cross_attention_dim") == 1024

    def takes_controlnet(self, context_width: int, added_conditioning: bool) -> bool:
        return not added_conditioning and context_width == self.cross_attention_width

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return base_model_version.startswith("sd_v2") or architecture.startswith("stable-diffusion-v2")
