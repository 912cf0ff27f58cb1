"""Flux ControlNet files in models/ControlNet, as people download them: detection (family, layout, union modes),
the module built from a folder or a config-less weights file equals the one written, and the refusals name
what is wrong: XLabs' own single files and BFL's Canny/Depth checkpoints with the reason, a ControlNet of
another family with both names, a Flux ControlNet of another transformer size with the sizes."""

from __future__ import annotations

import pytest
import torch

from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm
from tests.support.flux_controlnet_files import (
    tiny_flux_controlnet,
    write_bfl_control_checkpoint,
    write_folder,
    write_weights_file,
    write_xlabs_single_file,
)
from tests.support.flux_files import DEV, tiny_flux_modules
from webui.extensions.api import union_modes_of
from webui.models.controlnet_files import ControlNetFileError, build_controlnet, inspect_file
from webui.models.controlnet_store import ControlNetStore


@pytest.fixture(scope="module")
def flux_config() -> dict:
    return dict(tiny_flux_modules(DEV, seed=1)["transformer"].config)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ControlNet")
    written = {"canny": tiny_flux_controlnet(seed=3), "union": tiny_flux_controlnet(seed=4, union=True),
               "xlabs": tiny_flux_controlnet(seed=5, xlabs=True)}
    write_folder(root / "FLUX.1-dev-Controlnet-Canny", written["canny"])
    write_weights_file(root / "flux-union-pro.safetensors", written["union"], dtype=torch.bfloat16)
    write_folder(root / "flux-controlnet-canny-diffusers", written["xlabs"])
    write_xlabs_single_file(root / "flux-canny-controlnet-v3.safetensors", written["xlabs"])
    write_bfl_control_checkpoint(root / "flux1-canny-dev.safetensors")
    write_ldm(root / "control_v11p_sd15_canny.safetensors", tiny_controlnet(sd1_unet_config(), seed=3))
    return root, written


def test_flux_controlnets_are_detected_and_listed_by_family(folder):
    root, _ = folder
    store = ControlNetStore(root)
    usable = {title.rsplit(" [", 1)[0]: found for title, found in store.usable("flux")}
    assert set(usable) == {"FLUX.1-dev-Controlnet-Canny", "flux-union-pro", "flux-controlnet-canny-diffusers"}
    assert {found.architecture for found in usable.values()} == {"FluxControlNetModel"}
    assert usable["flux-union-pro"].union_modes == 10 and usable["FLUX.1-dev-Controlnet-Canny"].union_modes == 0
    assert union_modes_of(usable["flux-union-pro"])[:7] == ("canny", "tile", "depth", "blur", "pose", "gray",
                                                            "low quality")
    assert [title for title, _ in store.usable("sd1")][0].startswith("control_v11p_sd15_canny [")


def test_a_built_flux_controlnet_holds_the_written_weights(folder, flux_config):
    root, written = folder
    for name, key, dtype in (("FLUX.1-dev-Controlnet-Canny", "canny", torch.float32),
                             ("flux-union-pro.safetensors", "union", torch.bfloat16),
                             ("flux-controlnet-canny-diffusers", "xlabs", torch.float32)):
        built = build_controlnet(inspect_file(root / name), "flux", flux_config, "flux1-dev", torch.float32)
        assert type(built).__name__ == "FluxControlNetModel"
        assert built.config.num_mode == written[key].config.num_mode
        for parameter, (_, original) in zip(built.state_dict().values(), written[key].state_dict().items()):
            assert torch.equal(parameter, original.to(dtype).float())


def test_files_diffusers_cannot_use_as_controlnets_are_refused_with_the_reason(folder):
    root, _ = folder
    reasons = dict(ControlNetStore(root).scan())
    xlabs = next(reason for title, reason in reasons.items() if title.startswith("flux-canny-controlnet-v3 ["))
    assert isinstance(xlabs, str) and "XLabs" in xlabs and "diffusers" in xlabs and "config.json" in xlabs
    bfl = next(reason for title, reason in reasons.items() if title.startswith("flux1-canny-dev ["))
    assert isinstance(bfl, str) and "not a ControlNet" in bfl and "FLUX.1 Canny/Depth dev" in bfl


def test_a_controlnet_of_another_family_or_size_is_refused_naming_both(folder, flux_config):
    root, _ = folder
    flux_file = inspect_file(root / "FLUX.1-dev-Controlnet-Canny")
    with pytest.raises(ControlNetFileError, match=r"'FLUX.1-dev-Controlnet-Canny' is for Flux.1 but the checkpoint "
                                                  r"'v1-5' is SD1.x"):
        build_controlnet(flux_file, "sd1", sd1_unet_config(), "v1-5", torch.float32)
    with pytest.raises(ControlNetFileError, match=r"'control_v11p_sd15_canny' is for SD1.x but the checkpoint "
                                                  r"'flux1-dev' is Flux.1"):
        build_controlnet(inspect_file(root / "control_v11p_sd15_canny.safetensors"), "flux", flux_config,
                         "flux1-dev", torch.float32)
    wider = {**flux_config, "num_attention_heads": 4}
    with pytest.raises(ControlNetFileError, match="inner width 64 but the checkpoint 'big' has 128"):
        build_controlnet(flux_file, "flux", wider, "big", torch.float32)


@pytest.mark.parametrize("published", [
    dict(num_layers=5, num_single_layers=10),                           # InstantX FLUX.1-dev-Controlnet-Canny
    dict(num_layers=5, num_single_layers=10, num_mode=10),              # InstantX / Shakker-Labs Union(-Pro)
    dict(num_layers=6, num_single_layers=0),                            # Shakker-Labs Union-Pro-2.0 (no modes)
    dict(num_layers=2, num_single_layers=0, conditioning_embedding_channels=16, patch_size=2),  # XLabs diffusers
])
def test_the_config_fitted_to_full_size_weights_is_the_published_one(published):
    from diffusers import FluxControlNetModel

    from webui.models.families import family_named

    config = dict(in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                  pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56], **published)
    with torch.device("meta"):
        state = FluxControlNetModel(**config).state_dict()
    fitted = family_named("flux").transformer_controlnet_config(state)
    assert {key: fitted[key] for key in config} == config
