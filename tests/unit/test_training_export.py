"""Training outputs load where users take them: kohya LoRAs, embeddings and checkpoints.

Every file is written by `webui.training.export` from known tensors and read back by independent
readers: the project's own LoRA / embedding / checkpoint loaders, and diffusers (``load_lora_weights`` +
``fuse_lora``, ``from_single_file``) as the outside oracle for what A1111-format files mean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.catalog import CheckpointCatalog, CheckpointRecord, is_diffusers_folder
from webui.models.checkpoint_files import read_metadata
from webui.models.checkpoint_loading import CheckpointWeights, read_checkpoint_weights
from webui.models.embeddings import read_embedding
from webui.models.hashing import HashCache
from webui.models.ldm_conversion import Architecture
from webui.models.lora import LoraFileError, read_lora
from webui.models.lora_formats import patch_delta
from webui.models.model_configs import config_dir, load_component_config
from webui.settings import PROJECT_ROOT
from webui.training.export import (
    LoraLayerWeights,
    kohya_layer_names,
    lora_metadata,
    save_diffusers_folder,
    save_embedding,
    save_kohya_lora,
    save_single_file_checkpoint,
    save_trained_checkpoint,
)

TOY_MODEL = PROJECT_ROOT / "models" / "default" / "sd-studio-toy"

# Layers of the toy SD1 model a LoRA trainer targets: attention projections (linear), SD1's 1x1-conv
# proj_in, a feed-forward layer, a 3x3 resnet convolution (LoCon) and text encoder projections.
TOY_LAYERS = (
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 4, 4.0),
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", 8, 1.0),
    ("unet.up_blocks.2.attentions.1.proj_in", 4, 4.0),
    ("unet.up_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 2, 1.0),
    ("unet.down_blocks.0.resnets.0.conv1", 4, 2.0),
    ("text_encoder.encoder.layers.0.self_attn.q_proj", 4, 2.0),
    ("text_encoder.encoder.layers.3.mlp.fc1", 4, 4.0),
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def random_factors(weight_shape: torch.Size, rank: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(down, up) shaped for a weight: linear [r, in] / [out, r]; conv [r, in, kh, kw] / [out, r, 1, 1]."""
    if len(weight_shape) == 2:
        return (torch.randn(rank, weight_shape[1], generator=generator),
                torch.randn(weight_shape[0], rank, generator=generator))
    return (torch.randn(rank, *weight_shape[1:], generator=generator),
            torch.randn(weight_shape[0], rank, 1, 1, generator=generator))


def make_layers(modules: Mapping[str, nn.Module], specs, seed: int = 0) -> dict[str, LoraLayerWeights]:
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for key, rank, alpha in specs:
        component, path = key.split(".", 1)
        down, up = random_factors(modules[component].get_submodule(path).weight.shape, rank, generator)
        layers[key] = LoraLayerWeights(down=down, up=up, alpha=alpha)
    return layers


def expected_delta(layer: LoraLayerWeights, weight_shape: torch.Size, dtype: torch.dtype = torch.float16) -> Tensor:
    """alpha / rank * up @ down, computed here from the factors as the file stores them (fp16)."""
    up = layer.up.to(dtype).float().reshape(layer.up.shape[0], -1)
    down = layer.down.to(dtype).float().reshape(layer.down.shape[0], -1)
    return (layer.alpha / layer.down.shape[0] * (up @ down)).reshape(weight_shape)


def file_keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def tiny_clip_config(projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=projection_dim,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """The SDXL layout at toy size: 2 layers per block, no attention at the top level, text_time."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=64, attention_head_dim=8,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8,
    )


def sd1_metadata(**overrides) -> dict[str, str]:
    arguments = dict(
        name="red-circles", trigger_words=["sks circle"], base_model_name="sd-studio-toy",
        base_model_hash="ab" * 32, family="sd1", resolution=512, steps=1200, epochs=10, rank=4, alpha=2.0,
        tag_frequency={"10_sks circle": {"sks circle": 30, "red background": 12}},
    )
    arguments.update(overrides)
    return lora_metadata(**arguments)


@pytest.fixture(scope="module")
def toy_modules() -> dict[str, nn.Module]:
    """The shipped toy model's UNet and text encoder, in fp32, loaded by diffusers / transformers."""
    unet = UNet2DConditionModel.from_pretrained(TOY_MODEL / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(TOY_MODEL / "text_encoder", torch_dtype=torch.float32)
    return {"unet": unet.eval(), "text_encoder": text_encoder.eval()}


@pytest.fixture(scope="module")
def toy_lora(toy_modules, tmp_path_factory) -> tuple[Path, dict[str, LoraLayerWeights]]:
    layers = make_layers(toy_modules, TOY_LAYERS)
    path = save_kohya_lora(tmp_path_factory.mktemp("lora") / "red-circles.safetensors", layers,
                           sd1_metadata(), "sd1")
    return path, layers


# --------------------------------------------------------------------------------------------
# kohya LoRA
# --------------------------------------------------------------------------------------------


def test_sd1_lora_uses_kohya_names_and_fp16_factors(toy_lora):
    path, layers = toy_lora
    keys = file_keys(path)
    assert len(keys) == 3 * len(layers)
    for name in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_up_blocks_2_attentions_1_proj_in",
                 "lora_unet_down_blocks_0_resnets_0_conv1",
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                 "lora_te_text_model_encoder_layers_3_mlp_fc1"):
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys, name
    with safe_open(str(path), framework="pt") as handle:
        down = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        up = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight")
        alpha = handle.get_tensor("lora_te_text_model_encoder_layers_3_mlp_fc1.alpha")
    assert down.dtype == torch.float16 and tuple(down.shape) == (4, 48, 3, 3)
    assert tuple(up.shape) == (48, 4, 1, 1)
    assert alpha.ndim == 0 and alpha.item() == 4.0
    assert not list(path.parent.glob(".*partial")), "the temporary file was left behind"


def test_sd1_lora_round_trips_through_the_project_reader(toy_modules, toy_lora):
    path, layers = toy_lora
    lora = read_lora(path, toy_modules, "sd1")
    assert lora.unmatched_keys == [] and lora.notes == []
    assert {patch.target for patch in lora.patches} == set(layers)
    for patch in lora.patches:
        layer = layers[patch.target]
        weight = toy_modules[patch.component].get_submodule(patch.module_path).weight
        assert patch.rank == layer.down.shape[0] and patch.alpha == layer.alpha
        torch.testing.assert_close(patch_delta(patch, weight.shape), expected_delta(layer, weight.shape))


def test_diffusers_fuses_the_lora_to_exactly_the_expected_update(toy_modules, tmp_path):
    """diffusers as the outside reader of kohya files: its fused UNet weights move by the same deltas.

    Two diffusers 0.42 limits shape this test, neither about the file: its kohya converter keys
    per-layer alphas that differ from the most common one by attention-processor names that PEFT then
    ignores (so every layer gets one alpha here, as trainers write it), and it cannot place kohya
    text-encoder layers in transformers 5's CLIPTextModel ("Could not automatically infer state dict
    type"), so the oracle covers the UNet; the project's reader covers the text encoder above.
    """
    from diffusers import StableDiffusionPipeline

    specs = [(key, rank, 2.0) for key, rank, _ in TOY_LAYERS if key.startswith("unet.")]
    layers = make_layers(toy_modules, specs, seed=9)
    path = save_kohya_lora(tmp_path / "uniform.safetensors", layers, sd1_metadata(), "sd1")
    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL, torch_dtype=torch.float32, safety_checker=None)
    modules = {"unet": pipe.unet}
    before = {key: modules[key.split(".", 1)[0]].get_submodule(key.split(".", 1)[1]).weight.detach().clone()
              for key in layers}
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    pipe.fuse_lora(lora_scale=1.0)
    for key, layer in layers.items():
        component, module_path = key.split(".", 1)
        module = modules[component].get_submodule(module_path)
        weight = module.base_layer.weight if hasattr(module, "base_layer") else module.weight
        expected = before[key] + expected_delta(layer, before[key].shape)
        torch.testing.assert_close(weight.detach(), expected, rtol=1e-4, atol=1e-4, msg=key)
        assert not torch.allclose(before[key], expected), f"{key}: the update is too small to test"


def test_sdxl_lora_uses_ldm_unet_names_and_numbered_text_encoders(tmp_path):
    torch.manual_seed(0)
    modules = {"unet": tiny_sdxl_unet(), "text_encoder": CLIPTextModel(tiny_clip_config()),
               "text_encoder_2": CLIPTextModelWithProjection(tiny_clip_config())}
    specs = (
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 4, 4.0),
        ("unet.down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k", 4, 2.0),
        ("unet.mid_block.attentions.0.proj_in", 2, 2.0),
        ("unet.up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_v", 4, 1.0),
        ("unet.up_blocks.1.resnets.2.conv2", 4, 4.0),
        ("text_encoder.encoder.layers.1.self_attn.k_proj", 4, 4.0),
        ("text_encoder_2.text_model.encoder.layers.0.mlp.fc2", 4, 4.0),
    )
    layers = make_layers(modules, specs, seed=3)
    path = save_kohya_lora(tmp_path / "xl.safetensors", layers,
                           sd1_metadata(family="sdxl", resolution=1024), "sdxl", unet_config=modules["unet"].config)
    keys = {key.rsplit(".lora_down.weight", 1)[0] for key in file_keys(path) if key.endswith(".lora_down.weight")}
    assert keys == {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k",
        "lora_unet_middle_block_1_proj_in",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_v",
        "lora_unet_output_blocks_5_0_out_layers_3",
        "lora_te1_text_model_encoder_layers_1_self_attn_k_proj",
        "lora_te2_text_model_encoder_layers_0_mlp_fc2",
    }
    lora = read_lora(path, modules, "sdxl")
    assert lora.unmatched_keys == [] and {patch.target for patch in lora.patches} == set(layers)
    for patch in lora.patches:
        weight = modules[patch.component].get_submodule(patch.module_path).weight
        torch.testing.assert_close(patch_delta(patch, weight.shape), expected_delta(layers[patch.target], weight.shape))


def test_sdxl_names_default_to_the_real_sdxl_unet_layout():
    names = kohya_layer_names([
        "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_out.0",
        "unet.up_blocks.0.attentions.0.proj_out",
        "unet.time_embedding.linear_1",
        "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj",
    ], "sdxl")
    assert list(names.values()) == [
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn1_to_out_0",
        "lora_unet_output_blocks_0_1_proj_out",
        "lora_unet_time_embed_0",
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
    ]


def test_lora_writer_rejects_what_no_reader_could_use(tmp_path):
    layer = LoraLayerWeights(down=torch.ones(2, 8), up=torch.ones(8, 2), alpha=2.0)
    with pytest.raises(ValueError, match="unknown component 'transformer'"):
        save_kohya_lora(tmp_path / "a.safetensors", {"transformer.blocks.0.attn": layer}, {}, "sd1")
    with pytest.raises(ValueError, match="text_encoder_2"):
        save_kohya_lora(tmp_path / "a.safetensors", {"text_encoder_2.encoder.layers.0.mlp.fc1": layer}, {}, "sd1")
    with pytest.raises(ValueError, match="no LDM name"):
        kohya_layer_names(["unet.down_blocks.0.attentions.0.proj_in"], "sdxl")  # SDXL level 0 has no attention
    with pytest.raises(ValueError, match=".safetensors"):
        save_kohya_lora(tmp_path / "a.pt", {"unet.conv_in": layer}, {}, "sd1")
    with pytest.raises(ValueError, match="rank"):
        LoraLayerWeights(down=torch.ones(2, 8), up=torch.ones(8, 3), alpha=1.0)
    with pytest.raises(TypeError, match="ss_network_dim"):
        save_kohya_lora(tmp_path / "a.safetensors", {"unet.conv_in": layer}, {"ss_network_dim": 4}, "sd1")
    assert list(tmp_path.iterdir()) == []


def test_lora_metadata_has_the_keys_a1111_and_civitai_read():
    metadata = sd1_metadata(extra={"ss_clip_skip": 2, "ss_learning_rate": "1e-4"})
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items())
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_v2"] == "False"
    assert metadata["ss_sd_model_name"] == "sd-studio-toy" and metadata["ss_sd_model_hash"] == "ab" * 32
    assert metadata["ss_resolution"] == "(512, 512)"
    assert metadata["ss_steps"] == "1200" and metadata["ss_epoch"] == "10"
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_sks circle": {"sks circle": 30, "red background": 12}}
    assert metadata["ss_output_name"] == "red-circles" and "sks circle" in metadata["ss_training_comment"]
    assert metadata["ss_clip_skip"] == "2" and metadata["ss_learning_rate"] == "1e-4"
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.implementation"] == "diffusers"
    assert metadata["modelspec.title"] == "red-circles"
    assert metadata["modelspec.trigger_phrase"] == "sks circle"
    assert metadata["modelspec.resolution"] == "512x512"
    assert metadata["modelspec.date"][:2] == "20" and "T" in metadata["modelspec.date"]

    xl = sd1_metadata(family="sdxl", resolution=(1024, 768))
    assert xl["ss_base_model_version"] == "sdxl_base_v1-0" and xl["ss_resolution"] == "(1024, 768)"
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert xl["modelspec.resolution"] == "1024x768"
    sd2 = sd1_metadata(family="sd2", resolution=768)
    assert sd2["ss_v2"] == "True" and sd2["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert sd2["modelspec.prediction_type"] == "v"


@pytest.mark.parametrize("family, variant, architecture", [
    ("sd3", "sd3.5-medium", "stable-diffusion-3.5-medium/lora"),
    ("sd3", "sd3.5-large", "stable-diffusion-3.5-large/lora"),
    ("sd3", "sd3-medium", "stable-diffusion-3-medium/lora"),
    ("flux", "flux.1-dev", "flux-1-dev/lora"),
    ("flux", "flux.1-schnell", "flux-1-schnell/lora"),
])
def test_modelspec_architecture_names_the_base_models_variant(family, variant, architecture):
    metadata = sd1_metadata(family=family, resolution=1024, variant=variant)
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.prediction_type"] == "flow"


def test_written_metadata_is_what_the_reader_and_a1111_see(toy_modules, toy_lora):
    path, _ = toy_lora
    metadata = read_metadata(path)
    assert metadata["ss_network_dim"] == "4" and metadata["modelspec.trigger_phrase"] == "sks circle"
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    data_hash = hashlib.sha256(raw[8 + header_length:]).hexdigest()
    assert metadata["sshs_model_hash"] == data_hash
    assert metadata["modelspec.hash_sha256"] == "0x" + data_hash
    lora = read_lora(path, toy_modules, "sd1")
    assert lora.trigger_words == ["sks circle"]
    # The metadata names SD1, so the reader refuses it for an SDXL model before looking at any layer.
    with pytest.raises(LoraFileError, match="SD1"):
        read_lora(path, {**toy_modules, "text_encoder_2": toy_modules["text_encoder"]}, "sdxl")


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_sd1_embedding_is_readable_under_its_file_name(tmp_path, suffix):
    vectors = torch.randn(3, 768, generator=torch.Generator().manual_seed(5))
    path = save_embedding(tmp_path / f"sks-style{suffix}", vectors, token="sks-style", step=1500)
    embedding = read_embedding(path)
    assert embedding.name == "sks-style" and embedding.vector_count == 3
    assert embedding.width() == {"te1": 768}
    torch.testing.assert_close(embedding.vectors["te1"], vectors)
    if suffix == ".pt":
        assert embedding.step == 1500
        content = torch.load(path, weights_only=True)
        assert content["string_to_token"] == {"*": 265} and content["name"] == "sks-style"
        assert content["sd_checkpoint"] is None and content["sd_checkpoint_name"] is None
    else:
        assert file_keys(path) == {"emb_params"}
        metadata = read_metadata(path)
        assert metadata["token"] == "sks-style" and metadata["step"] == "1500"
        assert metadata["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_sdxl_embedding_holds_both_encoders(tmp_path, suffix):
    generator = torch.Generator().manual_seed(6)
    vectors = {"clip_l": torch.randn(2, 768, generator=generator), "clip_g": torch.randn(2, 1280, generator=generator)}
    path = save_embedding(tmp_path / f"xl-style{suffix}", vectors, token="xl-style", step=10)
    embedding = read_embedding(path)
    assert embedding.width() == {"te1": 768, "te2": 1280}
    torch.testing.assert_close(embedding.vectors["te1"], vectors["clip_l"])
    torch.testing.assert_close(embedding.vectors["te2"], vectors["clip_g"])


def test_embedding_writer_rejects_inconsistent_vectors(tmp_path):
    with pytest.raises(ValueError, match="must match"):
        save_embedding(tmp_path / "x.safetensors", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(3, 1280)},
                       token="x", step=1)
    with pytest.raises(ValueError, match=".bin"):
        save_embedding(tmp_path / "x.bin", torch.ones(1, 768), token="x", step=1)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

# Parameters given distinct values so the round trip checks the key mapping, not just the layout.
MARKED = (
    ("unet", "conv_in.weight"),
    ("unet", "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
    ("unet", "up_blocks.3.resnets.2.conv_shortcut.weight"),
    ("text_encoder", "encoder.layers.11.self_attn.q_proj.weight"),
    ("vae", "decoder.mid_block.attentions.0.to_q.weight"),
    ("vae", "decoder.up_blocks.0.resnets.0.conv1.weight"),
)


def sd15_base() -> CheckpointWeights:
    """A full-size SD1.5 base model as the loader hands it to a trainer (fp16 zeros, shipped configs)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        modules = {
            "unet": UNet2DConditionModel.from_config(load_component_config("sd1", "unet")),
            "vae": AutoencoderKL.from_config(load_component_config("sd1", "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(load_component_config("sd1", "text_encoder"))),
        }
    state_dicts = {name: {key: torch.zeros(tensor.shape, dtype=torch.float16)
                          for key, tensor in module.state_dict().items()} for name, module in modules.items()}
    architecture = Architecture(family="sd1", unet_in_channels=4, label="SD1.x")
    record = CheckpointRecord(name="v1-5-base", path=Path("v1-5-base.safetensors"), format="safetensors",
                              architecture=architecture)
    return CheckpointWeights(record=record, architecture=architecture,
                             configs={name: load_component_config("sd1", name) for name in modules},
                             state_dicts=state_dicts, tokenizer_folder=config_dir("sd1"),
                             scheduler_config=load_component_config("sd1", "scheduler"))


@pytest.fixture(scope="module")
def sd15_export(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], Tensor]]:
    """A DreamBooth-style result: trained UNet and text encoder, the base model's VAE, saved as one file."""
    base = sd15_base()
    generator = torch.Generator().manual_seed(11)
    marked = {}
    for component, key in MARKED:
        shape = base.state_dicts[component][key].shape
        marked[(component, key)] = torch.randn(shape, generator=generator).to(torch.float16)
        if component == "vae":  # the VAE is not trained: its values must come from the base model
            base.state_dicts["vae"][key] = marked[(component, key)]
    trained = {component: dict(base.state_dicts[component]) for component in ("unet", "text_encoder")}
    for (component, key), value in marked.items():
        if component in trained:
            trained[component][key] = value
    folder = tmp_path_factory.mktemp("checkpoints")
    path = save_trained_checkpoint(folder, "my-dreambooth", trained, base,
                                   metadata={"ss_output_name": "my-dreambooth"})
    assert path == folder / "my-dreambooth.safetensors"  # the shipped SD1 shapes: an A1111 single file
    return path, marked


def test_single_file_checkpoint_loads_through_the_catalog_and_loader(sd15_export, tmp_path):
    path, marked = sd15_export
    catalog = CheckpointCatalog(path.parent, HashCache(tmp_path / "hashes.json"))
    (record,) = catalog.refresh()
    assert record.name == "my-dreambooth" and record.usable and record.architecture.label == "SD1.x"
    metadata = read_metadata(path)
    assert metadata["ss_output_name"] == "my-dreambooth"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    weights = read_checkpoint_weights(record, torch.float16)
    for (component, key), value in marked.items():
        assert torch.equal(weights.state_dicts[component][key], value), key
    assert sum(t.numel() for t in weights.state_dicts["unet"].values()) == 859_520_964


def test_single_file_checkpoint_loads_in_diffusers_from_single_file(sd15_export):
    from diffusers import StableDiffusionPipeline

    path, marked = sd15_export
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir("sd1")),
                                                    local_files_only=True, torch_dtype=torch.float16)
    for (component, key), value in marked.items():
        loaded = getattr(pipe, component).state_dict()[key]
        assert torch.equal(loaded.reshape(value.shape), value), key


def test_single_file_writer_needs_every_component(tmp_path):
    with pytest.raises(ValueError, match="vae"):
        save_single_file_checkpoint(tmp_path / "x.safetensors", {"unet": {}, "text_encoder": {}}, "sd1")
    with pytest.raises(ValueError, match="text_encoder_2"):
        save_single_file_checkpoint(tmp_path / "x.safetensors", {"unet": {}, "text_encoder": {}, "vae": {}}, "sdxl")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def toy_base(tmp_path):
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    catalog = CheckpointCatalog(checkpoints, HashCache(tmp_path / "hashes.json"))
    checkpoints.mkdir(parents=True)
    shutil.copytree(TOY_MODEL, checkpoints / TOY_MODEL.name)
    (record,) = catalog.refresh()
    return catalog, read_checkpoint_weights(record, torch.float32)


def test_trained_toy_model_becomes_a_diffusers_folder_that_loads(toy_base):
    from diffusers import StableDiffusionPipeline

    catalog, base = toy_base
    generator = torch.Generator().manual_seed(2)
    trained_unet = {key: value + 0.01 * torch.randn(value.shape, generator=generator)
                    for key, value in base.state_dicts["unet"].items()}
    saved = save_trained_checkpoint(catalog.folder, "toy-dreambooth", {"unet": trained_unet}, base)
    assert saved == catalog.folder / "toy-dreambooth" and is_diffusers_folder(saved)
    assert not (saved / "README.md").exists() and not (saved / "training_report.json").exists()
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"])
    assert [p.name for p in catalog.folder.iterdir() if p.name.startswith(".")] == []

    record = catalog.find("toy-dreambooth")
    weights = read_checkpoint_weights(record, torch.float32)
    for key, value in trained_unet.items():
        assert torch.equal(weights.state_dicts["unet"][key], value.to(torch.float16).float()), key
    for key, value in base.state_dicts["vae"].items():
        assert torch.equal(weights.state_dicts["vae"][key], value), key
    pipe = StableDiffusionPipeline.from_pretrained(saved, local_files_only=True)
    assert pipe.tokenizer("a red circle").input_ids[0] == 49406

    with pytest.raises(FileExistsError):
        save_trained_checkpoint(catalog.folder, "toy-dreambooth", {"unet": trained_unet}, base)
    again = save_diffusers_folder(saved, {"unet": base.state_dicts["unet"]}, base.record.path, overwrite=True)
    reread = read_checkpoint_weights(catalog.find("toy-dreambooth"), torch.float32)
    key = "conv_in.weight"
    assert again == saved and torch.equal(reread.state_dicts["unet"][key], base.state_dicts["unet"][key])


def test_checkpoint_with_new_token_rows_is_refused(toy_base):
    catalog, base = toy_base
    text_encoder = dict(base.state_dicts["text_encoder"])
    key = "embeddings.token_embedding.weight"
    text_encoder[key] = torch.cat([text_encoder[key], torch.zeros(2, text_encoder[key].shape[1])])
    with pytest.raises(ValueError, match="embedding"):
        save_trained_checkpoint(catalog.folder, "with-tokens", {"text_encoder": text_encoder}, base)
    assert not (catalog.folder / "with-tokens").exists()
