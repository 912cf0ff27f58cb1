"""One size rule per family: SD1/SD2/SDXL take multiples of 8 (the VAE), SD3.5 and Flux.1 multiples of 16 (the
VAE's 8 x their 2x2 latent patches). Generation refuses other first-pass sides up front, naming the multiple;
the hires target is rounded down to it; training refuses buckets that break it."""

from __future__ import annotations

import pytest

from webui.generation.requests import RequestError, Txt2ImgRequest, check_size_for_family, hires_size
from webui.models.families import family_named
from webui.training.config import TrainingConfig, TrainingConfigError


def test_each_family_says_its_size_multiple():
    assert {name: family_named(name).size_multiple for name in ("sd1", "sd2", "sdxl", "sd3", "flux")} == {
        "sd1": 8, "sd2": 8, "sdxl": 8, "sd3": 16, "flux": 16}


def test_a_flux_request_of_1000x1000_is_refused_naming_the_multiple_and_sides_that_work():
    flux = family_named("flux")
    request = Txt2ImgRequest(width=1000, height=1000).validate()  # a multiple of 8: the family-free checks pass
    with pytest.raises(RequestError) as caught:
        check_size_for_family(request, flux.size_multiple, "Flux.1 dev")
    assert str(caught.value) == "width 1000 is not a multiple of 16 for Flux.1 dev (try 992 or 1008)"
    check_size_for_family(request.with_changes(width=1008, height=1008), flux.size_multiple, "Flux.1 dev")
    check_size_for_family(request, family_named("sdxl").size_multiple, "SDXL")  # SDXL takes 1000


def test_the_hires_target_is_rounded_down_to_the_familys_multiple():
    request = Txt2ImgRequest(width=512, height=768, enable_hr=True, hr_scale=1.3)  # 665.6 x 998.4
    assert hires_size(request, 8) == (664, 992)
    assert hires_size(request, 16) == (656, 992)
    resized = request.with_changes(hr_resize_x=1000, hr_resize_y=0)  # height follows the aspect ratio: 1500
    assert hires_size(resized, 16) == (992, 1488)


def test_training_refuses_sides_the_family_cannot_take():
    config = TrainingConfig(output_name="x", base_checkpoint="flux", dataset_dir="/data/x", trigger_word="x",
                            resolution=520, enable_bucketing=False).validate()
    with pytest.raises(TrainingConfigError) as caught:
        config.check_family(family_named("flux"))
    assert "multiple of 16" in str(caught.value) and "520" in str(caught.value)
    assert config.check_family(family_named("sd1")) is config
