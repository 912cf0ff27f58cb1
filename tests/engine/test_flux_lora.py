"""LoRAs for Flux.1 in every common key format, through the catalog, the manager's checkout and the pipeline.

A tiny Flux.1 dev "all in one" file (tests/support/flux_files.py) is loaded by `ModelManager.checkout`; each
test writes a LoRA file of seeded random low-rank updates in one naming (tests/support/dit_lora_files.py:
sd-scripts `lora_unet_double_blocks_0_img_attn_qkv`, ai-toolkit/ComfyUI `diffusion_model.double_blocks.0.
img_attn.qkv` (BFL names), diffusers/PEFT `transformer.transformer_blocks.0.attn.to_q`, OneTrainer
`lora_transformer_`, with CLIP-L's `lora_te1_` and T5's `lora_te3_` or `text_encoder*.`), checks out the model
with it and compares every weight with the expected merge: for BFL names, the checkpoint loader's converter
(`flux_transformer_from_bfl`, diffusers' converter at any width) applied to (original weights + update) is the
oracle, so the fused `qkv` and `linear1` (q, k, v and the MLP input) are split as a checkpoint's are; for a
few layers W + scale * up @ down is also written out here. Removal must give back the weights bitwise.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.dit_lora_files import (
    COMFYUI, DENOISER_WEIGHT, KOHYA, ONETRAINER, PEFT, Updates, assert_restored,
    assert_text_encoders_merged, check_diffusers_names_merge, expected_from_original, original_linear_weights,
    original_names_file, snapshot, use, write_file,
)
from tests.support.flux_files import DEV, denoise, tiny_flux_modules, transformer_to_bfl, write_all_in_one
from webui.models.catalog import CheckpointCatalog
from webui.models.hashing import HashCache
from webui.models.ldm_conversion import flux_transformer_from_bfl
from webui.models.manager import ModelManager

CHECKPOINT = "flux1-dev-aio"
TEXT_ENCODERS = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te3_"}  # sd-scripts: CLIP-L te1, T5 te3
to_bfl = partial(transformer_to_bfl, prefix="")


@pytest.fixture(scope="module")
def manager(tmp_path_factory) -> ModelManager:
    root = tmp_path_factory.mktemp("models")
    write_all_in_one(root / "Stable-diffusion" / f"{CHECKPOINT}.safetensors", tiny_flux_modules(DEV, seed=3))
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"))
    catalog.refresh()
    return ModelManager(catalog, torch.device("cpu"), torch.float32)


def loaded_modules(manager: ModelManager) -> dict[str, torch.nn.Module]:
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        assert model.family == "flux"
        return {name: getattr(model.pipeline, name) for name in ("transformer", *TEXT_ENCODERS)}


def bfl_names_file(path: Path, modules, naming: str, seed: int) -> tuple[Path, Updates]:
    weights = original_linear_weights(to_bfl(modules["transformer"].state_dict()), "")
    return original_names_file(path, modules, weights, naming, TEXT_ENCODERS, seed)


@pytest.mark.parametrize("naming", [KOHYA, COMFYUI])
def test_bfl_names_merge_like_the_checkpoint_converter_splits_them(manager, tmp_path, naming):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    path, updates = bfl_names_file(tmp_path / f"{naming}.safetensors", modules, naming, seed=21)
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:
        assert model.warnings == ()  # every key matched a layer
        merged = model.pipeline.transformer.state_dict()
        expected = expected_from_original(original["transformer"], updates, DENOISER_WEIGHT, to_bfl, "",
                                          flux_transformer_from_bfl)
        assert set(expected) == set(merged)
        for key, value in expected.items():
            torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-5, msg=key)
        # Written out for a few layers: a double block's fused qkv goes to q, k, v by rows; a single block's
        # linear1 to q, k, v and the MLP input (4x wide); the final modulation's halves are swapped.
        before = original["transformer"]
        width = merged["transformer_blocks.0.attn.to_q.weight"].shape[0]
        qkv = updates.delta("double_blocks.0.img_attn.qkv")
        for part, name in enumerate(("to_q", "to_k", "to_v")):
            key = f"transformer_blocks.0.attn.{name}.weight"
            torch.testing.assert_close(merged[key], before[key] + DENOISER_WEIGHT * qkv[part * width:(part + 1) * width],
                                       rtol=1e-5, atol=1e-5)
        linear1 = updates.delta("single_blocks.1.linear1")
        rows = {"attn.to_q": (0, width), "attn.to_k": (width, 2 * width), "attn.to_v": (2 * width, 3 * width),
                "proj_mlp": (3 * width, 7 * width)}
        assert linear1.shape[0] == 7 * width
        for name, (start, stop) in rows.items():
            key = f"single_transformer_blocks.1.{name}.weight"
            torch.testing.assert_close(merged[key], before[key] + DENOISER_WEIGHT * linear1[start:stop],
                                       rtol=1e-5, atol=1e-5)
        final = updates.delta("final_layer.adaLN_modulation.1")
        half = final.shape[0] // 2
        torch.testing.assert_close(merged["norm_out.linear.weight"], before["norm_out.linear.weight"]
                                   + DENOISER_WEIGHT * torch.cat([final[half:], final[:half]]), rtol=1e-5, atol=1e-5)
        assert_text_encoders_merged(modules, original, updates)
    assert_restored(manager, CHECKPOINT, original)


@pytest.mark.parametrize("naming", [PEFT, ONETRAINER])
def test_diffusers_module_names_merge_the_expected_delta(manager, tmp_path, naming):
    check_diffusers_names_merge(manager, CHECKPOINT, loaded_modules(manager), tmp_path / f"{naming}.safetensors",
                                naming, TEXT_ENCODERS, seed=22)


def test_a_flux_lora_changes_the_image_and_an_sd3_lora_is_skipped_with_both_names(manager, tmp_path):
    modules = loaded_modules(manager)
    path, _ = bfl_names_file(tmp_path / "style.safetensors", modules, KOHYA, seed=23)
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        plain = denoise(model.pipeline)
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:
        styled = denoise(model.pipeline)
    with manager.checkout(manager.state_for(CHECKPOINT)) as model:
        again = denoise(model.pipeline)
    assert np.abs(styled - plain).max() > 1e-3
    np.testing.assert_array_equal(again, plain)
    mmdit = write_file(tmp_path / "sd3_style.safetensors", {
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 32),
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(96, 2)})
    with manager.checkout(manager.state_for(CHECKPOINT, [use(mmdit)])) as model:  # skipped, with a warning
        assert model.loras == ()
        assert any(re.search(r"do not exist in the loaded Flux\.1 model.*SD3\.5.*without it", warning)
                   for warning in model.warnings), model.warnings
        np.testing.assert_array_equal(denoise(model.pipeline), plain)


def xlabs_file(path: Path, modules, seed: int) -> tuple[Path, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """An XLabs-AI Flux LoRA: attention processors of the double blocks, `qkv_lora1/2` (image/text q, k, v
    fused, one down for all three) and `proj_lora1/2` (their output projections), `.down/.up.weight`, no alpha
    (XLabs' layers scale by 1)."""
    generator = torch.Generator().manual_seed(seed)
    width = modules["transformer"].config.num_attention_heads * modules["transformer"].config.attention_head_dim
    factors, tensors = {}, {}
    for block in range(len(modules["transformer"].transformer_blocks)):
        for name, rows in (("qkv_lora1", 3 * width), ("qkv_lora2", 3 * width), ("proj_lora1", width),
                           ("proj_lora2", width)):
            down = torch.randn(2, width, generator=generator) * 0.5
            up = torch.randn(rows, 2, generator=generator) * 0.5
            factors[f"{block}.{name}"] = (down, up)
            tensors |= {f"double_blocks.{block}.processor.{name}.down.weight": down,
                        f"double_blocks.{block}.processor.{name}.up.weight": up}
    return write_file(path, tensors), factors


def test_xlabs_processor_loras_are_read_through_diffusers_converter(manager, tmp_path):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    path, factors = xlabs_file(tmp_path / "xlabs_realism.safetensors", modules, seed=24)
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:
        assert model.warnings == () and [lora.name for lora in model.loras] == ["xlabs_realism"]
        merged = model.pipeline.transformer.state_dict()
        before = original["transformer"]
        width = merged["transformer_blocks.0.attn.to_q.weight"].shape[0]
        targets = {"qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"), "proj_lora1": ("attn.to_out.0",),
                   "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                   "proj_lora2": ("attn.to_add_out",)}
        changed = set()
        for name, (down, up) in factors.items():
            block, layer = name.split(".")
            for part, module in enumerate(targets[layer]):
                key = f"transformer_blocks.{block}.{module}.weight"
                delta = up[part * width:(part + 1) * width] @ down
                torch.testing.assert_close(merged[key], before[key] + DENOISER_WEIGHT * delta, rtol=1e-5, atol=1e-5,
                                           msg=key)
                changed.add(key)
        assert all(torch.equal(merged[key], value) for key, value in before.items() if key not in changed)
    assert_restored(manager, CHECKPOINT, original)


def test_lora_flux_prefixed_files_read_as_sd_scripts_bfl_names(manager, tmp_path):
    """Older files spell sd-scripts' `lora_unet_double_blocks_0_img_attn_qkv` as `lora_flux_...`: the same
    update, merged the same way."""
    modules = loaded_modules(manager)
    original = snapshot(modules)["transformer"]
    path, _ = bfl_names_file(tmp_path / "kohya.safetensors", modules, KOHYA, seed=25)
    from safetensors.torch import load_file

    renamed = write_file(tmp_path / "old_flux.safetensors", {
        key.replace("lora_unet_", "lora_flux_", 1): value for key, value in load_file(str(path)).items()})
    with manager.checkout(manager.state_for(CHECKPOINT, [use(path)])) as model:
        expected = {key: value.clone() for key, value in model.pipeline.transformer.state_dict().items()}
    with manager.checkout(manager.state_for(CHECKPOINT, [use(renamed)])) as model:
        assert model.warnings == ()
        merged = model.pipeline.transformer.state_dict()
        assert all(torch.equal(merged[key], value) for key, value in expected.items())
        assert not torch.equal(merged["transformer_blocks.0.attn.to_q.weight"],
                               original["transformer_blocks.0.attn.to_q.weight"])
