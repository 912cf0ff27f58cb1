"""Every LoRA and embedding the trainer writes loads in full in every loader users run, and a file that would
load only in part is flagged with the loader and the keys.

Files are written by the trainer's own exporter (`save_trained_lora`, `save_embedding`) for the layers the
trainer's LoRA method picks (`lora_training_targets`, text-encoder projections, LoCon convolutions), on tiny
models of each family's exact architecture, and checked with `webui.training.key_check`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from tests.support import flux_files, sd3_files, sdxl_files
from webui.models.families import family_named
from webui.training.config import UNET_TARGET_CHOICES
from webui.training.export import LoraLayerWeights, lora_metadata, save_embedding, save_trained_lora
from webui.training.key_check import (
    LOADER_A1111,
    LOADER_COMFYUI,
    LOADER_DIFFUSERS,
    LOADER_FORGE,
    LOADER_OWN,
    check_embedding,
    check_lora,
    encoder_widths,
)
from webui.training.methods.lora import text_encoder_target_names, unet_conv_names

RANK = 2


def tiny_sd_modules(family: str) -> dict[str, nn.Module]:
    """SD1 / SD2 at toy size with their published block layout (two resnets per level, attention on all
    levels but the last, SD2's linear projections), so A1111's block numbering applies."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, use_linear_projection=family == "sd2")
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77))
    return {"unet": unet.eval(), "text_encoder": text_encoder.eval()}


def trainer_layers(family: str, modules: Mapping[str, nn.Module], *, text_encoders: bool = True,
                   convs: bool = False) -> dict[str, LoraLayerWeights]:
    """Random factors for exactly the layers the trainer's LoRA method adapts."""
    model_family = family_named(family)
    denoiser = modules[model_family.denoiser]
    generator = torch.Generator().manual_seed(1)
    names = [f"{model_family.denoiser}.{path}"
             for path in model_family.lora_training_targets(denoiser, UNET_TARGET_CHOICES)]
    if convs:
        names += [f"{model_family.denoiser}.{path}" for path in unet_conv_names(denoiser)]
    if text_encoders:
        names += [f"{component}.{path}" for component in model_family.text_encoders if component in modules
                  for path in text_encoder_target_names(modules[component])]
    layers = {}
    for name in names:
        component, path = name.split(".", 1)
        shape = modules[component].get_submodule(path).weight.shape
        down = torch.randn(RANK, *shape[1:], generator=generator)
        up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=generator)
        layers[name] = LoraLayerWeights(down=down, up=up, alpha=1.0)
    return layers


def save_lora(tmp_path: Path, family: str, modules: Mapping[str, nn.Module], **choices) -> Path:
    layers = trainer_layers(family, modules, **choices)
    metadata = lora_metadata(name="hexagon", trigger_words=["sks hexagon"], base_model_name="tiny",
                             base_model_hash="ab" * 32, family=family, resolution=64, steps=10, epochs=1, rank=RANK,
                             alpha=1.0, tag_frequency={})
    config = modules[family_named(family).denoiser].config
    return save_trained_lora(tmp_path / f"{family}.safetensors", layers, metadata, family, denoiser_config=config)


def counts(check) -> dict[str, tuple[int, int]]:
    return {loader.loader: (loader.loaded, loader.total) for loader in check.loaders}


def assert_loads_everywhere(check, loaders: tuple[str, ...], layers: int) -> None:
    assert [loader.loader for loader in check.loaders] == list(loaders)
    assert check.total >= 2 * layers
    assert counts(check) == {loader: (check.total, check.total) for loader in loaders}, check.problems()
    assert check.complete and check.problems() == []
    assert check.summary() == f"{check.file}: {check.total} of {check.total} keys load in {', '.join(loaders)}"


SD_LOADERS = (LOADER_OWN, LOADER_DIFFUSERS, LOADER_COMFYUI, LOADER_A1111)


# --------------------------------------------------------------------------------------------
# Each family's export passes every loader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_sd_lora_with_text_encoder_and_locon_loads_everywhere(tmp_path, family):
    modules = tiny_sd_modules(family)
    path = save_lora(tmp_path, family, modules, convs=True)
    layers = len(trainer_layers(family, modules, convs=True))
    check = check_lora(path, family, modules)
    assert_loads_everywhere(check, SD_LOADERS, layers)
    assert check.notes == ()  # kohya files carry their alphas as tensors every loader reads


@pytest.mark.parametrize("kind", [sdxl_files.BASE, sdxl_files.REFINER])
def test_sdxl_lora_loads_everywhere(tmp_path, kind):
    modules = sdxl_files.tiny_sdxl_modules(kind)
    text_encoders = kind == sdxl_files.BASE  # see the refiner test below for its text encoder
    path = save_lora(tmp_path, kind, modules, text_encoders=text_encoders)
    layers = len(trainer_layers(kind, modules, text_encoders=text_encoders))
    assert_loads_everywhere(check_lora(path, kind, modules), SD_LOADERS, layers)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_load_lora_weights_places_every_layer_the_check_counts(tmp_path, family):
    """The outside oracle for the diffusers column: a real pipeline's `load_lora_weights` puts an adapter on
    every layer of the file, text encoders included."""
    import diffusers
    from peft.tuners.lora import LoraLayer

    modules = sdxl_files.tiny_sdxl_modules() if family == "sdxl" else tiny_sd_modules(family)
    layers = len(trainer_layers(family, modules))
    path = save_lora(tmp_path, family, modules)
    diffusers_count = next(loader for loader in check_lora(path, family, modules).loaders
                           if loader.loader == LOADER_DIFFUSERS)
    assert diffusers_count.complete and diffusers_count.total == 3 * layers  # down, up, alpha
    scheduler = diffusers.EulerDiscreteScheduler()
    if family == "sdxl":
        pipeline = diffusers.StableDiffusionXLPipeline(**modules, tokenizer=None, tokenizer_2=None, scheduler=scheduler)
    else:
        vae = diffusers.AutoencoderKL(block_out_channels=(32,), norm_num_groups=8)
        pipeline = diffusers.StableDiffusionPipeline(**modules, vae=vae, tokenizer=None, scheduler=scheduler,
                                                     safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
    pipeline.load_lora_weights(str(path))
    adapted = [name for component in family_named(family).text_encoders + ("unet",)
               for name, module in getattr(pipeline, component).named_modules() if isinstance(module, LoraLayer)]
    assert len(adapted) == layers


def test_refiner_text_encoder_keys_are_flagged_for_the_uis_that_do_not_map_them(tmp_path):
    """kohya's lora_te2_ names the refiner's only encoder; ComfyUI maps CLIP-G alone as its first encoder
    (lora_te_) and A1111 sends lora_te2_ to a second conditioner the refiner lacks."""
    modules = sdxl_files.tiny_sdxl_modules(sdxl_files.REFINER)
    check = check_lora(save_lora(tmp_path, sdxl_files.REFINER, modules), sdxl_files.REFINER, modules)
    text_keys = [key for key in load_file(str(tmp_path / "sdxl_refiner.safetensors")) if key.startswith("lora_te2_")]
    assert text_keys and not check.complete
    by_loader = {loader.loader: loader for loader in check.loaders}
    assert by_loader[LOADER_OWN].complete and by_loader[LOADER_DIFFUSERS].complete
    for loader in (LOADER_COMFYUI, LOADER_A1111):
        assert sorted(by_loader[loader].ignored) == sorted(text_keys)


def test_sd3_lora_loads_everywhere(tmp_path):
    modules = sd3_files.tiny_sd3_modules()
    path = save_lora(tmp_path, "sd3", modules)
    layers = len(trainer_layers("sd3", modules))
    check = check_lora(path, "sd3", modules)
    assert_loads_everywhere(check, (LOADER_OWN, LOADER_DIFFUSERS, LOADER_COMFYUI), layers)
    assert "no SD3" in check.not_checked


def test_flux_lora_loads_everywhere_and_an_alpha_only_in_metadata_is_noted(tmp_path):
    from webui.training.service import IDLE_STATUS
    from webui.ui.train_progress import result_markdown

    modules = flux_files.tiny_flux_modules()
    path = save_lora(tmp_path, "flux", modules)
    layers = len(trainer_layers("flux", modules))
    check = check_lora(path, "flux", modules)
    assert_loads_everywhere(check, (LOADER_OWN, LOADER_DIFFUSERS, LOADER_COMFYUI, LOADER_FORGE), layers)
    # alpha 1 at rank 2: the PEFT file keeps it in metadata only, which ComfyUI and Forge do not read
    [note] = check.notes
    assert note.startswith("ComfyUI and Forge: the alpha is only in lora_adapter_metadata")
    assert "transformer (rank 2, alpha 1: x2)" in note and "text_encoder (rank 2, alpha 1: x2)" in note
    status = dict(IDLE_STATUS, state="done", name="flux", step=2, total=2, total_epochs=1, files=[str(path)],
                  messages=[], warnings=[], key_checks=[check.to_dict()], key_problems=[])
    assert f"Loads differently:\n- flux.safetensors: {note}" in result_markdown(status)


def test_the_trainers_checker_skips_a1111_for_the_toy_model_and_checks_only_adapter_folders(tmp_path):
    """The toy model's UNet (one resnet per level) is no layout A1111 can load, so A1111 is left out and says
    why; LoRAs and embeddings are told apart by content; a file outside the adapter folders (a DreamBooth
    checkpoint) is not checked."""
    from webui.models.catalog import CheckpointCatalog
    from webui.models.checkpoint_loading import meta_modules, read_checkpoint_weights
    from webui.models.hashing import HashCache
    from webui.settings import PROJECT_ROOT
    from webui.training.key_check import KIND_EMBEDDING, KIND_LORA, saved_file_checker

    catalog = CheckpointCatalog(PROJECT_ROOT / "models" / "default", HashCache(tmp_path / "hashes.json"))
    record = next(record for record in catalog.refresh() if record.name == "sd-studio-toy")
    base = read_checkpoint_weights(record, torch.float32)
    modules = meta_modules(base)
    assert all(parameter.is_meta for module in modules.values() for parameter in module.parameters())
    lora_dir, embeddings_dir = tmp_path / "Lora", tmp_path / "embeddings"
    lora_dir.mkdir()
    checker = saved_file_checker(base, (lora_dir, embeddings_dir))
    lora = checker(save_lora(lora_dir, "sd1", modules))
    assert lora.kind == KIND_LORA
    assert_loads_everywhere(lora, (LOADER_OWN, LOADER_DIFFUSERS, LOADER_COMFYUI), len(trainer_layers("sd1", modules)))
    assert lora.not_checked.startswith("A1111: not checked")
    width = encoder_widths(modules, "sd1")["text_encoder"]
    embedding = checker(save_embedding(embeddings_dir / "hexagon.safetensors", torch.randn(2, width), "hexagon", 3))
    assert embedding.kind == KIND_EMBEDDING
    assert_loads_everywhere(embedding, (LOADER_OWN, LOADER_DIFFUSERS, LOADER_COMFYUI), 0)
    assert checker(save_lora(tmp_path, "sd1", modules)) is None
    broken = lora_dir / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    unreadable = checker(broken)
    assert not unreadable.complete and unreadable.problems()[0].startswith("broken.safetensors: SD Studio: unreadable")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a1111_block_numbering_names_every_layer_of_the_published_unet_as_the_ldm_converter_does(family):
    """A1111 renames kohya's diffusers-path UNet layers by the SD block numbering; on the published SD1/SD2 UNet
    (built weightless from the shipped config) that lands on the same LDM module as the project's tested
    checkpoint converter, for every LoRA-targetable layer (attention, resnets, samplers, conv_in/out, time)."""
    from webui.models.formats.kohya import unet_ldm_names_for_config
    from webui.models.formats.lora_loader_names import a1111_unet_name
    from webui.models.model_configs import load_component_config

    ldm_names = unet_ldm_names_for_config(load_component_config(family, "unet"))
    assert len(ldm_names) > 200
    assert {path: a1111_unet_name(path) for path in ldm_names} == ldm_names


# --------------------------------------------------------------------------------------------
# Files that would load only in part
# --------------------------------------------------------------------------------------------


def test_an_unknown_layer_is_ignored_by_every_loader_and_listed(tmp_path):
    modules = tiny_sd_modules("sd1")
    path = save_lora(tmp_path, "sd1", modules, text_encoders=False)
    tensors = load_file(str(path))
    unknown = {"lora_unet_not_a_layer.lora_down.weight", "lora_unet_not_a_layer.lora_up.weight"}
    tensors.update({key: torch.zeros(RANK, 4) for key in unknown})
    save_file(tensors, str(path))
    check = check_lora(path, "sd1", modules)
    assert not check.complete
    for loader in check.loaders:
        assert set(loader.ignored) == unknown, loader
        assert (loader.loaded, loader.total) == (len(tensors) - 2, len(tensors))
    problems = check.problems()
    assert len(problems) == 4 and all("lora_unet_not_a_layer.lora_up.weight" in line for line in problems)
    assert check.summary() == (f"{path.name}: {len(tensors) - 2} of {len(tensors)} keys load in "
                               "SD Studio, diffusers, ComfyUI, A1111")


def test_a_half_layer_makes_diffusers_refuse_the_whole_file(tmp_path):
    modules = tiny_sd_modules("sd1")
    path = save_lora(tmp_path, "sd1", modules, text_encoders=False)
    tensors = load_file(str(path))
    tensors["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(RANK, 4)
    save_file(tensors, str(path))
    diffusers = next(loader for loader in check_lora(path, "sd1", modules).loaders if loader.loader == LOADER_DIFFUSERS)
    assert diffusers.loaded == 0 and len(diffusers.ignored) == len(tensors)
    assert diffusers.note.startswith("diffusers refuses the file")


def test_a_key_in_another_familys_naming_is_flagged_by_the_loaders_that_ignore_it(tmp_path):
    """A Flux layer name (BFL's double_blocks) in an SD1 file is ignored by every loader; an SDXL second-encoder
    layer (lora_te2_) is ignored by the other loaders, and the project's reader refuses the whole file, saying it
    was made for SDXL."""
    modules = tiny_sd_modules("sd1")
    path = save_lora(tmp_path, "sd1", modules, text_encoders=False)
    tensors = load_file(str(path))
    flux = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"}
    save_file({**tensors, **{key: torch.zeros(RANK, RANK) for key in flux}}, str(path))
    check = check_lora(path, "sd1", modules)
    for loader in check.loaders:
        assert set(loader.ignored) == flux, loader
    assert len(check.problems()) == 4

    te2 = {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
           "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"}
    save_file({**tensors, **{key: torch.zeros(RANK, RANK) for key in te2}}, str(path))
    by_loader = {loader.loader: loader for loader in check_lora(path, "sd1", modules).loaders}
    assert by_loader[LOADER_OWN].loaded == 0 and "made for SDXL" in by_loader[LOADER_OWN].note
    for loader in (LOADER_DIFFUSERS, LOADER_COMFYUI, LOADER_A1111):
        assert set(by_loader[loader].ignored) == te2, by_loader[loader]


def test_a_peft_named_sd1_file_is_flagged_where_the_uis_do_not_map_peft_names(tmp_path):
    """PEFT names (unet.<path>.lora_A.weight) load in the project's reader and diffusers; ComfyUI's SD1 table
    spells attention projections the attention-processor way (attn1.processor.to_q), so it takes only the other
    layers; A1111 maps kohya names alone."""
    modules = tiny_sd_modules("sd1")
    layers = trainer_layers("sd1", modules, text_encoders=False)
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A.weight"] = layer.down
        tensors[f"{name}.lora_B.weight"] = layer.up
    path = tmp_path / "peft.safetensors"
    save_file(tensors, str(path))
    check = check_lora(path, "sd1", modules)
    by_loader = {loader.loader: loader for loader in check.loaders}
    assert by_loader[LOADER_OWN].complete and by_loader[LOADER_DIFFUSERS].complete
    attention = {key for key in tensors if re.search(r"\.attn[12]\.to_", key)}
    assert attention and set(by_loader[LOADER_COMFYUI].ignored) == attention
    assert by_loader[LOADER_A1111].loaded == 0
    assert f"A1111 would ignore {len(tensors)} of {len(tensors)} keys" in "\n".join(check.problems())


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_sd1_embedding_loads_everywhere(tmp_path, suffix):
    modules = tiny_sd_modules("sd1")
    widths = encoder_widths(modules, "sd1")
    path = save_embedding(tmp_path / f"hexagon{suffix}", torch.randn(2, 32), "hexagon", step=5)
    check = check_embedding(path, "sd1", widths)
    assert_loads_everywhere(check, SD_LOADERS, 0)
    assert check.total == 1


def test_sdxl_embedding_loads_everywhere_and_a_wrong_width_does_not(tmp_path):
    modules = sdxl_files.tiny_sdxl_modules()
    widths = encoder_widths(modules, "sdxl")
    assert widths == {"text_encoder": sdxl_files.CLIP_WIDTH, "text_encoder_2": sdxl_files.CLIP_WIDTH}
    vectors = {"clip_l": torch.randn(1, sdxl_files.CLIP_WIDTH), "clip_g": torch.randn(1, sdxl_files.CLIP_WIDTH)}
    check = check_embedding(save_embedding(tmp_path / "xl.safetensors", vectors, "xl", step=1), "sdxl", widths)
    assert_loads_everywhere(check, SD_LOADERS, 1)
    wrong = check_embedding(save_embedding(tmp_path / "sd1.safetensors", torch.randn(1, 32), "sd1", step=1), "sdxl",
                            widths)
    assert not wrong.complete and all(loader.ignored == ("emb_params",) for loader in wrong.loaders)
