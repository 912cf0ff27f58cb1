"""Stable Diffusion 1.x: one CLIP ViT-L/14 text encoder, 512 px, epsilon prediction (the embedded default
model has this architecture too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.models.families.base import IMG2IMG, INPAINT, TXT2IMG, LdmTextEncoder, ModelFamily, frozen

LDM_CLIP_PREFIX = "cond_stage_model.transformer."

# Published least-squares fit of the SD1.x/SD2.x VAE's latent channels to RGB.
SD_PREVIEW_COEFFICIENTS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SD_PIPELINES = frozen({TXT2IMG: "StableDiffusionPipeline", IMG2IMG: "StableDiffusionImg2ImgPipeline",
                       INPAINT: "StableDiffusionInpaintPipeline"})


class StableDiffusion1(ModelFamily):
    name = "sd1"
    label = "SD1.x"
    text_encoder_widths = (768,)
    cross_attention_width = 768
    preset_prefix = "sd1_"
    native_size = 512
    pipeline_classes = SD_PIPELINES
    preview_coefficients = SD_PREVIEW_COEFFICIENTS
    ldm_text_encoders = (LdmTextEncoder("text_encoder", LDM_CLIP_PREFIX, "clip", legacy_key_fixup=True),)
    kohya_base_model_version = "sd_v1"

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        return "stable-diffusion-v1"

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return True  # the fallback: checked after every other family

    def takes_controlnet(self, context_width: int, added_conditioning: bool) -> bool:
        return not added_conditioning  # any other text width: SD2 is asked first

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return base_model_version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1")
