"""The SDXL refiner (and a tiny SDXL base) as people download them, through the catalog, the manager and the
pipelines: single SGM-layout files and a diffusers folder, written from tiny seeded models of the exact
architecture (tests/support/sdxl_files.py). The refiner is listed as "SDXL Refiner", loads into a
`StableDiffusionXLImg2ImgPipeline` with aesthetic-score time ids, and denoises exactly as that pipeline
assembled directly from the modules the file was written from."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.sdxl_files import BASE, REFINER, tiny_sdxl_modules, write_diffusers_folder, write_single_file
from webui.generation.denoise import pipeline_for
from webui.models.catalog import CheckpointCatalog
from webui.models.hashing import HashCache
from webui.models.manager import ModelManager
from webui.models.model_configs import load_component_config, load_tokenizers

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "Stable-diffusion"
    write_single_file(checkpoints / "sd_xl_base_tiny.safetensors", BASE, seed=1)
    write_single_file(checkpoints / "sd_xl_refiner_tiny.safetensors", REFINER, seed=2)
    write_diffusers_folder(checkpoints / "refiner-diffusers", REFINER, seed=2)
    return root


def manager_of(root: Path) -> ModelManager:
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"))
    catalog.refresh()
    return ModelManager(catalog, torch.device("cpu"), torch.float32)


def reference_refinement(image: Image.Image) -> np.ndarray:
    """The refiner's img2img as diffusers runs it from the modules the files were written from."""
    modules = tiny_sdxl_modules(REFINER, seed=2)
    pipeline = diffusers.StableDiffusionXLImg2ImgPipeline(
        **modules, text_encoder=None, tokenizer=None, tokenizer_2=load_tokenizers("sdxl_refiner")[0],
        scheduler=diffusers.EulerDiscreteScheduler.from_config(load_component_config("sdxl_refiner", "scheduler")),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    return run_img2img(pipeline, image)


def run_img2img(pipeline, image: Image.Image) -> np.ndarray:
    return pipeline(PROMPT, negative_prompt="blurry", image=image, strength=0.6, num_inference_steps=4,
                    guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="np").images


def test_the_catalog_lists_the_refiner_with_its_label_in_both_layouts(models_dir):
    catalog = CheckpointCatalog(models_dir / "Stable-diffusion", HashCache(models_dir / "hashes.json"))
    described = {r.name: (r.architecture.family, r.architecture.label, r.format, r.error) for r in catalog.refresh()}
    assert described == {
        "sd_xl_base_tiny": ("sdxl", "SDXL", "safetensors", None),
        "sd_xl_refiner_tiny": ("sdxl_refiner", "SDXL Refiner", "safetensors", None),
        "refiner-diffusers": ("sdxl_refiner", "SDXL Refiner", "diffusers", None),
    }


@pytest.mark.parametrize("name", ["sd_xl_refiner_tiny", "refiner-diffusers"])
def test_the_refiner_loads_as_an_img2img_pipeline_that_denoises_like_diffusers(models_dir, name):
    image = Image.fromarray((np.indices((32, 32)).sum(0) * 4 % 255).astype(np.uint8)).convert("RGB")
    manager = manager_of(models_dir)
    with manager.checkout(manager.state_for(name)) as model:
        assert type(model.pipeline).__name__ == "StableDiffusionXLImg2ImgPipeline"
        assert model.pipeline.config.requires_aesthetics_score is True
        assert model.pipeline.text_encoder is None and model.pipeline.unet.config.cross_attention_dim == 64
        img2img = pipeline_for(model, "img2img")
        assert img2img.config.requires_aesthetics_score is True
        model.pipeline.scheduler = diffusers.EulerDiscreteScheduler.from_config(model.scheduler_config)
        loaded = run_img2img(img2img, image)
    np.testing.assert_allclose(loaded, reference_refinement(image), atol=1e-5)


def test_the_tiny_base_single_file_loads_as_sdxl_with_its_fitted_sizes(models_dir):
    manager = manager_of(models_dir)
    with manager.checkout(manager.state_for("sd_xl_base_tiny")) as model:
        assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
        unet = model.pipeline.unet.config
        sizes = (list(unet.block_out_channels), unet.cross_attention_dim, unet.addition_time_embed_dim)
        assert sizes == ([32, 64], 128, 8)
        reference = tiny_sdxl_modules(BASE, seed=1)["unet"].state_dict()
        loaded = model.pipeline.unet.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in reference.items())
