"""Checkpoint merger: the math, the saved file and its recipe, listing without restart, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.engine.helpers import different_layout_copy, perturbed_copy
from webui.context import build_context
from webui.models.merger import ADD_DIFFERENCE, WEIGHTED_SUM, MergeRecipe
from webui.settings import settings_from_args


@pytest.fixture
def ctx(data_dir, default_model_folder):
    checkpoints = data_dir / "models" / "Stable-diffusion"
    perturbed_copy(default_model_folder, checkpoints / "variant-b", seed=1)
    perturbed_copy(default_model_folder, checkpoints / "variant-c", seed=2)
    different_layout_copy(default_model_folder, checkpoints / "wide-c")
    context = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    yield context
    context.close()


def weights(ctx, name: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in ctx.manager.weights_of(ctx.catalog.find(name)).state_dicts["unet"].items()}


def recipe(**changes) -> MergeRecipe:
    values = dict(method=WEIGHTED_SUM, multiplier=0.3, primary="sd-studio-toy", secondary="variant-b",
                  tertiary=None, save_dtype="fp32", baked_vae=None)
    return MergeRecipe(**{**values, **changes})


def test_weighted_sum_and_add_difference_match_the_formulas_and_are_listed(ctx):
    a, b, c = weights(ctx, "sd-studio-toy"), weights(ctx, "variant-b"), weights(ctx, "variant-c")
    summed = ctx.models.merge_checkpoints(recipe(), "mix-ab")
    assert summed.name == "mix-ab" and summed.usable and "mix-ab" in [r.name for r in ctx.catalog.usable_records()]
    merged = weights(ctx, "mix-ab")
    key = next(iter(a))
    torch.testing.assert_close(merged[key], a[key] * 0.7 + b[key] * 0.3, rtol=1e-6, atol=1e-6)
    with safe_open(str(summed.path / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        stored = json.loads(handle.metadata()["sd_merge_recipe"])
    assert stored["method"] == WEIGHTED_SUM and stored["multiplier"] == 0.3 and stored["secondary"] == "variant-b"
    difference = ctx.models.merge_checkpoints(recipe(method=ADD_DIFFERENCE, tertiary="variant-c", multiplier=0.5), "mix-diff")
    merged = weights(ctx, difference.name)
    torch.testing.assert_close(merged[key], a[key] + (b[key] - c[key]) * 0.5, rtol=1e-6, atol=1e-6)
    # The merged model generates like any other checkpoint.
    from webui.generation.requests import Txt2ImgRequest

    result = ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="a circle", width=64, height=64, steps=3, checkpoint="mix-ab"))
    assert "Model: mix-ab" in result.result(300).infotexts[0]


def test_bad_merges_are_refused_before_anything_is_written(ctx, data_dir):
    before = sorted(p.name for p in (data_dir / "models" / "Stable-diffusion").iterdir())
    with pytest.raises(ValueError, match="tertiary"):
        ctx.models.merge_checkpoints(recipe(method=ADD_DIFFERENCE), "x")
    with pytest.raises(ValueError, match="another layout"):
        ctx.models.merge_checkpoints(recipe(secondary="wide-c"), "x")
    with pytest.raises(LookupError, match="not found"):
        ctx.models.merge_checkpoints(recipe(secondary="nope"), "x")
    with pytest.raises(ValueError, match="already exists"):
        ctx.models.merge_checkpoints(recipe(), "variant-b")
    assert sorted(p.name for p in (data_dir / "models" / "Stable-diffusion").iterdir()) == before


def test_full_size_sd15_merges_into_one_a1111_layout_safetensors_file(tmp_path):
    """Models with the standard SD1.5 layout are saved as one single-file checkpoint (the toy model, whose
    shapes are its own, takes the diffusers-folder branch tested above)."""
    import gc

    from tests.engine.test_single_file_checkpoint import write_zero_sd15_checkpoint
    from webui.models.catalog import CheckpointCatalog
    from webui.models.checkpoint_loading import read_checkpoint_weights
    from webui.models.hashing import HashCache
    from webui.models.merger import merge_state_dicts, save_merged

    folder = tmp_path / "models"
    folder.mkdir()
    write_zero_sd15_checkpoint(folder / "zero-a.safetensors")
    gc.collect()
    catalog = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"))
    catalog.refresh()
    weights = read_checkpoint_weights(catalog.find("zero-a"), torch.float16)
    recipe = MergeRecipe(WEIGHTED_SUM, 0.5, "zero-a", "zero-a", None, "fp16", None)
    merged = merge_state_dicts(recipe, weights, weights, None)
    del weights
    gc.collect()
    path = save_merged(recipe, merged, read_checkpoint_weights(catalog.find("zero-a"), torch.float16), folder, "half-half")
    del merged
    gc.collect()
    assert path == folder / "half-half.safetensors" and path.is_file()
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["sd_merge_recipe"])["method"] == WEIGHTED_SUM
        assert "model.diffusion_model.input_blocks.0.0.weight" in handle.keys()
        assert handle.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
    catalog.refresh()
    record = catalog.find("half-half")
    assert record.usable and record.format == "safetensors" and record.architecture.label == "SD1.x"
