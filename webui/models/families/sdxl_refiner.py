"""The SDXL refiner: a second-stage SDXL model that takes over the last, low-noise steps of a picture. It has
only the OpenCLIP bigG text encoder (its penultimate layer is the 1280-wide cross-attention input, the pooled
projection the extra conditioning) and a wider UNet (384 channels, four levels) whose time ids carry an
aesthetic score instead of the target size. It has no text-to-image pipeline: it runs in img2img and as
txt2img's Refiner.

Its own family (not a variant of SDXL) because everything a family describes differs: the components (one
text encoder), the pipeline classes, the conditioning rule, the shipped configs and the single-file layout
(`conditioner.embedders.0.model.` is bigG here, CLIP-L in the base).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from webui.models.families.base import IMG2IMG, INPAINT, LdmTextEncoder, frozen, has_key_prefix
from webui.models.families.sdxl import StableDiffusionXL

LDM_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
SECOND_EMBEDDER_PREFIX = "conditioner.embedders.1."
# What the refiner's time ids say about the wanted and the unwanted picture (the published defaults,
# also A1111's "SDXL high/low aesthetic score").
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


class StableDiffusionXLRefiner(StableDiffusionXL):
    name = "sdxl_refiner"
    label = "SDXL Refiner"
    text_encoder_widths = (1280,)
    cross_attention_width = 1280
    preset_prefix = "sdxl_refiner_"
    text_encoders = ("text_encoder_2",)
    tokenizers = ("tokenizer_2",)
    pipeline_classes = frozen({IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
                               INPAINT: "StableDiffusionXLInpaintPipeline"})
    pipeline_options = frozen({"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False})
    ldm_text_encoders = (LdmTextEncoder("text_encoder_2", LDM_OPEN_CLIP_PREFIX, "open_clip", with_projection=True),)
    kohya_lora_prefixes = frozen({"unet": "lora_unet_", "text_encoder_2": "lora_te2_"})
    # CLIP-G alone is ComfyUI's first encoder (lora_te_, not lora_te2_); A1111 sends lora_te2_ to a second
    # conditioner the refiner does not have, so it maps no text-encoder name.
    comfyui_clip_lora_prefixes = MappingProxyType({"text_encoder_2": ("lora_te_", "text_encoder.", "lora_prior_te_")})
    a1111_text_lora_names = MappingProxyType({})
    kohya_base_model_version = "sdxl_refiner_v1-0"

    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        return "stable-diffusion-xl-v1-refiner"

    def shipped_tokenizer_folder(self, tokenizer: str) -> Path:
        """bigG's tokenizer files are SDXL's second tokenizer (one shipped copy)."""
        return self.config_folder.parent / "sdxl" / tokenizer

    def encode_token_ids(self, text_encoders: list[torch.nn.Module], token_ids: list[torch.Tensor],
                         clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """bigG's penultimate layer (clip skip N moves N-1 further back) and its pooled projection."""
        output = text_encoders[0](token_ids[0], output_hidden_states=True)
        return output.hidden_states[-(clip_skip + 1)], output.text_embeds

    def time_ids(self, height: int, width: int, positive: bool) -> list[float]:
        """Original size, crop corner and an aesthetic score (high for the prompt, low for the negative)."""
        return [height, width, 0, 0, AESTHETIC_SCORE if positive else NEGATIVE_AESTHETIC_SCORE]

    def matches_ldm_keys(self, keys: list[str]) -> bool:
        return has_key_prefix(keys, LDM_OPEN_CLIP_PREFIX) and not has_key_prefix(keys, SECOND_EMBEDDER_PREFIX)

    def ldm_detection_names(self) -> str:
        return f"{LDM_OPEN_CLIP_PREFIX}* without {SECOND_EMBEDDER_PREFIX}*"

    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        return (unet_config.get("addition_embed_type") == "text_time" and "text_encoder_2" in component_folders
                and "text_encoder" not in component_folders)

    def takes_controlnet(self, context_width: int, added_conditioning: bool) -> bool:
        return False  # no ControlNets are made for the refiner

    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        return (base_model_version.startswith("sdxl_refiner")
                or architecture.startswith("stable-diffusion-xl-v1-refiner"))
