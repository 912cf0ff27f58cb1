"""LDM (A1111 single-file) <-> diffusers conversion on tiny seeded models of each family.

diffusers' own single-file converters (used by ldm_to_diffusers) are the oracle for our inverse:
diffusers -> LDM -> diffusers must give back every tensor bitwise and load strictly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.checkpoint_files import read_key_shapes, read_state_dict
from webui.models.ldm_conversion import (
    Architecture,
    UnsupportedCheckpointError,
    detect_architecture,
    diffusers_to_ldm,
    ldm_to_diffusers,
)

TEXT_HIDDEN = 32
TEXT_LAYERS = 2
SDXL_PROJECTION_DIM = 24  # differs from the hidden size so a wrongly oriented text_projection fails
SDXL_TIME_EMBED_DIM = 8


def _tiny_clip_config(hidden_act: str, projection_dim: int = TEXT_HIDDEN) -> dict:
    """CLIP-L uses quick_gelu, the OpenCLIP encoders (SD2, SDXL's second) use gelu."""
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ).to_dict()


def _tiny_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def _sd1_unet_config(in_channels: int) -> dict:
    """SD1: conv proj_in, cross-attention on all but the lowest level; two layers per block."""
    return dict(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _sd2_unet_config() -> dict:
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )


def _sdxl_unet_config() -> dict:
    """SDXL: no attention at the top level, deeper transformers below, text_time added embedding."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=2 * TEXT_HIDDEN,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=SDXL_PROJECTION_DIM + 6 * SDXL_TIME_EMBED_DIM,
        norm_num_groups=32,
    )


@dataclass(frozen=True)
class TinyFamily:
    family: str
    expected: Architecture
    configs: dict[str, dict]


def _as_config_json(config: Mapping) -> dict:
    """What the config.json on disk would give back (tuples become lists)."""
    return json.loads(json.dumps(dict(config)))


def _family_configs(family: str, in_channels: int = 4) -> dict[str, dict]:
    if family == "sd1":
        configs = {"unet": _sd1_unet_config(in_channels), "text_encoder": _tiny_clip_config("quick_gelu")}
    elif family == "sd2":
        configs = {"unet": _sd2_unet_config(), "text_encoder": _tiny_clip_config("gelu")}
    else:
        configs = {
            "unet": _sdxl_unet_config(),
            "text_encoder": _tiny_clip_config("quick_gelu"),
            "text_encoder_2": _tiny_clip_config("gelu", projection_dim=SDXL_PROJECTION_DIM),
        }
    configs["vae"] = _tiny_vae_config()
    return {name: _as_config_json(config) for name, config in configs.items()}


def _build_module(name: str, config: dict) -> nn.Module:
    if name == "unet":
        return UNet2DConditionModel.from_config(config)
    if name == "vae":
        return AutoencoderKL.from_config(config)
    text_config = CLIPTextConfig.from_dict(config)
    return CLIPTextModelWithProjection(text_config) if name == "text_encoder_2" else CLIPTextModel(text_config)


def _random_components(configs: dict[str, dict], seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Distinct random values everywhere, so any swapped or misplaced tensor is caught."""
    generator = torch.Generator().manual_seed(seed)
    components = {}
    for name, config in sorted(configs.items()):
        state = _build_module(name, config).state_dict()
        components[name] = {
            key: torch.randn(value.shape, generator=generator, dtype=torch.float32).to(value.dtype)
            for key, value in state.items()
        }
    return components


FAMILIES = {
    "sd1": TinyFamily("sd1", Architecture("sd1", 4, "SD1.x"), _family_configs("sd1")),
    "sd1-inpainting": TinyFamily(
        "sd1", Architecture("sd1", 9, "SD1.x inpainting"), _family_configs("sd1", in_channels=9)
    ),
    "sd2": TinyFamily("sd2", Architecture("sd2", 4, "SD2.x"), _family_configs("sd2")),
    "sdxl": TinyFamily("sdxl", Architecture("sdxl", 4, "SDXL"), _family_configs("sdxl")),
}


@pytest.fixture(scope="module")
def tiny_components() -> Callable[[str], dict[str, dict[str, Tensor]]]:
    cache: dict[str, dict[str, dict[str, Tensor]]] = {}

    def get(variant: str) -> dict[str, dict[str, Tensor]]:
        if variant not in cache:
            cache[variant] = _random_components(FAMILIES[variant].configs)
        return cache[variant]

    return get


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _assert_bitwise_equal(actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], component: str) -> None:
    assert set(actual) == set(expected), (
        f"{component}: missing {sorted(set(expected) - set(actual))[:5]}, "
        f"extra {sorted(set(actual) - set(expected))[:5]}"
    )
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, f"{component}.{key} dtype changed"
        assert actual[key].shape == value.shape, f"{component}.{key} shape changed"
        assert torch.equal(actual[key], value), f"{component}.{key} values changed"


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_round_trip_through_ldm_is_bitwise_exact_and_loads_strictly(variant: str, tiny_components) -> None:
    tiny = FAMILIES[variant]
    components = tiny_components(variant)

    ldm_state = diffusers_to_ldm(components, tiny.family)
    assert detect_architecture(_shapes(ldm_state)) == tiny.expected

    restored = ldm_to_diffusers(ldm_state, tiny.family, tiny.configs)

    assert set(restored) == set(components)
    for name, state in components.items():
        _assert_bitwise_equal(restored[name], state, name)
        module = _build_module(name, tiny.configs[name])
        module.load_state_dict(restored[name], strict=True)


def test_sd1_ldm_layout_uses_a1111_key_names(tiny_components) -> None:
    ldm_state = diffusers_to_ldm(tiny_components("sd1"), "sd1")
    # Level 1 is a cross-attention up block with an upsampler: LDM puts that upsampler at index 2.
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm_state
    # Level 0 has no attention, so its upsampler sits at index 1.
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm_state
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in ldm_state
    assert "model.diffusion_model.middle_block.2.out_layers.3.weight" in ldm_state
    assert ldm_state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # LDM numbers decoder levels from the bottom: its up.1 is diffusers' up_blocks.0 (64 channels).
    assert ldm_state["first_stage_model.decoder.up.1.block.1.conv2.weight"].shape == (64, 64, 3, 3)
    assert ldm_state["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"].shape == (32, 64, 1, 1)
    position_ids = ldm_state["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert position_ids.dtype == torch.int64 and position_ids.tolist() == [list(range(77))]


def test_open_clip_layout_is_fused_and_projection_is_transposed(tiny_components) -> None:
    sdxl = tiny_components("sdxl")
    ldm_state = diffusers_to_ldm(sdxl, "sdxl")
    prefix = "conditioner.embedders.1.model."
    text_2 = sdxl["text_encoder_2"]

    fused = ldm_state[prefix + "transformer.resblocks.1.attn.in_proj_weight"]
    expected = torch.cat(
        [text_2[f"text_model.encoder.layers.1.self_attn.{part}_proj.weight"] for part in ("q", "k", "v")]
    )
    assert torch.equal(fused, expected)
    assert ldm_state[prefix + "text_projection"].shape == (TEXT_HIDDEN, SDXL_PROJECTION_DIM)
    assert torch.equal(ldm_state[prefix + "text_projection"], text_2["text_projection.weight"].T)
    assert "model.diffusion_model.label_emb.0.2.weight" in ldm_state
    assert any(key.startswith("conditioner.embedders.0.transformer.text_model.") for key in ldm_state)
    assert ldm_state[prefix + "positional_embedding"].shape == (77, TEXT_HIDDEN)
    sd2_state = diffusers_to_ldm(tiny_components("sd2"), "sd2")
    assert sd2_state["cond_stage_model.model.positional_embedding"].shape == (77, TEXT_HIDDEN)
    assert sd2_state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias"].shape == (3 * TEXT_HIDDEN,)


def test_sd2_original_extra_open_clip_block_and_projection_are_dropped(tiny_components) -> None:
    """Real SD2 files carry 24 OpenCLIP blocks, text_projection and logit_scale; diffusers uses 23, none."""
    tiny = FAMILIES["sd2"]
    components = tiny_components("sd2")
    ldm_state = diffusers_to_ldm(components, "sd2")
    prefix = "cond_stage_model.model."
    last_block = f"{prefix}transformer.resblocks.{TEXT_LAYERS - 1}."
    for key in [key for key in ldm_state if key.startswith(last_block)]:
        ldm_state[key.replace(last_block, f"{prefix}transformer.resblocks.{TEXT_LAYERS}.")] = torch.zeros_like(
            ldm_state[key]
        )
    ldm_state[prefix + "text_projection"] = torch.zeros(TEXT_HIDDEN, TEXT_HIDDEN)
    ldm_state[prefix + "logit_scale"] = torch.tensor(4.6)

    restored = ldm_to_diffusers(ldm_state, "sd2", tiny.configs)

    _assert_bitwise_equal(restored["text_encoder"], components["text_encoder"], "text_encoder")
    _build_module("text_encoder", tiny.configs["text_encoder"]).load_state_dict(
        restored["text_encoder"], strict=True
    )


def test_sd1_file_from_old_transformers_without_text_model_level_loads(tiny_components) -> None:
    tiny = FAMILIES["sd1"]
    components = tiny_components("sd1")
    ldm_state = diffusers_to_ldm(components, "sd1")
    old_prefix = "cond_stage_model.transformer.text_model."
    legacy_state = {
        key.replace(old_prefix, "cond_stage_model.transformer.", 1): value for key, value in ldm_state.items()
    }
    assert not any(key.startswith(old_prefix) for key in legacy_state)

    restored = ldm_to_diffusers(legacy_state, "sd1", tiny.configs)

    _assert_bitwise_equal(restored["text_encoder"], components["text_encoder"], "text_encoder")


def test_checkpoint_without_vae_yields_no_vae_component(tiny_components) -> None:
    tiny = FAMILIES["sd1"]
    components = {name: state for name, state in tiny_components("sd1").items() if name != "vae"}
    ldm_state = diffusers_to_ldm(components, "sd1")
    assert not any(key.startswith("first_stage_model.") for key in ldm_state)

    restored = ldm_to_diffusers(ldm_state, "sd1", tiny.configs)

    assert set(restored) == {"unet", "text_encoder"}


def test_export_without_second_text_encoder_is_refused(tiny_components) -> None:
    components = {name: state for name, state in tiny_components("sdxl").items() if name != "text_encoder_2"}
    with pytest.raises(ValueError, match="text_encoder_2"):
        diffusers_to_ldm(components, "sdxl")


def test_half_precision_round_trip_keeps_dtype(tiny_components) -> None:
    tiny = FAMILIES["sdxl"]
    components = {
        name: {key: value.half() for key, value in state.items()} for name, state in tiny_components("sdxl").items()
    }
    restored = ldm_to_diffusers(diffusers_to_ldm(components, "sdxl"), "sdxl", tiny.configs)
    for name, state in components.items():
        _assert_bitwise_equal(restored[name], state, name)


def test_saved_safetensors_checkpoint_is_classified_from_header_and_loads(tmp_path: Path, tiny_components) -> None:
    tiny = FAMILIES["sd2"]
    path = tmp_path / "tiny-sd2.safetensors"
    save_file(diffusers_to_ldm(tiny_components("sd2"), "sd2"), path)

    assert detect_architecture(read_key_shapes(path)) == tiny.expected
    restored = ldm_to_diffusers(read_state_dict(path), "sd2", tiny.configs)
    _build_module("unet", tiny.configs["unet"]).load_state_dict(restored["unet"], strict=True)


def _sd1_like_keys(in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        "model.diffusion_model.input_blocks.0.0.weight": (320, in_channels, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    }


def _sd3_keys(blocks: int, width: int, dual_attention: bool, qk_norm: bool) -> dict[str, tuple[int, ...]]:
    """The header of a Stability/ComfyUI SD3 single file (transformer names only: the variant is in them)."""
    keys = {"model.diffusion_model.x_embedder.proj.weight": (width, 16, 2, 2),
            "model.diffusion_model.pos_embed": (1, 384 * 384 if dual_attention else 192 * 192, width),
            "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3)}
    for block in range(blocks):
        keys[f"model.diffusion_model.joint_blocks.{block}.x_block.attn.qkv.weight"] = (3 * width, width)
        if qk_norm:
            keys[f"model.diffusion_model.joint_blocks.{block}.x_block.attn.ln_q.weight"] = (64,)
        if dual_attention and block < 13:
            keys[f"model.diffusion_model.joint_blocks.{block}.x_block.attn2.qkv.weight"] = (3 * width, width)
    return keys


@pytest.mark.parametrize(("keys", "variant", "label"), [
    (_sd3_keys(24, 1536, dual_attention=True, qk_norm=True), "sd3.5-medium", "SD3.5 Medium"),
    (_sd3_keys(38, 2432, dual_attention=False, qk_norm=True), "sd3.5-large", "SD3.5 Large"),
    (_sd3_keys(24, 1536, dual_attention=False, qk_norm=False), "sd3-medium", "SD3 Medium"),
], ids=["sd3.5-medium", "sd3.5-large", "sd3-medium"])
def test_sd3_single_files_are_told_apart_by_their_block_structure(keys, variant, label) -> None:
    bundled = dict(keys, **{"text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,)})
    for header in (keys, bundled):  # with and without bundled text encoders
        assert detect_architecture(header) == Architecture("sd3", 16, label, variant)


def test_detects_real_size_shapes_without_tensor_data() -> None:
    assert detect_architecture(_sd1_like_keys(9)) == Architecture("sd1", 9, "SD1.x inpainting")
    sdxl_keys = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
    }
    assert detect_architecture(sdxl_keys) == Architecture("sdxl", 9, "SDXL inpainting")
    # The refiner (sd_xl_refiner_1.0.safetensors): OpenCLIP bigG alone, as embedder 0.
    refiner_keys = {
        "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
        "conditioner.embedders.0.model.ln_final.weight": (1280,),
        "conditioner.embedders.0.model.text_projection": (1280, 1280),
    }
    assert detect_architecture(refiner_keys) == Architecture("sdxl_refiner", 4, "SDXL Refiner")


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (
            {"text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,),
             "text_encoders.t5xxl.transformer.shared.weight": (32128, 4096)},
            "Stable Diffusion 3 / 3.5 text encoders without the MMDiT transformer",
        ),
        (
            {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)},
            "SD3.5 but has no transformer input projection",
        ),
        (
            {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536),
             "model.diffusion_model.x_embedder.proj.weight": (1536, 4, 2, 2)},
            "transformer takes 4 input channels",
        ),
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)}, "Flux"),
        ({"edm_mean": (1, 4, 1, 1), **_sd1_like_keys()}, "Playground"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
        ({"emb_params": (2, 768)}, "textual inversion"),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, "standalone VAE"),
        ({"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "diffusers"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "without a text encoder"),
        (_sd1_like_keys(8), "InstructPix2Pix"),
        ({}, "no tensors"),
    ],
)
def test_unsupported_checkpoints_are_named(keys: dict[str, tuple[int, ...]], named: str) -> None:
    with pytest.raises(UnsupportedCheckpointError, match=named):
        detect_architecture(keys)


def test_a_file_no_family_recognises_is_refused_with_the_names_looked_for_and_those_it_holds() -> None:
    with pytest.raises(UnsupportedCheckpointError) as refused:
        detect_architecture({"foo.bar.weight": (2, 2), "model.something.else": (3,)})
    message = str(refused.value)
    assert "not a Stable Diffusion model" in message
    for looked_for in ("SD1.x: cond_stage_model.transformer.*", "SD2.x: cond_stage_model.model.*",
                       "SDXL: conditioner.embedders.0.transformer.* + conditioner.embedders.1.model.*",
                       "SD3.5: model.diffusion_model.joint_blocks.*", "Flux.1: double_blocks.*"):
        assert looked_for in message, message
    assert "the file holds foo.bar.weight, model.something.else" in message
