"""The hires upscaler list and the X/Y/Z "Hires upscaler" axis offer the model upscalers the upscaler
service finds (latent modes first, then the filters, then the models), and refuse what it cannot run;
pasted parameters select a model upscaler in txt2img's dropdown."""

from __future__ import annotations

import pytest

from tests.upscaler_files import write_compact, write_unknown_architecture
from webui.generation.requests import Txt2ImgRequest
from webui.generation.upscaler_choices import hires_upscaler_names
from webui.ui.infotext_fields import tab_fields, txt2img_values_from_infotext
from webui.ui.upscaler_lists import pasted_hires_upscaler
from webui.upscaling.catalog import UpscalerCatalog
from webui.upscaling.service import UpscalerService
from webui.xyz.axes import AxisChoices, default_axis_registry, resolve_axis_values
from webui.xyz.ranges import AxisValueError

INFOTEXT = "a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscaler: "
BUILT_IN = ["Latent", "Latent (nearest-exact)", "Latent (bicubic)", "Lanczos", "Nearest"]


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory) -> UpscalerService:
    esrgan, comfy = tmp_path_factory.mktemp("ESRGAN"), tmp_path_factory.mktemp("upscale_models")
    write_compact(esrgan / "2x-tiny-compact.safetensors", scale=2)
    write_compact(comfy / "4x-Other.pth", scale=4, seed=1)
    write_unknown_architecture(esrgan / "mystery.safetensors")
    return UpscalerService(UpscalerCatalog([esrgan, comfy]))


def axis_values(upscalers: UpscalerService, text: str) -> list:
    choices = AxisChoices(hires_upscalers=tuple(hires_upscaler_names(upscalers)))
    return resolve_axis_values(default_axis_registry().get("Hires upscaler"), text, "X axis", choices)


def test_hires_list_is_latent_modes_then_filters_then_usable_models_by_name(upscalers):
    assert hires_upscaler_names(upscalers) == [*BUILT_IN, "2x-tiny-compact", "4x-Other"]
    assert hires_upscaler_names(None) == BUILT_IN


def test_the_axis_accepts_model_upscalers_in_any_case_and_turns_hires_fix_on(upscalers):
    option = default_axis_registry().get("Hires upscaler")
    assert list(option.choices(AxisChoices(hires_upscalers=tuple(hires_upscaler_names(upscalers))))) == \
        [*BUILT_IN, "2x-tiny-compact", "4x-Other"]
    values = axis_values(upscalers, "2X-TINY-COMPACT, 4x-other, Latent")
    assert values == ["2x-tiny-compact", "4x-Other", "Latent"]
    request = option.apply(Txt2ImgRequest(prompt="a cat"), values[0])
    assert request.hr_upscaler == "2x-tiny-compact" and request.enable_hr


@pytest.mark.parametrize("name", ["mystery", "not-installed"])
def test_the_axis_refuses_an_unusable_or_missing_upscaler_naming_the_usable_ones(upscalers, name):
    with pytest.raises(AxisValueError) as refused:
        axis_values(upscalers, f"Latent, {name}")
    assert name in str(refused.value) and "2x-tiny-compact" in str(refused.value)


def test_a_rescan_puts_a_new_model_file_on_the_axis(tmp_path):
    service = UpscalerService(UpscalerCatalog([tmp_path]))
    assert hires_upscaler_names(service) == BUILT_IN
    write_compact(tmp_path / "fresh-2x.pth")
    service.refresh()
    assert axis_values(service, "fresh-2x") == ["fresh-2x"]


def test_pasting_parameters_with_a_model_upscaler_selects_it_and_an_unknown_one_is_left_alone(upscalers):
    table = tab_fields({"hr_upscaler": ("Hires upscaler", pasted_hires_upscaler(upscalers))})
    pasted = txt2img_values_from_infotext(INFOTEXT + "2x-tiny-compact", table)
    assert pasted["enable_hr"] is True
    assert pasted["hr_upscaler"]["value"] == "2x-tiny-compact"
    assert pasted["hr_upscaler"]["choices"] == [*BUILT_IN, "2x-tiny-compact", "4x-Other"]
    with pytest.warns(UserWarning, match="'4x-UltraSharp' from the pasted parameters is not installed"):
        assert "hr_upscaler" not in txt2img_values_from_infotext(INFOTEXT + "4x-UltraSharp", table)
