"""kohya-layout export of SD3.5/Flux LoRAs (the Train tab's "LoRA file layout: kohya"): trained layers on diffusers'
modules are written under sd-scripts' names of the original modules (`lora_unet_joint_blocks_0_x_block_attn_qkv`,
`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`, `lora_te1_`/`lora_te3_`), fused
layers joined; the project's reader and, for Flux, diffusers' own kohya converter read back exactly the trained
updates. Tiny models of the exact architectures."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from safetensors import safe_open
from torch import nn

from tests.support.flux_files import DEV, tiny_flux_modules
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules
from webui.models.families import family_named
from webui.models.lora import read_lora
from webui.models.lora_formats import patch_delta
from webui.training.config import ATTENTION_TARGETS, FEED_FORWARD_TARGETS
from webui.training.export import LoraLayerWeights, lora_metadata, save_trained_lora

RANK = 2


def trained_layers(modules: Mapping[str, nn.Module], family: str, seed: int,
                   targets: tuple[str, ...] = ATTENTION_TARGETS) -> dict[str, LoraLayerWeights]:
    """LoRA factors on the layers training adapts (the family's own target rule) and on two Linear layers of every
    text encoder, with differing alphas."""
    generator = torch.Generator().manual_seed(seed)
    model_family = family_named(family)
    paths = {"transformer": model_family.lora_training_targets(modules["transformer"], targets)}
    for name in model_family.text_encoders:
        linear = [path for path, child in modules[name].named_modules() if isinstance(child, nn.Linear)]
        paths[name] = [path for path in linear if path.endswith(("q_proj", "SelfAttention.q", "fc2"))][:2]
    layers = {}
    for component, component_paths in paths.items():
        for index, path in enumerate(component_paths):
            weight = modules[component].get_submodule(path).weight
            layers[f"{component}.{path}"] = LoraLayerWeights(
                down=torch.randn(RANK, weight.shape[1], generator=generator),
                up=torch.randn(weight.shape[0], RANK, generator=generator), alpha=float(index % 3 + 1))
    return layers


def save(tmp_path, modules, family: str, layers, name: str = "trained"):
    metadata = lora_metadata(name=name, trigger_words=["sks"], base_model_name="tiny", base_model_hash="",
                             family=family, resolution=64, steps=1, epochs=1, rank=RANK, alpha=1.0,
                             tag_frequency={}, layout="kohya")
    return save_trained_lora(tmp_path / f"{name}.safetensors", layers, metadata, family,
                             denoiser_config=dict(modules["transformer"].config), layout="kohya")


def assert_reader_gets_the_trained_updates(path, modules, family: str, layers) -> None:
    lora = read_lora(path, modules, family)
    assert lora.unmatched_keys == [] and lora.notes == []
    patches = {patch.target: patch for patch in lora.patches}
    for key, weights in layers.items():
        component, module_path = key.split(".", 1)
        weight = modules[component].get_submodule(module_path).weight
        assert_close_fp16(patch_delta(patches.pop(key), weight.shape), weights.delta(), key)
    for target, patch in patches.items():  # the untrained modules of a fused layer: a zero update
        component, module_path = target.split(".", 1)
        shape = modules[component].get_submodule(module_path).weight.shape
        assert torch.count_nonzero(patch_delta(patch, shape)) == 0, target


def assert_close_fp16(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal up to the fp16 rounding of the stored factors (a per-mille of the update's size)."""
    error = float((actual - expected).abs().max())
    assert error <= 1e-3 * float(expected.abs().max()), f"{name}: off by {error}"


def keys_of(path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())


def test_an_sd35_lora_exports_under_sd_scripts_mmdit_names_and_reads_back(tmp_path):
    modules = tiny_sd3_modules(MEDIUM)
    layers = trained_layers(modules, "sd3", seed=1, targets=ATTENTION_TARGETS + FEED_FORWARD_TARGETS)
    path = save(tmp_path, modules, "sd3", layers)
    keys = keys_of(path)
    for name in ("lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_context_block_attn_qkv",
                 "lora_unet_joint_blocks_0_x_block_attn2_qkv", "lora_unet_joint_blocks_1_x_block_mlp_fc2",
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                 "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", "lora_te3_encoder_block_0_layer_0_SelfAttention_q"):
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys, name
    assert not any("transformer_blocks" in key for key in keys)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert_reader_gets_the_trained_updates(path, modules, "sd3", layers)


def test_a_flux_lora_exports_under_sd_scripts_bfl_names_and_reads_back(tmp_path):
    modules = tiny_flux_modules(DEV)
    layers = trained_layers(modules, "flux", seed=2)
    path = save(tmp_path, modules, "flux", layers)
    keys = keys_of(path)
    for name in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_1_txt_attn_proj",
                 "lora_unet_single_blocks_1_linear1", "lora_unet_single_blocks_0_linear2",
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te3_encoder_block_0_layer_0_SelfAttention_q"):
        assert f"{name}.lora_down.weight" in keys, name
    # linear1 holds q, k, v and the MLP input; only q, k, v were trained: the MLP rows of its update are zero.
    with safe_open(str(path), "pt") as handle:
        up = handle.get_tensor("lora_unet_single_blocks_1_linear1.lora_up.weight").float()
        width = modules["transformer"].single_transformer_blocks[1].attn.to_q.weight.shape[0]
        assert up.shape[0] == 7 * width and torch.count_nonzero(up[3 * width:]) == 0
        assert handle.metadata()["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert_reader_gets_the_trained_updates(path, modules, "flux", layers)


def test_diffusers_kohya_flux_converter_reads_the_same_updates(tmp_path):
    """diffusers' `FluxPipeline.lora_state_dict` converts sd-scripts files; it splits `linear1` at Flux.1's
    published widths, so this tiny model's file holds the double blocks and CLIP-L (what it can split here)."""
    import diffusers

    modules = tiny_flux_modules(DEV)
    layers = {key: value for key, value in trained_layers(modules, "flux", seed=3).items()
              if key.startswith(("transformer.transformer_blocks.", "text_encoder."))}
    path = save(tmp_path, modules, "flux", layers, name="double_blocks")
    converted = diffusers.FluxPipeline.lora_state_dict(str(path))
    converted = converted[0] if isinstance(converted, tuple) else converted
    transformer_keys = {key.removesuffix(".lora_A.weight") for key in converted
                        if key.startswith("transformer.") and key.endswith(".lora_A.weight")}
    assert transformer_keys == {key for key in layers if key.startswith("transformer.")}
    for key in transformer_keys:
        delta = converted[f"{key}.lora_B.weight"].float() @ converted[f"{key}.lora_A.weight"].float()
        assert_close_fp16(delta, layers[key].delta(), key)
    # CLIP-L in diffusers' older text-encoder names (`...self_attn.to_q_lora.down.weight`), alpha baked in.
    renames = ((".lora_linear_layer", ""), ("self_attn.to_q_lora", "self_attn.q_proj"))
    text = {}
    for key in converted:
        if key.startswith("text_encoder.") and key.endswith(".down.weight"):
            module = key.removesuffix(".down.weight")
            for old, new in renames:
                module = module.replace(old, new)
            text[module.replace("text_encoder.text_model.", "text_encoder.", 1)] = key
    assert set(text) == {key for key in layers if key.startswith("text_encoder.")}
    for layer, key in text.items():
        delta = converted[key.replace(".down.", ".up.")].float() @ converted[key].float()
        assert_close_fp16(delta, layers[layer].delta(), key)


@pytest.mark.parametrize("layout, prefix", [("diffusers", "transformer.transformer_blocks.0.attn.to_q.lora_A"),
                                            ("auto", "transformer.transformer_blocks.0.attn.to_q.lora_A")])
def test_the_diffusers_layout_stays_the_default_for_flux(tmp_path, layout, prefix):
    modules = tiny_flux_modules(DEV)
    layers = trained_layers(modules, "flux", seed=4)
    path = save_trained_lora(tmp_path / "x.safetensors", layers, {}, "flux",
                             denoiser_config=dict(modules["transformer"].config), layout=layout)
    assert any(key.startswith(prefix) for key in keys_of(path))
