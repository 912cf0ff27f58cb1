"""Tiny SDXL base and SDXL refiner models of the exact architecture (text_time UNet with two resnets per block,
CLIP-L + OpenCLIP bigG with projection for the base, bigG alone for the refiner, the SDXL VAE's structure),
seeded, written as the single `.safetensors` files people download (SGM names, through the project's tested
LDM writer) or as diffusers folders. The text encoders keep CLIP's 49408-token vocabulary so the shipped
tokenizers fit them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.ldm_conversion import diffusers_to_ldm

CLIP_WIDTH = 64      # one 64-wide head, as the published encoders' heads are 64 wide
TIME_ID_WIDTH = 8    # addition_time_embed_dim (256 in the published models)
BASE, REFINER = "sdxl", "sdxl_refiner"


def _clip(hidden_act: str, with_projection: bool) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=1, max_position_embeddings=77, projection_dim=CLIP_WIDTH,
                            hidden_act=hidden_act, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_sdxl_modules(kind: str = BASE, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Seeded tiny components of the base (`BASE`) or the refiner (`REFINER`, five time ids: sizes and an
    aesthetic score; attention on every level but the outer ones, as the published refiner)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    refiner = kind == REFINER
    levels = (("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D") if refiner
              else ("DownBlock2D", "CrossAttnDownBlock2D"))
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D") if refiner else ("CrossAttnUpBlock2D", "UpBlock2D")
    widths = (32, 64, 64) if refiner else (32, 64)
    cross_width = CLIP_WIDTH if refiner else 2 * CLIP_WIDTH
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=levels, up_block_types=up, transformer_layers_per_block=2 if refiner else [1, 2],
        attention_head_dim=[1] * len(widths), cross_attention_dim=cross_width, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=CLIP_WIDTH + (5 if refiner else 6) * TIME_ID_WIDTH, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, scaling_factor=0.13025, force_upcast=False)
    modules = {"unet": unet, "vae": vae, "text_encoder_2": _clip("gelu", with_projection=True)}
    if not refiner:
        modules["text_encoder"] = _clip("quick_gelu", with_projection=False)
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def write_single_file(path: Path, kind: str = BASE, seed: int = 0,
                      extra: dict[str, torch.Tensor] | None = None) -> Path:
    """The model as one SGM-layout `.safetensors` (`extra`: marker tensors such as `v_pred`)."""
    modules = tiny_sdxl_modules(kind, seed)
    state = diffusers_to_ldm({name: module.state_dict() for name, module in modules.items()}, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in {**state, **(extra or {})}.items()}, str(path))
    return path


def write_diffusers_folder(folder: Path, kind: str = BASE, seed: int = 0) -> Path:
    """The model as a diffusers folder (model_index.json, one sub-folder per component, shipped tokenizers)."""
    import json
    import shutil

    from webui.models.model_configs import config_dir, load_model_index

    modules = tiny_sdxl_modules(kind, seed)
    for name, module in modules.items():
        module.save_pretrained(folder / name, safe_serialization=True)
    index = load_model_index(kind)
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        if (config_dir(kind) / name).is_dir():
            shutil.copytree(config_dir(kind) / name, folder / name)
    return folder
