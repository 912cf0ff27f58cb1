"""DoRA LoRAs on a tiny SD1 UNet: PEFT's own merge is the oracle for what the app patches in.

A PEFT `use_dora` adapter with random factors and magnitudes is written by the trainer's exporters (kohya
`dora_scale`, diffusers `lora_magnitude_vector`) and applied by the app's LoRA reader; the patched weights must
equal PEFT's merged weights for a linear layer, a 1x1 and a 3x3 convolution. Early LyCORIS files (magnitude per
input channel) are checked against the formula written out here, and a magnitude of the wrong shape is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from webui.models.lora import LoraApplier, LoraFileError, read_lora
from webui.models.lora_formats import KIND_LORA, LoraPatch, patch_delta, rows_of
from webui.training.export import save_diffusers_lora, save_kohya_lora
from webui.training.key_check import LOADER_COMFYUI, LOADER_DIFFUSERS, LOADER_OWN, check_lora
from webui.training.methods.lora import exported_layers, inject_lora, lora_parameters

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV_1X1 = "down_blocks.0.attentions.0.proj_in"  # SD1's proj_in is a 1x1 convolution
CONV_3X3 = "down_blocks.1.resnets.0.conv1"
LAYERS = (LINEAR, CONV_1X1, CONV_3X3)


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, dict]:
    """(a PEFT DoRA UNet with random factors and magnitudes 1-1.5x the weight norms, its exported layers)."""
    unet = tiny_unet()
    inject_lora(unet, [LINEAR, CONV_1X1], 4, 2.0, [CONV_3X3], 2, 1.0, network_type="dora")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in lora_parameters(unet).items():
            if "lora_magnitude_vector" in name:
                parameter.mul_(1 + 0.5 * torch.rand(parameter.shape, generator=generator))
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return unet, exported_layers("unet", unet)


@pytest.fixture(scope="module")
def peft_merged(trained) -> dict[str, torch.Tensor]:
    """PEFT's merged weight of every adapted layer (its `merge`, on a copy)."""
    unet = copy.deepcopy(trained[0])
    merged = {}
    for path in LAYERS:
        layer = unet.get_submodule(path)
        layer.merge(adapter_names=["default"])
        merged[path] = layer.base_layer.weight.detach().clone()
    return merged


def saved(layout: str, layers: dict, folder: Path) -> Path:
    save = save_kohya_lora if layout == "kohya" else save_diffusers_lora
    return save(folder / f"dora_{layout}.safetensors", layers, {}, "sd1", dtype=torch.float32)


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_patched_weights_equal_pefts_merge_and_removal_restores_them(trained, peft_merged, tmp_path, layout):
    path = saved(layout, trained[1], tmp_path)
    names = load_file(str(path))
    magnitude_key = ".dora_scale" if layout == "kohya" else ".lora_magnitude_vector"
    assert sum(key.endswith(magnitude_key) for key in names) == len(LAYERS)
    unet = tiny_unet()
    original = {path_: unet.get_submodule(path_).weight.detach().clone() for path_ in LAYERS}
    applier = LoraApplier({"unet": unet}, "sd1")
    lora = applier.read(path)
    assert lora.unmatched_keys == [] and lora.notes == []
    applier.set_active([(lora, 1.0, 1.0)])
    for layer, want in peft_merged.items():
        assert (want - original[layer]).abs().max() > 0.05, layer  # the adapter really changes the layer
        torch.testing.assert_close(unet.get_submodule(layer).weight, want, atol=1e-5, rtol=1e-5, msg=layer)
    applier.set_active([(lora, 0.5, 0.5)])  # ComfyUI / Forge: W + 0.5 * (W_dora - W)
    for layer, want in peft_merged.items():
        torch.testing.assert_close(unet.get_submodule(layer).weight, (original[layer] + want) / 2,
                                   atol=1e-5, rtol=1e-5, msg=layer)
    applier.restore()
    assert all(torch.equal(unet.get_submodule(layer).weight, original[layer]) for layer in LAYERS)


def test_a_magnitude_per_input_channel_normalises_columns(tmp_path):
    """Early LyCORIS files (dora_scale of shape (1, in)): each input column of W + dW gets the column's magnitude."""
    unet = tiny_unet()
    weight = unet.get_submodule(LINEAR).weight.detach().clone()
    generator = torch.Generator().manual_seed(3)
    down, up = torch.randn(2, 32, generator=generator), torch.randn(32, 2, generator=generator) * 0.1
    magnitude = torch.rand(1, 32, generator=generator) + 0.5
    name = "lora_unet_" + LINEAR.replace(".", "_")
    file = tmp_path / "columns.safetensors"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0),
               f"{name}.dora_scale": magnitude}, str(file))
    adapted = weight + 0.5 * up @ down  # alpha / rank = 1 / 2
    expected = torch.stack([adapted[:, column] * magnitude[0, column] / adapted[:, column].norm()
                            for column in range(32)], dim=1)
    applier = LoraApplier({"unet": unet}, "sd1")
    applier.set_active([(applier.read(file), 1.0, 1.0)])
    torch.testing.assert_close(unet.get_submodule(LINEAR).weight, expected, atol=1e-5, rtol=1e-5)
    applier.restore()
    assert torch.equal(unet.get_submodule(LINEAR).weight, weight)


def test_a_wrong_shaped_magnitude_is_refused_with_the_shapes(trained, tmp_path):
    path = saved("kohya", trained[1], tmp_path)
    tensors = load_file(str(path))
    name = "lora_unet_" + CONV_3X3.replace(".", "_")
    tensors[f"{name}.dora_scale"] = torch.ones(65, 1, 1, 1)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraFileError, match=r"bad.safetensors.*resnets_0_conv1 is malformed: dora_scale has shape "
                                            r"\(65, 1, 1, 1\); a weight of shape \(64, 32, 3, 3\) takes \(64, 1, 1, 1\)"):
        read_lora(tmp_path / "bad.safetensors", {"unet": tiny_unet()}, "sd1")


def test_a_lycoris_dora_of_the_update_alone_is_skipped_with_a_note(trained, tmp_path):
    """LyCORIS's `wd_for_diff` marker means another decomposition (of dW alone): that layer is not applied as
    DoRA of W + dW but left out, its keys reported."""
    tensors = load_file(str(saved("kohya", trained[1], tmp_path)))
    name = "lora_unet_" + LINEAR.replace(".", "_")
    tensors[f"{name}.wd_for_diff"] = torch.tensor(True)
    save_file(tensors, str(tmp_path / "diff_dora.safetensors"))
    lora = read_lora(tmp_path / "diff_dora.safetensors", {"unet": tiny_unet()}, "sd1")
    assert {patch.target for patch in lora.patches} == {f"unet.{CONV_1X1}", f"unet.{CONV_3X3}"}
    assert sorted(lora.unmatched_keys) == sorted(key for key in tensors if key.startswith(name + "."))
    assert any("wd_for_diff" in note for note in lora.notes)


def test_rows_of_a_fused_dora_layer_renormalise_like_the_whole():
    """A fused original layer's DoRA (SD3's qkv) split by rows gives each part exactly its rows of the whole."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 4, generator=generator)
    tensors = {"down": torch.randn(2, 4, generator=generator), "up": torch.randn(6, 2, generator=generator),
               "dora_scale": torch.rand(6, 1, generator=generator) + 0.5}
    whole = patch_delta(LoraPatch("t.w", KIND_LORA, tensors, 1.0, 2), weight.shape, base=weight) + weight
    for rows in (((0, 2),), ((2, 6),), ((1, 3), (4, 5))):
        kind, part = rows_of(KIND_LORA, tensors, rows, 0.5)
        index = torch.cat([torch.arange(start, stop) for start, stop in rows])
        got = patch_delta(LoraPatch("t.w", kind, part, 1.0, 2), (len(index), 4), base=weight[index]) + weight[index]
        torch.testing.assert_close(got, whole[index])
    with pytest.raises(ValueError, match="per input channel"):
        rows_of(KIND_LORA, {**tensors, "dora_scale": torch.ones(1, 4)}, ((0, 2),), 0.5)


def test_key_check_reports_which_loaders_drop_the_magnitude(trained, tmp_path):
    """kohya layout: the app and ComfyUI read dora_scale; diffusers 0.42 filters it out (said in its note).
    diffusers layout: the app and diffusers read lora_magnitude_vector; ComfyUI does not (also said in its note)."""
    modules = {"unet": tiny_unet()}
    kohya = {loader.loader: loader for loader in check_lora(saved("kohya", trained[1], tmp_path), "sd1",
                                                            modules).loaders}
    assert kohya[LOADER_OWN].complete and kohya[LOADER_COMFYUI].complete
    a1111_ignored = set(kohya["A1111"].ignored)  # (A1111 renumbers only SD's own block layout: not the tiny conv1)
    assert not {f"lora_unet_{layer.replace('.', '_')}.dora_scale" for layer in (LINEAR, CONV_1X1)} & a1111_ignored
    assert sorted(kohya[LOADER_DIFFUSERS].ignored) == sorted(
        f"lora_unet_{layer.replace('.', '_')}.dora_scale" for layer in LAYERS)
    assert "drops kohya DoRA keys" in kohya[LOADER_DIFFUSERS].note
    notes = check_lora(saved("kohya", trained[1], tmp_path), "sd1", modules).notes
    assert any(note.startswith("ComfyUI: DoRA layers are divided by the base weight's norm") for note in notes)
    assert any(note.startswith("A1111: its DoRA code normalises per input channel only") for note in notes)
    peft = {loader.loader: loader for loader in check_lora(saved("diffusers", trained[1], tmp_path), "sd1",
                                                           modules).loaders}
    assert peft[LOADER_OWN].complete and peft[LOADER_DIFFUSERS].complete
    # (ComfyUI also maps SD1 attention layers only in the attention-processor spelling, so it misses to_q's factors.)
    assert {f"unet.{layer}.lora_magnitude_vector" for layer in LAYERS} <= set(peft[LOADER_COMFYUI].ignored)
    assert "lora_magnitude_vector" in peft[LOADER_COMFYUI].note


def test_an_sd35_dora_in_diffusers_keys_equals_pefts_merge(tmp_path):
    """SD3.5 DoRA LoRAs are saved with diffusers' keys (`transformer.<path>.lora_magnitude_vector`) and applied
    by the app as PEFT merges them."""
    from tests.support.sd3_files import tiny_sd3_modules
    from webui.models.families import family_named
    from webui.training.config import ATTENTION_TARGETS

    modules = tiny_sd3_modules()
    peft_transformer = copy.deepcopy(modules["transformer"])
    targets = family_named("sd3").lora_training_targets(peft_transformer, ATTENTION_TARGETS)[:4]
    inject_lora(peft_transformer, targets, 2, 1.0, network_type="dora")
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in lora_parameters(peft_transformer).items():
            scale = 1 + 0.5 * torch.rand(parameter.shape, generator=generator)
            parameter.copy_(parameter * scale if "magnitude" in name
                            else torch.randn(parameter.shape, generator=generator) * 0.2)
    path = save_diffusers_lora(tmp_path / "sd3_dora.safetensors", exported_layers("transformer", peft_transformer),
                               {}, "sd3", dtype=torch.float32)
    for target in targets:
        peft_transformer.get_submodule(target).merge(adapter_names=["default"])
    applier = LoraApplier(modules, "sd3")
    lora = applier.read(path)
    assert lora.unmatched_keys == [] and len(lora.patches) == len(targets)
    applier.set_active([(lora, 1.0, 1.0)])
    for target in targets:
        torch.testing.assert_close(modules["transformer"].get_submodule(target).weight,
                                   peft_transformer.get_submodule(target).base_layer.weight, atol=1e-5, rtol=1e-5)
    applier.restore()


def test_diffusers_load_lora_weights_fuses_a_diffusers_layout_dora_as_the_app_applies_it(tmp_path):
    """The diffusers-layout file is DoRA to diffusers too: its `load_lora_weights` + `fuse_lora` on the shipped
    model give the weights the app's reader patches in (linear and 3x3 conv)."""
    from diffusers import StableDiffusionPipeline

    from webui.models.default_model import SHIPPED_DEFAULT_MODEL

    pipeline = StableDiffusionPipeline.from_pretrained(str(SHIPPED_DEFAULT_MODEL), safety_checker=None)
    adapted = copy.deepcopy(pipeline.unet)
    targets = [name for name, _ in adapted.named_modules() if name.endswith("attn1.to_q")][:2]
    convs = [name for name, _ in adapted.named_modules() if name.endswith("resnets.0.conv1")][:1]
    inject_lora(adapted, targets, 4, 2.0, convs, 2, 1.0, network_type="dora")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in lora_parameters(adapted).items():
            parameter.copy_(parameter * (1 + 0.5 * torch.rand(parameter.shape, generator=generator))
                            if "magnitude" in name else torch.randn(parameter.shape, generator=generator) * 0.2)
    path = save_diffusers_lora(tmp_path / "toy_dora.safetensors", exported_layers("unet", adapted), {}, "sd1",
                               dtype=torch.float32)
    ours = copy.deepcopy(pipeline.unet)
    applier = LoraApplier({"unet": ours}, "sd1")
    applier.set_active([(applier.read(path), 1.0, 1.0)])
    pipeline.load_lora_weights(str(tmp_path), weight_name=path.name)
    pipeline.fuse_lora(lora_scale=1.0)
    for name in targets + convs:
        fused = pipeline.unet.get_submodule(name)
        fused = getattr(fused, "base_layer", fused)
        assert (ours.get_submodule(name).weight - adapted.get_submodule(name).base_layer.weight).abs().max() > 0.05
        torch.testing.assert_close(fused.weight, ours.get_submodule(name).weight, atol=1e-5, rtol=1e-5, msg=name)
