"""LoRA files of every common format, applied to tiny SD1 / SDXL-like models.

Each test writes a LoRA file from known tensors, applies it, and compares the weights with the
update written out independently here (``weight * alpha / rank * up @ down`` and the LyCORIS
equivalents). diffusers' own ``load_lora_weights`` + ``fuse_lora`` is the oracle for kohya files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.lora import LoraApplier, LoraFile, LoraFileError, read_lora

HIDDEN = 32
XL_PROJECTION = 32
XL_TIME_DIM = 8


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------


def _clip_config(projection_dim: int = HIDDEN) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=100, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=projection_dim,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


def _sd1_unet() -> UNet2DConditionModel:
    """SD1 layout: conv 1x1 proj_in, cross-attention at the top level."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=8,
    )


def _sdxl_unet() -> UNet2DConditionModel:
    """SDXL layout: two layers per block, no top-level attention, text_time added embedding."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=2 * HIDDEN, attention_head_dim=8,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=XL_TIME_DIM,
        projection_class_embeddings_input_dim=XL_PROJECTION + 6 * XL_TIME_DIM, norm_num_groups=8,
    )


@pytest.fixture
def sd1() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"unet": _sd1_unet(), "text_encoder": CLIPTextModel(_clip_config())}


@pytest.fixture
def sdxl() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"unet": _sdxl_unet(), "text_encoder": CLIPTextModel(_clip_config()),
            "text_encoder_2": CLIPTextModelWithProjection(_clip_config(XL_PROJECTION))}


def te_path(module: nn.Module, path: str) -> str:
    """Where a CLIP layer sits in the installed transformers (with or without "text_model.")."""
    return f"text_model.{path}" if hasattr(module, "text_model") else path


def weight_of(modules: Mapping[str, nn.Module], target: str) -> Tensor:
    component, path = target.split(".", 1)
    return modules[component].get_submodule(path).weight


def snapshot(modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    return {f"{name}.{key}": value.detach().clone()
            for name, module in modules.items() for key, value in module.state_dict().items()}


def save(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({key: value.clone().contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


class Factors:
    """Seeded random factors shaped for a given weight."""

    def __init__(self, seed: int = 1):
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator)

    def lora(self, weight_shape: torch.Size, rank: int) -> tuple[Tensor, Tensor]:
        """(down, up): linear (r, in) / (out, r); conv (r, in, k, k) / (out, r, 1, 1)."""
        if len(weight_shape) == 2:
            return self.randn(rank, weight_shape[1]), self.randn(weight_shape[0], rank)
        return self.randn(rank, *weight_shape[1:]), self.randn(weight_shape[0], rank, 1, 1)


def assert_merged(modules, original: dict[str, Tensor], target: str, expected_delta: Tensor) -> None:
    component, path = target.split(".", 1)
    key = f"{component}.{path}.weight"
    expected = original[key] + expected_delta.reshape(original[key].shape)
    assert torch.allclose(weight_of(modules, target), expected, rtol=1e-5, atol=1e-5), target
    assert not torch.allclose(original[key], expected), f"{target}: the update is too small to test"


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_kohya_sd1_lora_and_locon_merge_the_expected_delta(sd1, tmp_path):
    f = Factors()
    unet, te = sd1["unet"], sd1["text_encoder"]
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    k = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    proj_in = "down_blocks.0.attentions.0.proj_in"  # a 1x1 convolution in SD1
    conv = "down_blocks.1.resnets.0.conv1"  # 3x3, LoCon
    tucker = "up_blocks.0.resnets.1.conv2"  # 3x3, LoCon with a Tucker core
    q_te = "encoder.layers.1.self_attn.q_proj"
    tensors, expected = {}, {}
    for path, rank, alpha in ((q, 4, 2.0), (k, 2, None), (proj_in, 3, 1.0), (conv, 4, 8.0)):
        down, up = f.lora(unet.get_submodule(path).weight.shape, rank)
        name = "lora_unet_" + path.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
        scale = (alpha if alpha is not None else rank) / rank
        expected[f"unet.{path}"] = 1.3 * scale * (up.flatten(1) @ down.flatten(1))
    out_ch, in_ch = unet.get_submodule(tucker).weight.shape[:2]
    down, mid, up = f.randn(4, in_ch, 1, 1), f.randn(4, 4, 3, 3), f.randn(out_ch, 4, 1, 1)
    name = "lora_unet_" + tucker.replace(".", "_")
    tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid,
                f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
    tucker_delta = torch.zeros(out_ch, in_ch, 3, 3)
    for o in range(out_ch):
        for i in range(in_ch):
            tucker_delta[o, i] = torch.einsum("a,abhw,b->hw", up[o, :, 0, 0], mid, down[:, i, 0, 0])
    expected[f"unet.{tucker}"] = 1.3 * 0.5 * tucker_delta
    down, up = f.lora(te.get_submodule(te_path(te, q_te)).weight.shape, 4)
    tensors |= {"lora_te_text_model_" + q_te.replace(".", "_") + ".lora_down.weight": down,
                "lora_te_text_model_" + q_te.replace(".", "_") + ".lora_up.weight": up,
                "lora_te_text_model_" + q_te.replace(".", "_") + ".alpha": torch.tensor(4.0)}
    expected[f"text_encoder.{te_path(te, q_te)}"] = 0.7 * (up @ down)

    lora = read_lora(save(tmp_path / "kohya.safetensors", tensors), sd1, "sd1")
    assert lora.unmatched_keys == []
    assert {patch.target: patch.kind for patch in lora.patches} == {
        f"unet.{q}": "lora", f"unet.{k}": "lora", f"unet.{proj_in}": "lora", f"unet.{conv}": "locon",
        f"unet.{tucker}": "locon", f"text_encoder.{te_path(te, q_te)}": "lora"}
    original = snapshot(sd1)
    LoraApplier(sd1, "sd1").set_active([(lora, 0.7, 1.3)])
    for target, delta in expected.items():
        assert_merged(sd1, original, target, delta)
    untouched = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v.weight"
    assert torch.equal(snapshot(sd1)[untouched], original[untouched])


def test_diffusers_peft_and_legacy_diffusers_formats(sd1, tmp_path):
    f = Factors(2)
    unet, te = sd1["unet"], sd1["text_encoder"]
    v = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    ff = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"
    out = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    conv = "down_blocks.0.resnets.0.conv2"
    fc1 = "encoder.layers.0.mlp.fc1"
    k_te = "encoder.layers.1.self_attn.k_proj"
    out_te = "encoder.layers.0.self_attn.out_proj"
    tensors, expected = {}, {}
    # PEFT (lora_A / lora_B); diffusers' adapter metadata gives the UNet alpha 8 (rank 4: scale 2),
    # the text encoder none (alpha = rank: scale 1).
    for path in (v, conv):
        down, up = f.lora(unet.get_submodule(path).weight.shape, 4)
        tensors |= {f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up}
        expected[f"unet.{path}"] = 0.5 * 2.0 * (up.flatten(1) @ down.flatten(1))
    # Files from older transformers name CLIP layers with the "text_model." level.
    down, up = f.lora(te.get_submodule(te_path(te, fc1)).weight.shape, 4)
    tensors |= {f"text_encoder.text_model.{fc1}.lora_A.weight": down,
                f"text_encoder.text_model.{fc1}.lora_B.weight": up}
    expected[f"text_encoder.{te_path(te, fc1)}"] = 0.25 * (up @ down)
    # Older diffusers: ".lora.down/up", processor names, text encoder "lora_linear_layer".
    down, up = f.lora(unet.get_submodule(ff).weight.shape, 4)
    tensors |= {f"unet.{ff}.lora.down.weight": down, f"unet.{ff}.lora.up.weight": up}
    expected[f"unet.{ff}"] = 0.5 * 2.0 * (up @ down)
    down, up = f.lora(unet.get_submodule(out).weight.shape, 4)
    processor = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
    tensors |= {f"{processor}.down.weight": down, f"{processor}.up.weight": up}
    expected[f"unet.{out}"] = 0.5 * 2.0 * (up @ down)
    down, up = f.lora(te.get_submodule(te_path(te, k_te)).weight.shape, 2)
    tensors |= {f"text_encoder.{k_te}.lora_linear_layer.down.weight": down,
                f"text_encoder.{k_te}.lora_linear_layer.up.weight": up}
    expected[f"text_encoder.{te_path(te, k_te)}"] = 0.25 * (up @ down)
    down, up = f.lora(te.get_submodule(te_path(te, out_te)).weight.shape, 2)
    tensors |= {"text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight": down,
                "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.up.weight": up}
    expected[f"text_encoder.{te_path(te, out_te)}"] = 0.25 * (up @ down)
    metadata = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4})}

    lora = read_lora(save(tmp_path / "pytorch_lora_weights.safetensors", tensors, metadata), sd1, "sd1")
    assert lora.unmatched_keys == []
    assert {patch.target for patch in lora.patches} == set(expected)
    original = snapshot(sd1)
    LoraApplier(sd1, "sd1").set_active([(lora, 0.25, 0.5)])
    for target, delta in expected.items():
        assert_merged(sd1, original, target, delta)


def test_lycoris_loha_lokr_and_full_diff(sd1, tmp_path):
    f = Factors(3)
    unet = sd1["unet"]
    loha = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"  # 32 x 32
    loha_conv = "down_blocks.1.resnets.0.conv2"  # 64 x 64 x 3 x 3, Tucker form
    lokr = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"  # 256 x 32
    lokr_conv = "up_blocks.0.resnets.0.conv1"  # 64 x 128 x 3 x 3
    lokr_full = "down_blocks.0.attentions.0.proj_out"  # 32 x 32 x 1 x 1
    diff = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"  # 32 x 32
    bias_diff = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"  # has a bias
    names = {path: "lora_unet_" + path.replace(".", "_") for path in
             (loha, loha_conv, lokr, lokr_conv, lokr_full, diff, bias_diff)}
    t, expected = {}, {}

    w1a, w1b, w2a, w2b = f.randn(32, 4), f.randn(4, 32), f.randn(32, 4), f.randn(4, 32)
    t |= {f"{names[loha]}.hada_w1_a": w1a, f"{names[loha]}.hada_w1_b": w1b,
          f"{names[loha]}.hada_w2_a": w2a, f"{names[loha]}.hada_w2_b": w2b,
          f"{names[loha]}.alpha": torch.tensor(2.0)}
    expected[loha] = 0.5 * ((w1a @ w1b) * (w2a @ w2b))

    parts = {f"hada_{name}": f.randn(*shape) for name, shape in (
        ("t1", (2, 2, 3, 3)), ("w1_a", (2, 64)), ("w1_b", (2, 64)),
        ("t2", (2, 2, 3, 3)), ("w2_a", (2, 64)), ("w2_b", (2, 64)))}
    t |= {f"{names[loha_conv]}.{role}": value for role, value in parts.items()}

    def cp(core, out_factor, in_factor):  # W[p, r] = sum_ij core[i, j] out[i, p] in[j, r]
        return (out_factor.T @ core.permute(2, 3, 0, 1) @ in_factor).permute(2, 3, 0, 1)

    expected[loha_conv] = (cp(parts["hada_t1"], parts["hada_w1_a"], parts["hada_w1_b"])
                           * cp(parts["hada_t2"], parts["hada_w2_a"], parts["hada_w2_b"]))  # no alpha: 1

    w1, w2a, w2b = f.randn(8, 2), f.randn(32, 4), f.randn(4, 16)
    t |= {f"{names[lokr]}.lokr_w1": w1, f"{names[lokr]}.lokr_w2_a": w2a, f"{names[lokr]}.lokr_w2_b": w2b,
          f"{names[lokr]}.alpha": torch.tensor(1.0)}
    expected[lokr] = 0.25 * torch.kron(w1, w2a @ w2b)

    w1a, w1b, w2 = f.randn(4, 2), f.randn(2, 8), f.randn(16, 16, 3, 3)
    t |= {f"{names[lokr_conv]}.lokr_w1_a": w1a, f"{names[lokr_conv]}.lokr_w1_b": w1b,
          f"{names[lokr_conv]}.lokr_w2": w2, f"{names[lokr_conv]}.alpha": torch.tensor(4.0)}
    w1_full = w1a @ w1b
    kron = torch.zeros(64, 128, 3, 3)
    for i in range(4):
        for j in range(8):
            kron[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16] = w1_full[i, j] * w2
    expected[lokr_conv] = 2.0 * kron

    w1, w2 = f.randn(4, 4), f.randn(8, 8)
    t |= {f"{names[lokr_full]}.lokr_w1": w1, f"{names[lokr_full]}.lokr_w2": w2}
    expected[lokr_full] = torch.kron(w1, w2)

    t[f"{names[diff]}.diff"] = expected[diff] = f.randn(32, 32)
    t[f"{names[bias_diff]}.diff"] = expected[bias_diff] = f.randn(32, 32)
    t[f"{names[bias_diff]}.diff_b"] = bias_delta = f.randn(32)

    lora = read_lora(save(tmp_path / "lycoris.safetensors", t), sd1, "sd1")
    assert lora.unmatched_keys == []
    kinds = {patch.target.removeprefix("unet."): patch.kind for patch in lora.patches}
    assert kinds == {loha: "loha", loha_conv: "loha", lokr: "lokr", lokr_conv: "lokr", lokr_full: "lokr",
                     diff: "diff", bias_diff: "diff"}
    original = snapshot(sd1)
    LoraApplier(sd1, "sd1").set_active([(lora, 1.0, 0.8)])
    for path, delta in expected.items():
        assert_merged(sd1, original, f"unet.{path}", 0.8 * delta)
    bias = unet.get_submodule(bias_diff).bias
    assert torch.allclose(bias, original[f"unet.{bias_diff}.bias"] + 0.8 * bias_delta, atol=1e-6)


SDXL_LDM_NAMES = {
    "input_blocks_0_0": "conv_in",
    "input_blocks_2_0_in_layers_2": "down_blocks.0.resnets.1.conv1",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_4_1_transformer_blocks_1_attn2_to_k": "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
    "input_blocks_5_1_proj_in": "down_blocks.1.attentions.1.proj_in",
    "middle_block_1_transformer_blocks_0_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "middle_block_2_out_layers_3": "mid_block.resnets.1.conv2",
    "output_blocks_2_1_transformer_blocks_0_attn1_to_out_0":
        "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_4_0_emb_layers_1": "up_blocks.1.resnets.1.time_emb_proj",
    "time_embed_2": "time_embedding.linear_2",
    "label_emb_0_0": "add_embedding.linear_1",
    "out_2": "conv_out",
    # kohya also writes SDXL UNet keys with diffusers names:
    "down_blocks_1_attentions_1_transformer_blocks_1_attn1_to_v":
        "down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_v",
}


def test_sdxl_kohya_ldm_names_and_both_text_encoders(sdxl, tmp_path):
    f = Factors(4)
    tensors, expected = {}, {}
    te1 = sdxl["text_encoder"]
    targets = {f"lora_unet_{name}": f"unet.{path}" for name, path in SDXL_LDM_NAMES.items()}
    targets["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] = (
        f"text_encoder.{te_path(te1, 'encoder.layers.0.self_attn.q_proj')}")
    targets["lora_te2_text_model_encoder_layers_1_mlp_fc2"] = "text_encoder_2.text_model.encoder.layers.1.mlp.fc2"
    targets["lora_te2_text_projection"] = "text_encoder_2.text_projection"
    for name, target in targets.items():
        down, up = f.lora(weight_of(sdxl, target).shape, 2)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)}
        weight = 0.9 if target.startswith("unet.") else 0.6
        expected[target] = weight * 0.5 * (up.flatten(1) @ down.flatten(1))

    metadata = {"ss_base_model_version": "sdxl_base_v1-0"}
    lora = read_lora(save(tmp_path / "xl.safetensors", tensors, metadata), sdxl, "sdxl")
    assert lora.unmatched_keys == []
    assert {patch.target for patch in lora.patches} == set(expected)
    original = snapshot(sdxl)
    LoraApplier(sdxl, "sdxl").set_active([(lora, 0.6, 0.9)])
    for target, delta in expected.items():
        assert_merged(sdxl, original, target, delta)


# --------------------------------------------------------------------------------------------
# Problems are reported, not hidden
# --------------------------------------------------------------------------------------------


def test_unmatched_keys_are_reported_by_name(sd1, tmp_path):
    f = Factors(5)
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    matching = [f"{block}.attn1.to_q", f"{block}.attn1.to_v", f"{block}.attn2.to_q"]
    down, up = f.lora(weight_of(sd1, f"unet.{matching[0]}").shape, 2)
    tensors = {}
    for path in matching:
        tensors |= {f"lora_unet_{path.replace('.', '_')}.lora_down.weight": down,
                    f"lora_unet_{path.replace('.', '_')}.lora_up.weight": up}
    name = "lora_unet_" + matching[0].replace(".", "_")
    missing = "lora_unet_down_blocks_7_attentions_0_proj_in"
    lone = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    tensors |= {f"{name}_extra.lora_down.weight": down, f"{name}_extra.lora_up.weight": up,  # no such module
               f"{missing}.lora_down.weight": down, f"{missing}.lora_up.weight": up,
               f"{lone}.dora_scale": torch.ones(32, 1),  # a DoRA magnitude without its factors
               "ss_training_leftover": torch.zeros(3)}
    lora = read_lora(save(tmp_path / "partial.safetensors", tensors), sd1, "sd1")
    assert [patch.target for patch in lora.patches] == [f"unet.{path}" for path in matching]
    assert sorted(lora.unmatched_keys) == sorted([
        f"{name}_extra.lora_down.weight", f"{name}_extra.lora_up.weight",
        f"{missing}.lora_down.weight", f"{missing}.lora_up.weight", f"{lone}.dora_scale", "ss_training_leftover"])
    assert any("DoRA magnitude without the factors" in note for note in lora.notes)


def _sdxl_style_file(path: Path, sdxl_modules, with_te2: bool, metadata=None) -> Path:
    f = Factors(6)
    tensors = {}
    names = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k":
             "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"}
    if with_te2:
        names["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"] = (
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj")
    for name, target in names.items():
        down, up = f.lora(weight_of(sdxl_modules, target).shape, 2)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    return save(path, tensors, metadata)


def test_sdxl_lora_on_sd1_model_is_refused_with_the_reason(sd1, sdxl, tmp_path):
    with pytest.raises(LoraFileError, match="SDXL.*second text encoder"):
        read_lora(_sdxl_style_file(tmp_path / "te2.safetensors", sdxl, with_te2=True), sd1, "sd1")
    # UNet only, SDXL block layout: those blocks do not exist in the SD1 model.
    with pytest.raises(LoraFileError, match="do not exist in the loaded SD1.x model.*another architecture"):
        read_lora(_sdxl_style_file(tmp_path / "unet.safetensors", sdxl, with_te2=False), sd1, "sd1")
    # A layer name SD1 has too, but with SDXL's wider cross-attention input (2 text encoders).
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    wide = save(tmp_path / "wide.safetensors", {f"{name}.lora_down.weight": torch.randn(2, 2 * HIDDEN),
                                                 f"{name}.lora_up.weight": torch.randn(HIDDEN, 2)})
    with pytest.raises(LoraFileError, match="different architecture") as raised:
        read_lora(wide, sd1, "sd1")
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in str(raised.value)
    assert "wide.safetensors" in str(raised.value)
    declared = _sdxl_style_file(tmp_path / "meta.safetensors", sdxl, with_te2=False,
                                metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    with pytest.raises(LoraFileError, match="made for SDXL"):
        read_lora(declared, sd1, "sd1")


def test_unreadable_and_foreign_files_raise_lora_file_error(sd1, tmp_path):
    good = _sdxl_style_file(tmp_path / "good.safetensors", {"unet": _sdxl_unet()}, with_te2=False)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(LoraFileError, match="truncated"):
        read_lora(truncated, sd1, "sd1")
    not_safetensors = tmp_path / "notes.safetensors"
    not_safetensors.write_text("this is a text file, not weights")
    with pytest.raises(LoraFileError, match="notes.safetensors"):
        read_lora(not_safetensors, sd1, "sd1")
    checkpoint = save(tmp_path / "model.safetensors",
                      {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)})
    with pytest.raises(LoraFileError, match="checkpoint, not a LoRA"):
        read_lora(checkpoint, sd1, "sd1")
    flux = save(tmp_path / "flux.safetensors",
                {"lora_transformer_single_blocks_0_attn_to_q.lora_down.weight": torch.zeros(2, 32),
                 "lora_transformer_single_blocks_0_attn_to_q.lora_up.weight": torch.zeros(32, 2)})
    with pytest.raises(LoraFileError, match="transformer"):
        read_lora(flux, sd1, "sd1")
    with pytest.raises(LoraFileError, match="does not exist"):
        read_lora(tmp_path / "missing.safetensors", sd1, "sd1")


# --------------------------------------------------------------------------------------------
# Applying: exact, reversible, cached
# --------------------------------------------------------------------------------------------


def _mixed_sd1_lora(path: Path, modules, seed: int) -> Path:
    """LoRA, LoCon and LoHa layers on UNet and text encoder."""
    f = Factors(seed)
    te = modules["text_encoder"]
    tensors = {}
    for target, rank in (("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4),
                         ("unet.down_blocks.1.resnets.0.conv1", 2),
                         ("unet.up_blocks.1.attentions.0.proj_out", 2),
                         (f"text_encoder.{te_path(te, 'encoder.layers.0.mlp.fc2')}", 3)):
        component, module_path = target.split(".", 1)
        prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
        name = prefix + module_path.removeprefix("text_model.").replace(".", "_")
        down, up = f.lora(weight_of(modules, target).shape, rank)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(float(rank) / 2)}
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    tensors |= {f"{name}.hada_w1_a": f.randn(32, 2), f"{name}.hada_w1_b": f.randn(2, 32),
                f"{name}.hada_w2_a": f.randn(32, 2), f"{name}.hada_w2_b": f.randn(2, 32)}
    return save(path, tensors)


def test_hundred_apply_restore_cycles_leave_weights_bitwise_original(sd1, tmp_path):
    sd1["unet"].to(torch.float16)  # rounding on every merge: any drift would show
    first = read_lora(_mixed_sd1_lora(tmp_path / "a.safetensors", sd1, 7), sd1, "sd1")
    second = read_lora(_mixed_sd1_lora(tmp_path / "b.safetensors", sd1, 8), sd1, "sd1")
    original = snapshot(sd1)
    applier = LoraApplier(sd1, "sd1")
    generator = torch.Generator().manual_seed(0)
    for cycle in range(100):
        weights = (torch.rand(4, generator=generator) * 6 - 3).tolist()  # in [-3, 3)
        chosen = [(first, weights[0], weights[1]), (second, weights[2], weights[3])][: 1 + cycle % 2]
        applier.set_active(chosen)
        if cycle % 3 == 0:
            applier.restore()
    applier.set_active([(first, -1.5, 2.5), (second, 1.0, -0.75)])
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert not torch.equal(weight_of(sd1, q), original[f"{q}.weight"])
    applier.restore()
    after = snapshot(sd1)
    assert all(torch.equal(after[key], original[key]) for key in original)


def test_reweighting_recomputes_from_the_original_weights(sd1, tmp_path):
    sd1["unet"].to(torch.float16)
    lora = read_lora(_mixed_sd1_lora(tmp_path / "a.safetensors", sd1, 9), sd1, "sd1")
    other = read_lora(_mixed_sd1_lora(tmp_path / "b.safetensors", sd1, 10), sd1, "sd1")
    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    original = weight_of(sd1, target).detach().clone()

    def delta_of(file: LoraFile) -> Tensor:
        patch = next(patch for patch in file.patches if patch.target == target)
        down, up = patch.tensors["down"].float(), patch.tensors["up"].float()
        return patch.alpha / patch.rank * (up @ down)

    applier = LoraApplier(sd1, "sd1")
    for weight in (1.0, -0.5, 2.5, -0.5):
        applier.set_active([(lora, 1.0, weight)])
        expected = (original.float() + weight * delta_of(lora)).half()
        assert torch.allclose(weight_of(sd1, target).float(), expected.float(), rtol=0, atol=2e-3)
    at_minus_half = weight_of(sd1, target).detach().clone()
    applier.set_active([(lora, 1.0, 2.5)])
    applier.set_active([(lora, 1.0, -0.5)])
    assert torch.equal(weight_of(sd1, target), at_minus_half)  # no accumulation across re-weights
    # Two LoRAs on one layer add up.
    applier.set_active([(lora, 1.0, 0.5), (other, 1.0, 1.5)])
    expected = original.float() + 0.5 * delta_of(lora) + 1.5 * delta_of(other)
    assert torch.allclose(weight_of(sd1, target).float(), expected, rtol=0, atol=2e-3)
    # Text-encoder weight 0 leaves the text encoder untouched.
    te_target = f"text_encoder.{te_path(sd1['text_encoder'], 'encoder.layers.0.mlp.fc2')}"
    applier.restore()
    te_before = weight_of(sd1, te_target).detach().clone()
    applier.set_active([(lora, 0.0, 1.0)])
    assert torch.equal(weight_of(sd1, te_target), te_before)


def test_unchanged_set_is_a_no_op_and_failures_leave_original_weights(sd1, tmp_path):
    lora = read_lora(_mixed_sd1_lora(tmp_path / "a.safetensors", sd1, 11), sd1, "sd1")
    original = snapshot(sd1)
    applier = LoraApplier(sd1, "sd1")
    applier.set_active([(lora, 1.0, 1.0)])
    target = "unet.down_blocks.1.resnets.0.conv1"
    with torch.no_grad():
        weight_of(sd1, target).add_(1.0)  # a marker that a real re-merge would overwrite
    marked = weight_of(sd1, target).detach().clone()
    applier.set_active([(lora, 1.0, 1.0)])
    assert torch.equal(weight_of(sd1, target), marked)
    applier.restore()
    # Fused QKV would silently ignore a merge into to_q: refused, and nothing stays half-applied.
    sd1["unet"].fuse_qkv_projections()
    with pytest.raises(RuntimeError, match="fused QKV"):
        applier.set_active([(lora, 1.0, 1.0)])
    after = snapshot(sd1)
    assert all(torch.equal(after[key], value) for key, value in original.items())
    assert applier.active == ()


def test_reused_lora_is_not_read_again(sd1, tmp_path):
    path = _mixed_sd1_lora(tmp_path / "a.safetensors", sd1, 12)
    reads = []

    def counting_reader(file_path, modules, family):
        reads.append(file_path)
        return read_lora(file_path, modules, family)

    applier = LoraApplier(sd1, "sd1", reader=counting_reader)
    for weight in (1.0, 0.5, -1.0, 2.0):
        applier.set_active([(applier.read(path), 1.0, weight)])
    assert len(reads) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was replaced
    applier.set_active([(applier.read(path), 1.0, 1.0)])
    assert len(reads) == 2


def test_metadata_helpers_for_the_ui(sd1, tmp_path):
    metadata = {
        "ss_base_model_version": "sd_v1",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_tag_frequency": json.dumps({"10_folk": {"folk dress": 30, "1girl": 12, "smile": 4},
                                        "5_reg": {"1girl": 25, "outdoors": 2}}),
    }
    path = _mixed_sd1_lora(tmp_path / "meta.safetensors", sd1, 13)
    from safetensors.torch import load_file
    save(path, load_file(path), metadata)
    lora = read_lora(path, sd1, "sd1")
    assert lora.name == "meta"
    assert lora.base_model == "sd_v1"
    assert (lora.network_rank, lora.network_alpha) == (16, 8.0)
    assert lora.trigger_words == ["1girl", "folk dress", "smile", "outdoors"]
    save(path, load_file(path), metadata | {"modelspec.trigger_phrase": "folkdress, embroidery"})
    assert read_lora(path, sd1, "sd1").trigger_words == ["folkdress", "embroidery"]


# --------------------------------------------------------------------------------------------
# Oracle: diffusers' own kohya loader
# --------------------------------------------------------------------------------------------


def test_kohya_file_matches_diffusers_load_lora_weights_and_fuse(sd1, tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    f = Factors(14)
    unet = sd1["unet"]
    tensors = {}
    # Per-layer alphas differ (as in real kohya files), except on the attention projections: diffusers
    # 0.42 loses their per-layer alpha (its alpha_pattern names them "...processor.to_q_lora...", which
    # matches no module) and falls back to the file's most common alpha, here 1.0.
    for path, rank, alpha in (("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 1.0),
                              ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v", 2, 1.0),
                              ("down_blocks.0.attentions.0.proj_in", 4, 4.0),
                              ("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj", 8, 3.0),
                              ("down_blocks.1.resnets.0.conv1", 4, 1.0)):
        down, up = f.lora(unet.get_submodule(path).weight.shape, rank)
        name = "lora_unet_" + path.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(alpha)}
    path = save(tmp_path / "kohya.safetensors", tensors)

    reference_unet = _sd1_unet()
    reference_unet.load_state_dict(unet.state_dict())
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(_clip_config()), tokenizer=None, unet=reference_unet,
        scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.load_lora_weights(str(path))
    pipeline.fuse_lora(lora_scale=0.8)
    pipeline.unload_lora_weights()
    reference = reference_unet.state_dict()

    original = {key: value.clone() for key, value in unet.state_dict().items()}
    LoraApplier(sd1, "sd1").set_active([(read_lora(path, sd1, "sd1"), 1.0, 0.8)])
    ours = unet.state_dict()
    assert set(ours) == set(reference)
    changed = [key for key in ours if not torch.equal(ours[key], original[key])]
    assert len(changed) == 5
    for key in ours:
        assert torch.allclose(ours[key], reference[key], rtol=1e-5, atol=1e-6), key
