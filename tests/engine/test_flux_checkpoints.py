"""Flux.1 checkpoints in the layouts people download, through the catalog, the manager and the pipeline.

Tiny seeded models of the exact architecture (tests/support/flux_files.py) are written as real files:
`flux1-dev.safetensors` (BFL names, transformer only) with `models/VAE/ae.safetensors` and
`models/text_encoder/clip_l.safetensors` + `t5xxl_fp16.safetensors`; a ComfyUI-prefixed schnell transformer in
`models/unet`;
an "all in one" schnell file bundling `vae.` and `text_encoders.*`; and a diffusers folder. Each is listed with
its family and variant, loads through `ModelManager.checkout`, and the FluxPipeline `build_pipeline` made
denoises exactly as a FluxPipeline assembled directly from the modules the file was written from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.flux_files import (
    DEV, SCHNELL, denoise, reference_pipeline, tiny_flux_modules, write_all_in_one, write_companions,
    write_diffusers_folder, write_transformer_file,
)
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import CheckpointLoadError, build_pipeline
from webui.models.hashing import HashCache
from webui.models.manager import ModelManager

SCHNELL_NAMES = {"unet/flux1-schnell-comfyui", "flux1-schnell-aio"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.nn.Module]]]:
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "Stable-diffusion"
    dev, schnell = tiny_flux_modules(DEV, seed=1), tiny_flux_modules(SCHNELL, seed=2)
    write_transformer_file(checkpoints / "flux1-dev.safetensors", dev, prefix="")
    write_companions(root, dev)
    schnell_transformer_only = {**dev, "transformer": schnell["transformer"]}  # shares the companions
    write_transformer_file(root / "unet" / "flux1-schnell-comfyui.safetensors", schnell_transformer_only)
    write_all_in_one(checkpoints / "flux1-schnell-aio.safetensors", schnell)
    write_diffusers_folder(checkpoints / "flux1-dev-diffusers", dev)
    return root, {"flux1-dev": dev, "unet/flux1-schnell-comfyui": schnell_transformer_only,
                  "flux1-schnell-aio": schnell, "flux1-dev-diffusers": dev}


@pytest.fixture(scope="module")
def reference_images(models_dir) -> dict[int, np.ndarray]:
    """What each set of source modules denoises to through a directly assembled FluxPipeline, computed once
    per set (the dev file and the dev diffusers folder share theirs)."""
    _, sources = models_dir
    images: dict[int, np.ndarray] = {}
    for name, modules in sources.items():
        if id(modules) not in images:
            images[id(modules)] = denoise(reference_pipeline(modules, schnell=name in SCHNELL_NAMES))
    return images


def catalog_of(root: Path, text_encoder_folder: Path | None = None, vae_folder: Path | None = None
               ) -> CheckpointCatalog:
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"),
                                text_encoder_folder=text_encoder_folder, vae_folder=vae_folder)
    catalog.refresh()
    return catalog


def test_the_catalog_lists_every_layout_with_family_and_variant(models_dir):
    root, _ = models_dir
    records = {record.name: record for record in catalog_of(root).records()}
    described = {name: (r.architecture.family, r.architecture.label, r.architecture.variant, r.format, r.error)
                 for name, r in records.items()}
    assert described == {
        "flux1-dev": ("flux", "Flux.1 dev", DEV, "safetensors", None),
        "unet/flux1-schnell-comfyui": ("flux", "Flux.1 schnell", SCHNELL, "safetensors", None),
        "flux1-schnell-aio": ("flux", "Flux.1 schnell", SCHNELL, "safetensors", None),
        "flux1-dev-diffusers": ("flux", "Flux.1 dev", DEV, "diffusers", None),
    }


@pytest.mark.parametrize("name", ["flux1-dev", "unet/flux1-schnell-comfyui", "flux1-schnell-aio",
                                  "flux1-dev-diffusers"])
def test_each_layout_loads_through_the_manager_and_denoises_like_its_source_modules(models_dir, reference_images,
                                                                                    name):
    root, sources = models_dir
    manager = ModelManager(catalog_of(root), torch.device("cpu"), torch.float32)
    schnell = name in SCHNELL_NAMES
    with manager.checkout(manager.state_for(name)) as model:
        pipeline = model.pipeline
        assert type(pipeline).__name__ == "FluxPipeline"
        assert model.family == "flux" and model.warnings == ()
        assert pipeline.transformer.config.guidance_embeds is not schnell
        # schnell: a fixed shift of 1; dev: the resolution-dependent shift of FLUX.1-dev's scheduler.
        assert pipeline.scheduler.config.use_dynamic_shifting is not schnell
        for component, module in sources[name].items():
            loaded = getattr(pipeline, component).state_dict()
            assert all(torch.equal(loaded[key], value) for key, value in module.state_dict().items()), component
        image = denoise(pipeline)
    assert image.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(image, reference_images[id(sources[name])], atol=1e-5)


def test_build_pipeline_makes_a_flux_pipeline_from_the_read_weights(models_dir, reference_images):
    root, sources = models_dir
    catalog = catalog_of(root)
    weights = ModelManager(catalog, torch.device("cpu"), torch.float32).weights_of(catalog.find("flux1-dev"))
    pipeline = build_pipeline(weights, torch.device("cpu"), torch.float32)
    assert type(pipeline).__name__ == "FluxPipeline"
    assert pipeline.vae.config.shift_factor == 0.1159 and pipeline.vae.config.scaling_factor == 0.3611
    np.testing.assert_allclose(denoise(pipeline), reference_images[id(sources["flux1-dev"])], atol=1e-5)


@pytest.mark.parametrize("missing", ["vae", "t5", "all"])
def test_a_transformer_without_its_companions_is_unusable_and_the_message_names_files_and_folders(
        models_dir, tmp_path, missing):
    root, sources = models_dir
    companions = tmp_path / "models"
    write_companions(companions, sources["flux1-dev"], vae=missing not in ("vae", "all"),
                     clip=missing != "all", t5=missing not in ("t5", "all"))
    vae_folder, encoder_folder = companions / "VAE", companions / "text_encoder"
    catalog = catalog_of(root, encoder_folder, vae_folder)
    record = catalog.find("flux1-dev")
    assert not record.usable
    wanted = {"vae": ["ae.safetensors", str(vae_folder)], "t5": ["t5xxl_fp16.safetensors", str(encoder_folder)],
              "all": ["ae.safetensors", str(vae_folder), "clip_l.safetensors", "t5xxl_fp16.safetensors",
                      str(encoder_folder)]}[missing]
    assert all(part in record.error for part in wanted), record.error
    assert (missing == "vae") is ("text_encoder" not in record.error)
    assert catalog.find("flux1-schnell-aio").usable  # it bundles everything
    manager = ModelManager(catalog, torch.device("cpu"), torch.float32)
    with pytest.raises(CheckpointLoadError) as caught:
        with manager.checkout(manager.state_for("flux1-dev")):
            pass
    assert all(part in str(caught.value) for part in wanted)
    with manager.checkout(manager.state_for("flux1-schnell-aio")) as model:  # the manager keeps serving
        assert model.record.name == "flux1-schnell-aio"
    # The user puts the files in place and rescans: the checkpoint becomes usable.
    write_companions(companions, sources["flux1-dev"])
    catalog.refresh()
    assert catalog.find("flux1-dev").usable


def test_fp8_transformer_and_t5_files_load_upcast_to_the_run_dtype_with_a_note(tmp_path):
    """flux1-dev-fp8.safetensors and t5xxl_fp8_e4m3fn.safetensors: plain float8_e4m3fn tensors."""
    modules = tiny_flux_modules(DEV, seed=4)
    write_transformer_file(tmp_path / "Stable-diffusion" / "flux1-dev-fp8.safetensors", modules,
                           dtype=torch.float8_e4m3fn)
    write_companions(tmp_path, modules, t5_name="t5xxl_fp8_e4m3fn.safetensors", t5_dtype=torch.float8_e4m3fn)
    manager = ModelManager(catalog_of(tmp_path), torch.device("cpu"), torch.float32)
    with manager.checkout(manager.state_for("flux1-dev-fp8")) as model:
        assert model.record.architecture.label == "Flux.1 dev"
        assert len(model.warnings) == 2
        assert any("flux1-dev-fp8.safetensors" in note and "float8" in note and "float32" in note
                   for note in model.warnings)
        assert any("t5xxl_fp8_e4m3fn.safetensors" in note for note in model.warnings)
        for component in ("transformer", "text_encoder_2"):
            loaded = getattr(model.pipeline, component).state_dict()
            for key, original in modules[component].state_dict().items():
                assert loaded[key].dtype == torch.float32
                torch.testing.assert_close(loaded[key], original.to(torch.float8_e4m3fn).float(),
                                           rtol=0, atol=0, msg=f"{component}.{key}")
        assert np.isfinite(denoise(model.pipeline)).all()


def test_a_diffusers_folder_without_t5_is_refused_with_a_reason(models_dir, tmp_path):
    root, _ = models_dir
    folder = tmp_path / "Stable-diffusion" / "flux-no-t5"
    shutil.copytree(root / "Stable-diffusion" / "flux1-dev-diffusers", folder,
                    ignore=shutil.ignore_patterns("text_encoder_2"))
    manager = ModelManager(catalog_of(tmp_path), torch.device("cpu"), torch.float32)
    with pytest.raises(CheckpointLoadError, match="text_encoder_2"):
        with manager.checkout(manager.state_for("flux-no-t5")):
            pass


def test_companion_files_of_another_model_are_refused_at_load_naming_the_file_to_check(models_dir, tmp_path):
    """An SD-style 4-channel VAE saved as ae.safetensors, a wider CLIP saved as clip_l: clear load errors."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    root, sources = models_dir
    modules = sources["flux1-dev"]
    sd_vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                           block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32)
    wide_clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=77))
    cases = {"vae": ({**modules, "vae": sd_vae}, "4 latent channels", "ae.safetensors"),
             "clip": ({**modules, "text_encoder": wide_clip}, "64 wide", "clip_l.safetensors")}
    for case, (companions, problem, file_name) in cases.items():
        folder = tmp_path / case
        write_companions(folder, companions)
        manager = ModelManager(catalog_of(root, folder / "text_encoder", folder / "VAE"), torch.device("cpu"),
                               torch.float32)
        with pytest.raises(CheckpointLoadError) as caught:
            with manager.checkout(manager.state_for("flux1-dev")):
                pass
        assert problem in str(caught.value) and file_name in str(caught.value), str(caught.value)


def test_a_truncated_flux_file_is_listed_as_unusable_with_the_reason(models_dir, tmp_path):
    root, _ = models_dir
    checkpoints = tmp_path / "Stable-diffusion"
    checkpoints.mkdir()
    data = (root / "Stable-diffusion" / "flux1-dev.safetensors").read_bytes()
    (checkpoints / "flux1-dev-broken.safetensors").write_bytes(data[: len(data) // 2])
    record = catalog_of(tmp_path, root / "text_encoder", root / "VAE").find("flux1-dev-broken")
    assert not record.usable and "truncated" in record.error


def test_the_img2img_and_inpaint_pipelines_take_the_loaded_components(models_dir):
    import diffusers
    from PIL import Image

    from webui.models.families import TXT2IMG, family_named

    root, _ = models_dir
    manager = ModelManager(catalog_of(root), torch.device("cpu"), torch.float32)
    flux = family_named("flux")
    with manager.checkout(manager.state_for("flux1-dev")) as model:
        assert flux.pipeline_class_name(TXT2IMG) == type(model.pipeline).__name__
        img2img = getattr(diffusers, flux.pipeline_class_name("img2img"))(**model.pipeline.components)
        img2img.set_progress_bar_config(disable=True)
        image = img2img("a photo of a cat", image=Image.new("RGB", (32, 32), (200, 30, 30)), strength=0.5,
                        num_inference_steps=2, height=32, width=32,
                        **{**flux.pipeline_arguments(model.record.architecture.variant), "max_sequence_length": 32},
                        generator=torch.Generator().manual_seed(1), output_type="np").images
        inpaint = getattr(diffusers, flux.pipeline_class_name("inpaint"))(**model.pipeline.components)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    assert type(inpaint).__name__ == "FluxInpaintPipeline"


def test_a_diffusers_named_vae_file_serves_as_ae_safetensors(models_dir, tmp_path):
    """Some people save the diffusers VAE (vae/diffusion_pytorch_model.safetensors) as models/VAE/ae.safetensors."""
    from tests.support.flux_files import save

    root, sources = models_dir
    modules = sources["flux1-dev"]
    write_companions(tmp_path, modules, vae=False)
    save(modules["vae"].state_dict(), tmp_path / "VAE" / "ae.safetensors")
    manager = ModelManager(catalog_of(root, tmp_path / "text_encoder", tmp_path / "VAE"), torch.device("cpu"),
                           torch.float32)
    with manager.checkout(manager.state_for("flux1-dev")) as model:
        loaded = model.pipeline.vae.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in modules["vae"].state_dict().items())
