"""LoRAs for SD3.5 in every common key format, through the catalog, the manager's checkout and the pipeline.

A tiny SD3.5 Medium single file (tests/support/sd3_files.py) is loaded by `ModelManager.checkout`; each test
writes a LoRA file of seeded random low-rank updates in one naming (tests/support/dit_lora_files.py: sd-scripts
`lora_unet_` + MMDiT names, ComfyUI/ai-toolkit `diffusion_model.` + MMDiT names (lora_A/B), diffusers/PEFT
`transformer.`, OneTrainer `lora_transformer_`, with the text encoders' `lora_te1/2/3_` or `text_encoder*.`),
checks out the model with
it and compares every weight with the expected merge: for the original MMDiT names, diffusers' own single-file
converter applied to (original weights + update) is the oracle, so fused `qkv` layers and swapped modulation
halves are split as a checkpoint's are; for a few layers W + scale * up @ down is also written out here.
Removal must give back the weights bitwise.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

from tests.support.dit_lora_files import (
    COMFYUI, DENOISER_WEIGHT, KOHYA, ONETRAINER, PEFT, Updates, assert_restored,
    assert_text_encoders_merged, check_diffusers_names_merge, expected_from_original, original_linear_weights,
    original_names_file, snapshot, use, write_file,
)
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, transformer_to_original, write_single_file
from webui.generation.prompt_syntax import extract_network_tags
from webui.models.catalog import CheckpointCatalog
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraCatalog, LoraUse
from webui.models.manager import ModelManager

CHECKPOINT = "sd3.5_medium_incl_clips_t5xxl"
ORIGINAL_PREFIX = "model.diffusion_model."
TEXT_ENCODERS = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"}


@pytest.fixture(scope="module")
def manager(tmp_path_factory) -> ModelManager:
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    write_single_file(root / "Stable-diffusion" / f"{CHECKPOINT}.safetensors", tiny_sd3_modules(MEDIUM, seed=3),
                      dtype=torch.float32)
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"))
    catalog.refresh()
    return ModelManager(catalog, torch.device("cpu"), torch.float32)


def loaded_modules(manager: ModelManager) -> dict[str, torch.nn.Module]:
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        return {name: getattr(model.pipeline, name) for name in ("transformer", *TEXT_ENCODERS)}


def mmdit_names_file(path: Path, modules, naming: str, seed: int) -> tuple[Path, Updates]:
    weights = original_linear_weights(transformer_to_original(modules["transformer"].state_dict()), ORIGINAL_PREFIX)
    return original_names_file(path, modules, weights, naming, TEXT_ENCODERS, seed)


@pytest.mark.parametrize("naming", [KOHYA, COMFYUI])
def test_original_mmdit_names_merge_like_the_checkpoint_converter_splits_them(manager, tmp_path, naming):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    path, updates = mmdit_names_file(tmp_path / f"{naming}.safetensors", modules, naming, seed=11)
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:
        assert model.warnings == ()  # every key matched a layer
        merged = model.pipeline.transformer.state_dict()
        expected = expected_from_original(original["transformer"], updates, DENOISER_WEIGHT, transformer_to_original,
                                          ORIGINAL_PREFIX, convert_sd3_transformer_checkpoint_to_diffusers)
        for key, value in expected.items():
            torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-5, msg=key)
        # Written out for a few layers: the fused qkv's rows go to q, k, v; the final modulation has its
        # (shift, scale) halves swapped.
        width = merged["transformer_blocks.0.attn.to_q.weight"].shape[0]
        qkv = updates.delta("joint_blocks.0.x_block.attn.qkv")
        for part, name in enumerate(("to_q", "to_k", "to_v")):
            key = f"transformer_blocks.0.attn.{name}.weight"
            torch.testing.assert_close(merged[key], original["transformer"][key] + DENOISER_WEIGHT * qkv[
                part * width:(part + 1) * width], rtol=1e-5, atol=1e-5)
        final = updates.delta("final_layer.adaLN_modulation.1")
        half = final.shape[0] // 2
        torch.testing.assert_close(merged["norm_out.linear.weight"], original["transformer"]["norm_out.linear.weight"]
                                   + DENOISER_WEIGHT * torch.cat([final[half:], final[:half]]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged["transformer_blocks.0.attn2.to_out.0.weight"],
                                   original["transformer"]["transformer_blocks.0.attn2.to_out.0.weight"]
                                   + DENOISER_WEIGHT * updates.delta("joint_blocks.0.x_block.attn2.proj"))
        assert_text_encoders_merged(modules, original, updates)
    assert_restored(manager, CHECKPOINT, original)


@pytest.mark.parametrize("naming", [PEFT, ONETRAINER])
def test_diffusers_module_names_merge_the_expected_delta(manager, tmp_path, naming):
    check_diffusers_names_merge(manager, CHECKPOINT, loaded_modules(manager), tmp_path / f"{naming}.safetensors",
                                naming, TEXT_ENCODERS, seed=12)


def denoise(pipeline, prompt: str) -> np.ndarray:
    return pipeline(prompt, num_inference_steps=2, height=32, width=32, guidance_scale=4.5,
                    generator=torch.Generator().manual_seed(7), output_type="np").images


def prompt_loras(folder: Path, prompt: str) -> tuple[str, tuple[LoraUse, ...]]:
    """A prompt's `<lora:name:te:unet>` tags as the generation service resolves them, and the prompt without them."""
    text, tags = extract_network_tags(prompt)
    return text, LoraCatalog(folder, HashCache(folder / "hashes.json")).resolve_tags(tags)


def test_a_lora_tag_changes_the_image_and_removing_it_gives_the_same_image_back(manager, tmp_path):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    mmdit_names_file(tmp_path / "style.safetensors", modules, KOHYA, seed=13)
    plain_prompt, none = prompt_loras(tmp_path, "a photo of a cat")
    prompt, loras = prompt_loras(tmp_path, "a photo of a cat <lora:style:0:0.8>")
    assert none == () and prompt.strip() == plain_prompt
    assert [(use.name, use.te_weight, use.unet_weight) for use in loras] == [("style", 0.0, 0.8)]
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        plain = denoise(model.pipeline, plain_prompt)
    with manager.checkout(manager.state_for(CHECKPOINT, loras)) as model:
        styled = denoise(model.pipeline, prompt)
        # Text-encoder weight 0: the encoders are untouched, the transformer carries the LoRA.
        for component in TEXT_ENCODERS:
            assert all(torch.equal(value, original[component][key])
                       for key, value in getattr(model.pipeline, component).state_dict().items())
        assert not torch.equal(model.pipeline.transformer.proj_out.weight, original["transformer"]["proj_out.weight"])
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        again = denoise(model.pipeline, plain_prompt)
    assert np.abs(styled - plain).max() > 1e-3
    np.testing.assert_array_equal(again, plain)
    assert manager.switch_count["copied"] == 0  # adding and removing LoRAs never reloaded the checkpoint


SD1_LORA = {f"lora_unet_{name}.{role}": torch.zeros(shape) for name in (
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k")
    for role, shape in (("lora_down.weight", (2, 32)), ("lora_up.weight", (32, 2)))}
FLUX_LORA = {f"{name}.{role}": torch.zeros(shape) for name, rows in (
    ("lora_unet_double_blocks_0_img_attn_qkv", 96), ("lora_unet_single_blocks_0_linear1", 224))
    for role, shape in (("lora_down.weight", (2, 32)), ("lora_up.weight", (rows, 2)), ("alpha", ()))}


@pytest.mark.parametrize(("tensors", "other"), [(SD1_LORA, r"SD1\.x"), (FLUX_LORA, r"Flux\.1")], ids=["sd1", "flux"])
def test_a_lora_of_another_family_is_skipped_with_a_warning_naming_both_families(manager, tmp_path, tensors, other):
    path = write_file(tmp_path / "other.safetensors", tensors)
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        plain = denoise(model.pipeline, "a cat")
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:  # generates on, without it
        assert model.loras == ()
        assert len(model.warnings) == 1
        assert re.search(rf"other\.safetensors.*do not exist in the loaded SD3\.5 model.*{other}.*without it",
                         model.warnings[0]), model.warnings
        np.testing.assert_array_equal(denoise(model.pipeline, "a cat"), plain)
