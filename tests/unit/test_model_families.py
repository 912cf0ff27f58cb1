"""The model families (webui/models/families/): each family recognises its own shipped configs, names
pipeline classes diffusers has, covers its components everywhere, and no module outside families/
branches on a family's name (issue 17, item 1)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import diffusers
import pytest

from webui.models.families import (
    FAMILIES, IMG2IMG, INPAINT, TXT2IMG, family_named, family_names, family_of_diffusers, family_of_lora_metadata,
)

PRODUCT = Path(__file__).resolve().parents[2] / "webui"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_family_recognises_its_own_shipped_diffusers_config(family):
    denoiser = json.loads((family.config_folder / family.denoiser / "config.json").read_text())
    folders = {path.name for path in family.config_folder.iterdir() if path.is_dir()}
    assert family_of_diffusers(denoiser, folders) is family
    assert set(family.components) <= folders
    # Tokenizers are shipped in the family's folder or shared with another family's (Flux uses SD3's).
    assert all((family.shipped_tokenizer_folder(name) / "tokenizer_config.json").is_file() for name in family.tokenizers)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_family_names_pipelines_diffusers_has_and_covers_its_encoders(family):
    for mode in (TXT2IMG, IMG2IMG, INPAINT) if family.makes_images_from_text else (IMG2IMG, INPAINT):
        assert hasattr(diffusers, family.pipeline_class_name(mode))
    assert family.resident_mode in family.pipeline_classes
    assert len(family.text_encoders) == len(family.tokenizers) == len(family.ldm_text_encoders)
    assert len(family.text_encoder_widths) == len(family.text_encoders)
    assert [encoder.component for encoder in family.ldm_text_encoders] == list(family.text_encoders)
    assert set(family.kohya_lora_prefixes) == {family.denoiser, *family.text_encoders}
    assert len(family.preview_coefficients) == family.latent_channels
    assert hasattr(diffusers, family.scheduler_class)
    assert set(family.optional_text_encoders) <= set(family.text_encoders)
    assert set(family.separate_text_encoder_files) <= set(family.text_encoders)
    with pytest.raises(ValueError, match="no pipeline for mode 'video'"):
        family.pipeline_class_name("video")


def test_lookup_by_name_and_lora_metadata():
    assert [family_named(name).name for name in family_names()] == list(family_names())
    with pytest.raises(ValueError,
                       match="unknown model family 'sd9'; expected one of flux, sd3, sdxl_refiner, sdxl, sd2, sd1"):
        family_named("sd9")
    assert family_of_lora_metadata("sdxl_base_v1-0", "").name == "sdxl"
    assert family_of_lora_metadata("", "stable-diffusion-xl-v1-refiner/lora").name == "sdxl_refiner"
    assert family_of_lora_metadata("", "stable-diffusion-v2-768-v/lora").name == "sd2"
    assert family_of_lora_metadata("sd_v1", "").name == "sd1"
    assert family_of_lora_metadata("flux1", "flux-1-dev/lora").name == "flux"
    assert family_of_lora_metadata("", "stable-diffusion-3.5-large/lora").name == "sd3"


def test_sd2_at_768_predicts_v_and_its_modelspec_says_so():
    sd2 = family_named("sd2")
    assert sd2.default_prediction_type((768, 768)) == "v" and sd2.default_prediction_type((512, 512)) == "epsilon"
    assert sd2.modelspec_architecture("v") == "stable-diffusion-v2-768-v"
    assert family_named("sd1").default_prediction_type((768, 768)) == "epsilon"


def family_name_literals(path: Path) -> list[str]:
    """Line numbers of string literals that equal a family's name (docstrings aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant)}
    names = set(family_names())
    return [f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings]


def test_no_module_outside_families_names_a_family():
    offenders = {}
    for path in sorted(PRODUCT.rglob("*.py")):
        relative = path.relative_to(PRODUCT).as_posix()
        if relative.startswith("models/families/"):
            continue
        found = family_name_literals(path)
        if found:
            offenders[relative] = found
    assert offenders == {}


def test_the_guard_sees_a_family_comparison(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""about sdxl"""\ndef f(model):\n    return model.family == "sdxl"\n')
    assert family_name_literals(module) == ["line 3: 'sdxl'"]


def test_a_v_prediction_sdxl_file_gets_a_v_prediction_scheduler_with_its_sampler():
    """Issue 17 item 3: the `v_pred` / `ztsnr` marker keys of v-prediction SDXL fine-tunes reach the sampler."""
    from webui.generation.samplers import build_scheduler
    from webui.models.checkpoint_loading import single_file_scheduler_config

    plain = single_file_scheduler_config("sdxl", ["model.diffusion_model.out.2.weight"])
    vpred = single_file_scheduler_config("sdxl", ["model.diffusion_model.out.2.weight", "v_pred"])
    ztsnr = single_file_scheduler_config("sdxl", ["v_pred", "ztsnr"])
    assert plain["prediction_type"] == "epsilon" and vpred["prediction_type"] == "v_prediction"
    assert not vpred.get("rescale_betas_zero_snr") and ztsnr["rescale_betas_zero_snr"] is True
    scheduler = build_scheduler("Euler", "Automatic", ztsnr)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    scheduler.set_timesteps(20)
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # the last training step is pure noise (zero SNR)
    assert single_file_scheduler_config("sd1", ["v_pred"]) == single_file_scheduler_config("sd1", [])


@pytest.mark.parametrize("name", ["sdxl", "sdxl_refiner"])
def test_fitting_the_published_unet_to_its_own_weights_gives_the_shipped_config_back(name):
    """The SDXL families read UNet sizes from the weights (reduced models load); published files must get
    exactly the shipped configs (checked on a weightless meta-device UNet of the shipped shape)."""
    import torch
    from diffusers import UNet2DConditionModel

    from webui.models.families.fitted_configs import fit_text_time_unet_config
    from webui.models.model_configs import load_component_config

    family = family_named(name)
    config = load_component_config(name, "unet")
    with torch.device("meta"):
        state = UNet2DConditionModel.from_config(config).state_dict()
    assert fit_text_time_unet_config(config, state, 1280, len(family.time_ids(1024, 1024, True))) == config
