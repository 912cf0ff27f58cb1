"""SD3.5 checkpoints in the layouts people download, through the catalog, the manager and the pipeline.

Tiny seeded models of the exact architecture (tests/support/sd3_files.py) are written as real files: a
single `.safetensors` with bundled text encoders (SD3.5 Medium), a transformer-only file with the separate
`clip_l`/`clip_g`/`t5xxl_fp16` files in models/text_encoder (SD3.5 Large), the same without T5, and a
diffusers folder. Each is listed with its family and variant, loads through `ModelManager.checkout`, and
its pipeline (built by `build_pipeline`) denoises exactly as a `StableDiffusion3Pipeline` assembled
directly from the modules the file was written from.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from tests.support.sd3_files import LARGE, MEDIUM, tiny_sd3_modules, write_single_file, write_text_encoder_files
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import CheckpointLoadError
from webui.models.hashing import HashCache
from webui.models.manager import ModelManager
from webui.models.model_configs import load_tokenizers

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.nn.Module]]]:
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "Stable-diffusion"
    checkpoints.mkdir()
    medium, large = tiny_sd3_modules(MEDIUM, seed=1), tiny_sd3_modules(LARGE, seed=2)
    write_single_file(checkpoints / "sd3.5_medium_incl_clips_t5xxl.safetensors", medium, dtype=torch.float32)
    write_single_file(checkpoints / "sd3.5_large.safetensors", large, bundle=(), dtype=torch.float32)
    write_text_encoder_files(root / "text_encoder", large, dtype=torch.float32)
    pipeline = diffusers.StableDiffusion3Pipeline(
        **medium, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        **dict(zip(("tokenizer", "tokenizer_2", "tokenizer_3"), load_tokenizers("sd3"))))
    pipeline.save_pretrained(checkpoints / "sd3.5-medium-diffusers", safe_serialization=True)
    return root, {"sd3.5_medium_incl_clips_t5xxl": medium, "sd3.5_large": large, "sd3.5-medium-diffusers": medium}


def catalog_of(root: Path, text_encoder_folder: Path | None = None) -> CheckpointCatalog:
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"),
                                text_encoder_folder=text_encoder_folder)
    catalog.refresh()
    return catalog


def reference_image(modules: dict[str, torch.nn.Module], text_encoder_3: bool = True) -> np.ndarray:
    tokenizers = dict(zip(("tokenizer", "tokenizer_2", "tokenizer_3"), load_tokenizers("sd3")))
    if not text_encoder_3:
        modules = {**modules, "text_encoder_3": None}
        tokenizers["tokenizer_3"] = None
    pipeline = diffusers.StableDiffusion3Pipeline(
        **modules, **tokenizers, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    return denoise(pipeline)


def denoise(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(7)
    return pipeline(PROMPT, negative_prompt="blurry", num_inference_steps=2, height=32, width=32,
                    guidance_scale=4.5, generator=generator, output_type="np").images


def test_the_catalog_lists_every_layout_with_family_and_variant(models_dir):
    root, _ = models_dir
    records = {record.name: record for record in catalog_of(root).records()}
    assert set(records) == {"sd3.5_medium_incl_clips_t5xxl", "sd3.5_large", "sd3.5-medium-diffusers"}
    assert all(record.usable for record in records.values())
    described = {name: (r.architecture.family, r.architecture.label, r.architecture.variant, r.format)
                 for name, r in records.items()}
    assert described == {
        "sd3.5_medium_incl_clips_t5xxl": ("sd3", "SD3.5 Medium", "sd3.5-medium", "safetensors"),
        "sd3.5_large": ("sd3", "SD3.5 Large", "sd3.5-large", "safetensors"),
        "sd3.5-medium-diffusers": ("sd3", "SD3.5 Medium", "sd3.5-medium", "diffusers"),
    }


@pytest.mark.parametrize("name", ["sd3.5_medium_incl_clips_t5xxl", "sd3.5_large", "sd3.5-medium-diffusers"])
def test_each_layout_loads_through_the_manager_and_denoises_like_its_source_modules(models_dir, name):
    root, sources = models_dir
    manager = ModelManager(catalog_of(root), torch.device("cpu"), torch.float32)
    with manager.checkout(manager.state_for(name)) as model:
        pipeline = model.pipeline
        assert type(pipeline).__name__ == "StableDiffusion3Pipeline"
        assert model.family == "sd3" and model.warnings == ()
        assert type(pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
        for component, module in sources[name].items():
            loaded = getattr(pipeline, component).state_dict()
            assert all(torch.equal(loaded[key], value) for key, value in module.state_dict().items()), component
        image = denoise(pipeline)
    assert image.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(image, reference_image(sources[name]), atol=1e-5)


def test_without_a_t5_file_the_checkpoint_loads_with_clip_only_and_says_so(models_dir, tmp_path):
    root, sources = models_dir
    clip_only = tmp_path / "text_encoder"
    write_text_encoder_files(clip_only, sources["sd3.5_large"], t5=False, dtype=torch.float32)
    manager = ModelManager(catalog_of(root, clip_only), torch.device("cpu"), torch.float32)
    with manager.checkout(manager.state_for("sd3.5_large")) as model:
        assert model.pipeline.text_encoder_3 is None and model.pipeline.tokenizer_3 is None
        assert len(model.warnings) == 1
        assert "t5xxl_fp16.safetensors" in model.warnings[0] and str(clip_only) in model.warnings[0]
        image = denoise(model.pipeline)
    np.testing.assert_allclose(image, reference_image(sources["sd3.5_large"], text_encoder_3=False), atol=1e-5)


def test_a_transformer_only_file_without_text_encoders_names_the_files_and_the_folder(models_dir, tmp_path):
    root, _ = models_dir
    empty = tmp_path / "no_encoders"
    manager = ModelManager(catalog_of(root, empty), torch.device("cpu"), torch.float32)
    with pytest.raises(CheckpointLoadError) as caught:
        with manager.checkout(manager.state_for("sd3.5_large")):
            pass
    message = str(caught.value)
    for wanted in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors", str(empty)):
        assert wanted in message
    # The manager keeps serving: the bundled checkpoint still loads.
    with manager.checkout(manager.state_for("sd3.5_medium_incl_clips_t5xxl")) as model:
        assert model.record.name == "sd3.5_medium_incl_clips_t5xxl"


def test_fp8_scaled_files_load_as_their_dequantized_weights(tmp_path):
    """sd3.5_large_fp8_scaled / t5xxl_fp8_e4m3fn_scaled: float8 weights times their scale_weight."""
    from safetensors.torch import save_file

    from tests.support.sd3_files import t5_file_state, to_scaled_fp8, transformer_to_original
    from webui.models.ldm_conversion import _vae_to_ldm

    modules = tiny_sd3_modules(LARGE, seed=4)
    checkpoints, encoders = tmp_path / "Stable-diffusion", tmp_path / "text_encoder"
    checkpoints.mkdir()
    write_text_encoder_files(encoders, modules, t5=False, dtype=torch.float32)
    transformer = transformer_to_original(modules["transformer"].state_dict())
    single = to_scaled_fp8(transformer, prefix="model.diffusion_model.")
    single.update(_vae_to_ldm(modules["vae"].state_dict()))
    save_file({k: v.contiguous() for k, v in single.items()}, str(checkpoints / "sd3.5_large_fp8_scaled.safetensors"))
    save_file({k: v.contiguous() for k, v in to_scaled_fp8(t5_file_state(modules["text_encoder_3"])).items()},
              str(encoders / "t5xxl_fp8_e4m3fn_scaled.safetensors"))

    manager = ModelManager(catalog_of(tmp_path), torch.device("cpu"), torch.float32)
    with manager.checkout(manager.state_for("sd3.5_large_fp8_scaled")) as model:
        assert model.record.architecture.label == "SD3.5 Large" and model.warnings == ()
        for component in ("transformer", "text_encoder_3"):
            loaded = getattr(model.pipeline, component).state_dict()
            for key, original in modules[component].state_dict().items():
                tolerance = 0.07 * float(original.abs().max()) + 1e-6  # e4m3 keeps 3 mantissa bits
                assert loaded[key].dtype == torch.float32
                assert torch.allclose(loaded[key], original, atol=tolerance), f"{component}.{key}"
        assert np.isfinite(denoise(model.pipeline)).all()


def test_a_diffusers_folder_without_t5_loads_with_clip_only_and_says_so(models_dir, tmp_path):
    import shutil

    root, sources = models_dir
    checkpoints = tmp_path / "Stable-diffusion"
    folder = checkpoints / "sd3.5-medium-no-t5"
    shutil.copytree(root / "Stable-diffusion" / "sd3.5-medium-diffusers", folder,
                    ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    manager = ModelManager(catalog_of(tmp_path), torch.device("cpu"), torch.float32)
    with manager.checkout(manager.state_for("sd3.5-medium-no-t5")) as model:
        assert model.record.architecture.label == "SD3.5 Medium"
        assert model.pipeline.text_encoder_3 is None and model.pipeline.tokenizer_3 is None
        assert len(model.warnings) == 1 and "text_encoder_3" in model.warnings[0]
        image = denoise(model.pipeline)
    np.testing.assert_allclose(image, reference_image(sources["sd3.5-medium-diffusers"], text_encoder_3=False),
                               atol=1e-5)
