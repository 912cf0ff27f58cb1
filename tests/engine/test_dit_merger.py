"""The Checkpoint Merger on SD3.5 and Flux.1 single files (tiny models of the exact architectures, written in the
layouts people download): the merge is written as a single file in the primary model's layout, the catalog
lists it with its family and variant, and it loads back with exactly the merged weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.support.flux_files import DEV, SCHNELL, tiny_flux_modules, write_all_in_one, write_companions, \
    write_transformer_file
from tests.support.sd3_files import LARGE, MEDIUM, tiny_sd3_modules, write_single_file, write_text_encoder_files
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import CheckpointWeights, read_checkpoint_weights
from webui.models.hashing import HashCache
from webui.models.merger import ADD_DIFFERENCE, WEIGHTED_SUM, MergeRecipe, merge_state_dicts, save_merged


def catalog_of(models: Path) -> CheckpointCatalog:
    catalog = CheckpointCatalog(models / "Stable-diffusion", HashCache(models / "hashes.json"),
                                text_encoder_folder=models / "text_encoder", vae_folder=models / "VAE")
    catalog.refresh()
    return catalog


def weights_of(catalog: CheckpointCatalog, models: Path, name: str) -> CheckpointWeights:
    return read_checkpoint_weights(catalog.find(name), torch.float32, models / "text_encoder", models / "VAE")


def merge(models: Path, recipe: MergeRecipe, output: str) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    catalog = catalog_of(models)
    names = [recipe.primary, recipe.secondary] + ([recipe.tertiary] if recipe.tertiary else [])
    inputs = [weights_of(catalog, models, name) for name in names]
    merged = merge_state_dicts(recipe, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)
    return save_merged(recipe, merged, inputs[0], models / "Stable-diffusion", output), merged


def assert_loads_back(models: Path, name: str, merged: dict[str, dict[str, torch.Tensor]], label: str) -> None:
    catalog = catalog_of(models)
    record = catalog.find(name)
    assert record.usable and record.architecture.label == label, (record.error, record.architecture)
    loaded = weights_of(catalog, models, name).state_dicts
    for component, state in merged.items():
        assert set(loaded[component]) >= set(state), component
        for key, value in state.items():
            assert torch.equal(loaded[component][key], value), f"{component}.{key}"


def recipe(primary: str, secondary: str, **changes) -> MergeRecipe:
    values = dict(method=WEIGHTED_SUM, multiplier=0.25, primary=primary, secondary=secondary, tertiary=None,
                  save_dtype="fp32", baked_vae=None)
    return MergeRecipe(**{**values, **changes})


@pytest.mark.parametrize("variant, label, bundled", [(MEDIUM, "SD3.5 Medium", True), (LARGE, "SD3.5 Large", False)])
def test_sd35_checkpoints_merge_into_a_single_file_that_loads_back_with_the_merged_weights(tmp_path, variant, label,
                                                                                          bundled):
    """incl_clips files merge into an incl_clips file; files without encoders into one without them (the
    encoders keep coming from models/text_encoder)."""
    models = tmp_path / "models"
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3") if bundled else ()
    (models / "Stable-diffusion").mkdir(parents=True)
    for name, seed in (("a", 1), ("b", 2)):
        modules = tiny_sd3_modules(variant, seed=seed)
        write_single_file(models / "Stable-diffusion" / f"{name}.safetensors", modules, bundle=encoders,
                          dtype=torch.float32)
    if not bundled:
        write_text_encoder_files(models / "text_encoder", tiny_sd3_modules(variant, seed=3), dtype=torch.float32)
    path, merged = merge(models, recipe("a", "b"), "ab")
    a = weights_of(catalog_of(models), models, "a").state_dicts["transformer"]
    b = weights_of(catalog_of(models), models, "b").state_dicts["transformer"]
    key = "transformer_blocks.0.attn.to_q.weight"
    torch.testing.assert_close(merged["transformer"][key], a[key] * 0.75 + b[key] * 0.25)

    assert path == models / "Stable-diffusion" / "ab.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    assert "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight" in keys
    assert any(key.startswith("first_stage_model.") for key in keys)
    assert any(key.startswith("text_encoders.") for key in keys) == bundled
    assert json.loads(metadata["sd_merge_recipe"])["secondary"] == "b"
    assert metadata["modelspec.architecture"] == f"stable-diffusion-{variant.removeprefix('sd')}"
    assert_loads_back(models, "ab", merged, label)


def test_flux_transformer_only_and_all_in_one_files_merge_in_their_own_layouts(tmp_path):
    models = tmp_path / "models"
    checkpoints = models / "Stable-diffusion"
    dev = [tiny_flux_modules(DEV, seed=seed) for seed in (1, 2, 3)]
    for name, modules in zip("abc", dev):
        write_transformer_file(checkpoints / f"flux1-dev-{name}.safetensors", modules, prefix="")
    write_companions(models, dev[0])
    path, merged = merge(models, recipe("flux1-dev-a", "flux1-dev-b", method=ADD_DIFFERENCE, tertiary="flux1-dev-c",
                                        multiplier=0.5), "flux1-dev-diff")
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert "double_blocks.0.img_attn.qkv.weight" in keys and "single_blocks.1.linear1.weight" in keys
    assert not any(key.startswith(("model.", "vae.", "text_encoders.")) for key in keys)  # BFL's own layout
    assert metadata["modelspec.architecture"] == "flux-1-dev"
    assert_loads_back(models, "flux1-dev-diff", {"transformer": merged["transformer"]}, "Flux.1 dev")

    for name, seed in (("x", 4), ("y", 5)):
        write_all_in_one(checkpoints / f"flux1-schnell-{name}.safetensors", tiny_flux_modules(SCHNELL, seed=seed))
    path, merged = merge(models, recipe("flux1-schnell-x", "flux1-schnell-y"), "flux1-schnell-xy")
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in keys
    assert any(key.startswith("vae.") for key in keys) and any(key.startswith("text_encoders.t5xxl.") for key in keys)
    assert metadata["modelspec.architecture"] == "flux-1-schnell"
    assert_loads_back(models, "flux1-schnell-xy", merged, "Flux.1 schnell")
