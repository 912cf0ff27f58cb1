"""LyCORIS updates of fused DiT layers (SD3's MMDiT `qkv`, the swapped final modulation): each installed module
gets exactly its rows of the update, whatever the update's kind; removal is bitwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from tests.support.sd3_files import LARGE, tiny_sd3_modules
from webui.models.lora import LoraApplier, LoraFileError, read_lora


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    return tiny_sd3_modules(LARGE, seed=5)["transformer"]


def randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator)


def test_loha_lokr_and_full_diff_on_fused_and_swapped_layers(transformer, tmp_path):
    g = torch.Generator().manual_seed(2)
    width = transformer.transformer_blocks[0].attn.to_q.weight.shape[0]  # 32
    modulation = transformer.norm_out.linear.weight.shape  # (64, 32)
    loha = {"hada_w1_a": randn(g, 3 * width, 2), "hada_w1_b": randn(g, 2, width),
            "hada_w2_a": randn(g, 3 * width, 2), "hada_w2_b": randn(g, 2, width)}
    lokr = {"lokr_w1": randn(g, 3, 2), "lokr_w2_a": randn(g, width, 2), "lokr_w2_b": randn(g, 2, width // 2)}
    diff = {"diff": randn(g, *modulation), "diff_b": randn(g, modulation[0])}
    tensors = {f"lora_unet_joint_blocks_0_x_block_attn_qkv.{role}": value for role, value in loha.items()}
    tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.alpha"] = torch.tensor(1.0)
    tensors |= {f"diffusion_model.joint_blocks.1.context_block.attn.qkv.{role}": value for role, value in lokr.items()}
    tensors["diffusion_model.joint_blocks.1.context_block.attn.qkv.alpha"] = torch.tensor(4.0)
    tensors |= {f"lora_unet_final_layer_adaLN_modulation_1.{role}": value for role, value in diff.items()}
    path = tmp_path / "lycoris.safetensors"
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))

    modules = {"transformer": transformer}
    original = {key: value.clone() for key, value in transformer.state_dict().items()}
    lora = read_lora(path, modules, "sd3")
    assert lora.unmatched_keys == [] and lora.notes == []
    applier = LoraApplier(modules, "sd3")
    applier.set_active([(lora, 0.0, 0.5)])  # text-encoder weight 0: only the transformer's weight counts

    loha_delta = 0.5 * (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"])  # alpha/rank
    lokr_delta = 2.0 * torch.kron(lokr["lokr_w1"], lokr["lokr_w2_a"] @ lokr["lokr_w2_b"])  # alpha 4 / rank 2
    state = transformer.state_dict()
    for part, (sample, context) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
        rows = slice(part * width, (part + 1) * width)
        key = f"transformer_blocks.0.attn.{sample}.weight"
        torch.testing.assert_close(state[key], original[key] + 0.5 * loha_delta[rows])
        key = f"transformer_blocks.1.attn.{context}.weight"
        torch.testing.assert_close(state[key], original[key] + 0.5 * lokr_delta[rows])
    half = modulation[0] // 2
    torch.testing.assert_close(state["norm_out.linear.weight"], original["norm_out.linear.weight"]
                               + 0.5 * torch.cat([diff["diff"][half:], diff["diff"][:half]]))
    torch.testing.assert_close(state["norm_out.linear.bias"], original["norm_out.linear.bias"]
                               + 0.5 * torch.cat([diff["diff_b"][half:], diff["diff_b"][:half]]))
    applier.restore()
    assert all(torch.equal(value, original[key]) for key, value in transformer.state_dict().items())


def test_a_fused_layer_of_the_wrong_width_is_refused_with_its_shapes(transformer, tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 48),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(144, 2)}, str(path))
    with pytest.raises(LoraFileError, match=r"joint_blocks\.0\.x_block\.attn\.qkv is \(96, 32\) here but 144x48"):
        read_lora(Path(path), {"transformer": transformer}, "sd3")


def test_a_lora_in_the_sd_families_naming_is_refused_on_sd3_with_both_names(transformer, tmp_path):
    path = tmp_path / "sd1_text.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
               f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2)},
              str(path))
    with pytest.raises(LoraFileError, match=r"do not exist in the loaded SD3\.5 model.*SD1\.x"):
        read_lora(Path(path), {"transformer": transformer}, "sd3")
    text_only = tmp_path / "text_only.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2)},
              str(text_only))
    with pytest.raises(LoraFileError, match=r"none of its layers is named as SD3\.5 LoRAs name them"):
        read_lora(Path(text_only), {"transformer": transformer}, "sd3")


def test_an_ai_toolkit_flux_lora_on_an_sd1_model_is_refused_with_both_names(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                num_attention_heads=4, max_position_embeddings=77))
    path = tmp_path / "flux_style.safetensors"
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(192, 2)}, str(path))
    with pytest.raises(LoraFileError, match=r"none of its layers is named as SD1\.x LoRAs.*those of Flux\.1"):
        read_lora(Path(path), {"text_encoder": text_encoder}, "sd1")
