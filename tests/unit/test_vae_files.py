"""Standalone VAE files: LDM (A1111) and diffusers layouts of a tiny seeded AutoencoderKL read back to
the identical diffusers state dict, the VAE folder scan, A1111's "<checkpoint>.vae.*" convention, and
refusing VAEs that do not fit the loaded model.

LDM-format files are written with ldm_conversion.diffusers_to_ldm (the exporter, itself checked against
diffusers' own converter), so these tests do not share a key mapping with the code they test.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from webui.models.ldm_conversion import LDM_VAE_PREFIX, diffusers_to_ldm
from webui.models.vae import VaeFileError, read_vae_state_dict, scan_vaes, vae_beside_checkpoint


def _vae_config(**changes) -> dict:
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    config.update(changes)
    return config


def _seeded_vae(config: dict, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(config).eval()
    with torch.no_grad():  # default init leaves biases at zero; random values catch any swapped tensor
        for parameter in vae.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.1)
    return vae


def _owned(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous, storage-unshared copies, as safetensors requires."""
    return {key: value.detach().contiguous().clone() for key, value in state_dict.items()}


def _ldm_checkpoint_with(vae_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A complete tiny SD1 LDM checkpoint around this VAE, via the project's exporter."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4
        )
    )
    components = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "vae": vae_state}
    return _owned(diffusers_to_ldm(components, "sd1"))


def _ldm_vae_only(vae_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A bare LDM-format VAE file's contents (keys "encoder.down.0...", like vae-ft-mse-840000)."""
    checkpoint = _ldm_checkpoint_with(vae_state)
    return {key[len(LDM_VAE_PREFIX) :]: value for key, value in checkpoint.items() if key.startswith(LDM_VAE_PREFIX)}


def _assert_same_state(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert torch.equal(actual[key], expected[key]), key


def _assert_loads_and_decodes_like(state_dict: dict[str, Tensor], config: dict, original: AutoencoderKL) -> None:
    rebuilt = AutoencoderKL.from_config(config).eval()
    rebuilt.load_state_dict(state_dict, strict=True)
    latents = torch.randn(1, config["latent_channels"], 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(rebuilt.decode(latents).sample, original.decode(latents).sample)


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    return _seeded_vae(_vae_config())


@pytest.fixture(scope="module")
def tiny_state(tiny_vae) -> dict[str, Tensor]:
    return _owned(tiny_vae.state_dict())


def test_ldm_safetensors_vae_reads_back_identically(tmp_path, tiny_vae, tiny_state):
    ldm = _ldm_vae_only(tiny_state)
    assert any(key.startswith("encoder.down.0.block.0.") for key in ldm)  # really the LDM layout
    path = tmp_path / "vae-ft-mse.safetensors"
    save_file(ldm, str(path))
    state = read_vae_state_dict(path, _vae_config())
    _assert_same_state(state, tiny_state)
    _assert_loads_and_decodes_like(state, _vae_config(), tiny_vae)


def test_ldm_ckpt_with_training_leftovers_and_full_checkpoint_prefix(tmp_path, tiny_state):
    leftovers = dict(_ldm_vae_only(tiny_state))
    leftovers["loss.logvar"] = torch.zeros(())
    leftovers["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    leftovers["model_ema.decay"] = torch.tensor(0.9999)
    leftovers["model_ema.num_updates"] = torch.tensor(100, dtype=torch.int32)
    torch.save({"state_dict": leftovers, "global_step": 840000}, tmp_path / "original.ckpt")
    _assert_same_state(read_vae_state_dict(tmp_path / "original.ckpt", _vae_config()), tiny_state)

    full_checkpoint = _ldm_checkpoint_with(tiny_state)
    save_file(full_checkpoint, str(tmp_path / "whole-model.safetensors"))
    _assert_same_state(read_vae_state_dict(tmp_path / "whole-model.safetensors", _vae_config()), tiny_state)


def test_diffusers_format_file_and_legacy_attention_names(tmp_path, tiny_vae, tiny_state):
    save_file(tiny_state, str(tmp_path / "diffusers-vae.safetensors"))
    state = read_vae_state_dict(tmp_path / "diffusers-vae.safetensors", _vae_config())
    _assert_same_state(state, tiny_state)
    _assert_loads_and_decodes_like(state, _vae_config(), tiny_vae)

    legacy_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for key, value in tiny_state.items():
        for new, old in legacy_names.items():
            key = key.replace(new, old)
        legacy[key] = value
    assert any(".proj_attn." in key for key in legacy)
    torch.save(legacy, tmp_path / "legacy.bin")
    _assert_same_state(read_vae_state_dict(tmp_path / "legacy.bin", _vae_config()), tiny_state)


def test_diffusers_folder_is_listed_and_reads_back(tmp_path, tiny_vae, tiny_state):
    vae_folder = tmp_path / "VAE"
    tiny_vae.save_pretrained(vae_folder / "my-diffusers-vae")
    records = scan_vaes(vae_folder)
    assert [(record.name, record.error) for record in records] == [("my-diffusers-vae", None)]
    _assert_same_state(read_vae_state_dict(records[0].path, _vae_config()), tiny_state)


def test_scan_lists_files_with_cheap_errors(tmp_path, tiny_state):
    folder = tmp_path / "VAE"
    (folder / "sdxl").mkdir(parents=True)
    save_file(_ldm_vae_only(tiny_state), str(folder / "vae-ft-mse-840000-ema-pruned.safetensors"))
    save_file(tiny_state, str(folder / "sdxl" / "sdxl_vae.safetensors"))
    torch.save(_ldm_vae_only(tiny_state), folder / "kl-f8-anime.ckpt")
    (folder / "broken.safetensors").write_bytes(b"\x30\x00\x00\x00\x00\x00\x00\x00{\"encoder.conv_in.weight\": {")
    save_file({"emb_params": torch.zeros(2, 768)}, str(folder / "embedding.safetensors"))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "readme.txt").write_text("not a VAE file type")

    records = {record.name: record for record in scan_vaes(folder)}
    assert sorted(records) == [
        "broken.safetensors",
        "embedding.safetensors",
        "empty.pt",
        "kl-f8-anime.ckpt",
        "sdxl/sdxl_vae.safetensors",
        "vae-ft-mse-840000-ema-pruned.safetensors",
    ]
    assert records["vae-ft-mse-840000-ema-pruned.safetensors"].error is None
    assert records["sdxl/sdxl_vae.safetensors"].error is None
    assert records["kl-f8-anime.ckpt"].error is None
    assert records["kl-f8-anime.ckpt"].path == folder / "kl-f8-anime.ckpt"
    assert "not a valid safetensors file" in records["broken.safetensors"].error
    assert "no VAE weights" in records["embedding.safetensors"].error
    assert "empty" in records["empty.pt"].error
    assert scan_vaes(tmp_path / "missing") == []


def test_vae_beside_checkpoint_follows_a1111_naming(tmp_path):
    checkpoint = tmp_path / "dreamshaper_8.safetensors"
    checkpoint.write_bytes(b"")
    assert vae_beside_checkpoint(checkpoint) is None

    (tmp_path / "dreamshaper_8.vae.pt").write_bytes(b"x")
    assert vae_beside_checkpoint(checkpoint) == tmp_path / "dreamshaper_8.vae.pt"
    (tmp_path / "dreamshaper_8.vae.safetensors").write_bytes(b"x")
    assert vae_beside_checkpoint(checkpoint) == tmp_path / "dreamshaper_8.vae.safetensors"

    dotted = tmp_path / "model.v2.ckpt"
    dotted.write_bytes(b"")
    (tmp_path / "model.v2.vae.ckpt").write_bytes(b"x")
    assert vae_beside_checkpoint(dotted) == tmp_path / "model.v2.vae.ckpt"

    folder_model = tmp_path / "my-diffusers-model.fp16"
    folder_model.mkdir()
    (tmp_path / "my-diffusers-model.fp16.vae.safetensors").write_bytes(b"x")
    assert vae_beside_checkpoint(folder_model) == tmp_path / "my-diffusers-model.fp16.vae.safetensors"


def test_vae_with_other_latent_channels_is_refused(tmp_path):
    sixteen_channel = _owned(_seeded_vae(_vae_config(latent_channels=16)).state_dict())
    save_file(_ldm_vae_only(sixteen_channel), str(tmp_path / "flux-like.safetensors"))
    with pytest.raises(VaeFileError) as caught:
        read_vae_state_dict(tmp_path / "flux-like.safetensors", _vae_config())
    message = str(caught.value)
    assert "flux-like.safetensors" in message
    assert "16 latent channels" in message and "uses 4" in message


def test_vae_of_other_width_or_depth_is_refused(tmp_path):
    wider = _owned(_seeded_vae(_vae_config(block_out_channels=[32, 96])).state_dict())
    save_file(wider, str(tmp_path / "wider.safetensors"))
    shape_reason = r"other shapes \(e\.g\. \S+ is \[96.*\] in the file but \[64.*\] in this model"
    with pytest.raises(VaeFileError, match=shape_reason):
        read_vae_state_dict(tmp_path / "wider.safetensors", _vae_config())

    three_levels = _vae_config(
        block_out_channels=[32, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
    )
    deeper = _owned(_seeded_vae(three_levels).state_dict())
    save_file(_ldm_vae_only(deeper), str(tmp_path / "deeper-ldm.safetensors"))
    with pytest.raises(VaeFileError, match="3 resolution levels, this model's has 2"):
        read_vae_state_dict(tmp_path / "deeper-ldm.safetensors", _vae_config())
    save_file(deeper, str(tmp_path / "deeper-diffusers.safetensors"))
    with pytest.raises(VaeFileError, match="unknown to this model"):
        read_vae_state_dict(tmp_path / "deeper-diffusers.safetensors", _vae_config())
    # The same file is fine for a model whose VAE has that shape.
    _assert_same_state(read_vae_state_dict(tmp_path / "deeper-ldm.safetensors", three_levels), deeper)


def test_incomplete_or_foreign_files_are_refused(tmp_path, tiny_state):
    partial = {key: value for key, value in tiny_state.items() if not key.startswith("decoder.up_blocks.1.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(VaeFileError, match="missing"):
        read_vae_state_dict(tmp_path / "partial.safetensors", _vae_config())

    save_file({"emb_params": torch.zeros(1, 768)}, str(tmp_path / "embedding.safetensors"))
    with pytest.raises(VaeFileError, match="holds no VAE weights"):
        read_vae_state_dict(tmp_path / "embedding.safetensors", _vae_config())

    (tmp_path / "garbage.ckpt").write_bytes(b"this is not a pickle at all")
    with pytest.raises(VaeFileError, match="garbage.ckpt"):
        read_vae_state_dict(tmp_path / "garbage.ckpt", _vae_config())

    with pytest.raises(VaeFileError, match="does not exist"):
        read_vae_state_dict(tmp_path / "nope.safetensors", _vae_config())

    (tmp_path / "not-a-vae-folder").mkdir()
    (tmp_path / "not-a-vae-folder" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(VaeFileError, match="no config.json with diffusion_pytorch_model"):
        read_vae_state_dict(tmp_path / "not-a-vae-folder", _vae_config())
