"""The SD3.5/Flux single-file writer on tiny models of the exact architectures: its transformer names equal the
independent key-by-key writers of tests/support (Stability's MMDiT names, BFL's Flux names), diffusers' own
converters read them back bitwise, and a parameter it has no name for is an error, not a dropped weight."""

from __future__ import annotations

import pytest
import torch

from tests.support.flux_files import DEV, SCHNELL, tiny_flux_modules, transformer_to_bfl
from tests.support.sd3_files import LARGE, MEDIUM, tiny_sd3_modules, transformer_to_original
from webui.models.families import family_named
from webui.models.ldm_conversion import LDM_UNET_PREFIX, ldm_to_diffusers
from webui.models.single_file_writer import denoiser_to_original, file_components, single_file_state

CASES = [("sd3", lambda: tiny_sd3_modules(MEDIUM), transformer_to_original),
         ("sd3", lambda: tiny_sd3_modules(LARGE), transformer_to_original),
         ("flux", lambda: tiny_flux_modules(DEV), transformer_to_bfl),
         ("flux", lambda: tiny_flux_modules(SCHNELL), transformer_to_bfl)]


@pytest.mark.parametrize("family, modules, independent_writer", CASES, ids=["sd3.5-medium", "sd3.5-large",
                                                                          "flux-dev", "flux-schnell"])
def test_the_transformer_is_written_under_its_original_names_and_read_back_bitwise(family, modules,
                                                                                   independent_writer):
    built = modules()
    components = {name: module.state_dict() for name, module in built.items()}
    transformer, config = components["transformer"], dict(built["transformer"].config)
    written = denoiser_to_original(family_named(family), transformer, config)
    expected = {key.removeprefix(LDM_UNET_PREFIX): value for key, value in independent_writer(transformer).items()}
    assert set(written) == set(expected)
    assert all(torch.equal(written[key], expected[key]) for key in expected)

    configs = {"transformer": config, "vae": dict(built["vae"].config)}
    configs.update({name: built[name].config.to_dict() for name in components if name.startswith("text_encoder")})
    read_back = ldm_to_diffusers(single_file_state(components, family, configs), family, configs)
    assert set(read_back) == set(components)
    for name, state in components.items():
        expected_keys = {key for key in state if not key.endswith("position_ids")}
        assert expected_keys <= set(read_back[name]), (name, sorted(expected_keys - set(read_back[name]))[:3])
        assert all(torch.equal(read_back[name][key], state[key]) for key in expected_keys), name


def test_a_flux_transformer_alone_is_written_as_bfl_ships_it_and_with_parts_as_comfyuis_all_in_one():
    modules = tiny_flux_modules(DEV)
    configs = {"transformer": dict(modules["transformer"].config)}
    alone = single_file_state({"transformer": modules["transformer"].state_dict()}, "flux", configs)
    assert "double_blocks.0.img_attn.qkv.weight" in alone and not any(key.startswith("model.") for key in alone)
    assert file_components("flux", list(alone)) == ("transformer",)

    bundled = single_file_state({name: module.state_dict() for name, module in modules.items()}, "flux", configs)
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in bundled
    assert any(key.startswith("vae.encoder.") for key in bundled)
    assert any(key.startswith("text_encoders.t5xxl.transformer.") for key in bundled)
    assert file_components("flux", list(bundled)) == ("transformer", "vae", "text_encoder", "text_encoder_2")


def test_a_parameter_without_an_original_name_is_refused_naming_it():
    modules = tiny_sd3_modules(MEDIUM)
    state = {**modules["transformer"].state_dict(), "transformer_blocks.0.attn.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn\.extra\.weight"):
        denoiser_to_original(family_named("sd3"), state, dict(modules["transformer"].config))
