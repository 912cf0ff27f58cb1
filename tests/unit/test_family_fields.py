"""Per-family request fields: Forge's "Distilled CFG Scale" and the flow models' "Shift" (issue #17).

Which family uses which setting is asked of the family object; these tests pin the rule for every family
(SD1/SD2/SDXL keep what they had, SD3.5 gains Shift, Flux.1 loses clip skip and gains Distilled CFG Scale and
Shift), the request validation, the infotext keys as Forge writes them and their paste-back.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from safetensors.torch import save_file

from webui.generation.family_fields import (
    FAMILY_FIELDS, family_uses, sampling_shift, shown_fields, unused_field_message,
)
from webui.generation.infotext import create_infotext, parse_infotext
from webui.generation.request_codec import decode_request, encode_request
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.generation.txt2img import family_parameters, hires_family_parameters
from webui.models.catalog import CheckpointRecord
from webui.models.checkpoint_files import CheckpointReadError
from webui.models.checkpoint_loading import scheduler_config_of
from webui.models.families import FLUX, SD1, SD2, SD3, SDXL
from webui.models.ldm_conversion import Architecture
from webui.ui.infotext_fields import txt2img_values_from_infotext
from webui.xyz.axes import default_axis_registry

# An image Forge made with Flux.1 dev (its infotext line, as Forge writes it).
FORGE_FLUX_INFOTEXT = (
    "a lighthouse at dusk\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, "
    "Size: 896x1152, Model hash: 7d3d6c6b4c, Model: flux1-dev-bnb-nf4-v2, Denoising strength: 0.7, "
    "Hires upscale: 1.5, Hires upscaler: Latent, Hires Distilled CFG Scale: 2.8, "
    "Version: f2.0.1v1.10.1-previous-313-g8a042934"
)


@pytest.mark.parametrize("family", [SD1, SD2, SDXL])
def test_the_sd_families_keep_their_controls_and_gain_none(family):
    assert shown_fields(family) == {"clip_skip": True, "distilled_cfg_scale": False, "hr_distilled_cfg": False,
                                    "shift": False}
    assert sampling_shift(family, None, {"shift": 3.0}) is None


def test_sd3_shows_shift_and_keeps_clip_skip():
    assert shown_fields(SD3) == {"clip_skip": True, "distilled_cfg_scale": False, "hr_distilled_cfg": False,
                                 "shift": True}


def sd3_record(path, file_format: str, architecture: bool = True) -> CheckpointRecord:
    return CheckpointRecord(name=path.stem, path=path, format=file_format, error=None if architecture else "bad",
                            architecture=Architecture("sd3", 16, "SD3.5 Medium", "sd3.5-medium") if architecture
                            else None)


def test_a_checkpoints_default_shift_is_the_scheduler_config_it_loads_with(tmp_path):
    shipped = json.loads((SD3.config_folder / "scheduler" / "scheduler_config.json").read_text())
    single = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2)}, str(single))
    assert sampling_shift(SD3, None, scheduler_config_of(sd3_record(single, "safetensors"))) == shipped["shift"] == 3.0
    folder = tmp_path / "flowy"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": 1.75}))
    assert sampling_shift(SD3, None, scheduler_config_of(sd3_record(folder, "diffusers"))) == 1.75
    assert scheduler_config_of(sd3_record(tmp_path / "bare", "diffusers"))["shift"] == 3.0  # no config: shipped
    with pytest.raises(CheckpointReadError, match="bad"):
        scheduler_config_of(sd3_record(single, "safetensors", architecture=False))


def test_flux_hides_clip_skip_and_shows_distilled_cfg_and_shift():
    assert shown_fields(FLUX) == {"clip_skip": False, "distilled_cfg_scale": True, "hr_distilled_cfg": True,
                                  "shift": True}
    assert family_uses(FLUX, "steps") and family_uses(SD1, "cfg_scale")  # fields every family has


def test_flux_dev_has_no_fixed_shift_and_schnell_samples_at_one(tmp_path):
    from tests.support.flux_files import SCHNELL, tiny_flux_modules, write_all_in_one, write_transformer_file

    dev_file = write_transformer_file(tmp_path / "flux1-dev.safetensors", tiny_flux_modules(), prefix="")
    schnell_file = write_all_in_one(tmp_path / "flux1-schnell-aio.safetensors", tiny_flux_modules(SCHNELL))

    def record(path):
        return CheckpointRecord(name=path.stem, path=path, format="safetensors",
                                architecture=Architecture("flux", 64, "Flux.1", None))

    # dev's scheduler shifts by image size (the Shift slider's 0); a request's shift still applies.
    assert sampling_shift(FLUX, None, scheduler_config_of(record(dev_file))) is None
    assert sampling_shift(FLUX, 2.0, scheduler_config_of(record(dev_file))) == 2.0
    assert sampling_shift(FLUX, None, scheduler_config_of(record(schnell_file))) == 1.0
    request = Txt2ImgRequest(distilled_cfg_scale=2.5, enable_hr=True, hr_distilled_cfg=3.0)
    assert family_parameters(request, FLUX, scheduler_config_of(record(dev_file))) == {
        "Distilled CFG Scale": 2.5, "Shift": None}
    assert hires_family_parameters(request, FLUX) == {"Hires Distilled CFG Scale": 3.0}


def test_request_defaults_follow_forge_and_validation_names_the_field():
    request = Txt2ImgRequest().validate()
    assert request.distilled_cfg_scale == 3.5 and request.hr_distilled_cfg == 3.5 and request.shift is None
    assert Txt2ImgRequest(distilled_cfg_scale=0.0, shift=0.1).validate().shift == 0.1
    for changes, field in (({"distilled_cfg_scale": 30.5}, "distilled_cfg_scale"),
                           ({"distilled_cfg_scale": math.nan}, "distilled_cfg_scale"),
                           ({"distilled_cfg_scale": "3.5"}, "distilled_cfg_scale"),
                           ({"shift": 0.0}, "shift"), ({"shift": 25.0}, "shift"), ({"shift": math.inf}, "shift"),
                           ({"enable_hr": True, "hr_distilled_cfg": -1.0}, "hr_distilled_cfg")):
        with pytest.raises(RequestError, match=field):
            Txt2ImgRequest(**changes).validate()
    # Without hires fix its distilled scale is not used, so it is not checked (A1111's rule for hires fields).
    assert Txt2ImgRequest(hr_distilled_cfg=-1.0).validate().hr_distilled_cfg == -1.0
    with pytest.raises(RequestError, match="shift"):
        Img2ImgRequest(init_images=("image",), shift=-2.0).validate()


def test_the_new_fields_survive_a_queued_job_being_stored(tmp_path):
    request = Txt2ImgRequest(distilled_cfg_scale=2.5, shift=4.0, hr_distilled_cfg=1.5)
    assert decode_request(encode_request(request, tmp_path), tmp_path) == request


def test_infotext_keys_are_written_only_for_families_that_use_them():
    request = Txt2ImgRequest(distilled_cfg_scale=2.5, shift=None, enable_hr=True, hr_distilled_cfg=1.5)
    assert family_parameters(request, SD1, {}) == {"Distilled CFG Scale": None, "Shift": None}
    assert hires_family_parameters(request, SDXL) == {"Hires Distilled CFG Scale": None}
    # A flow model without a shift of its own in the request samples with its scheduler config's.
    assert family_parameters(request, SD3, {"shift": 3.0}) == {"Distilled CFG Scale": None, "Shift": 3.0}
    assert family_parameters(request.with_changes(shift=1.15), FLUX, {"shift": 3.0}) == {
        "Distilled CFG Scale": 2.5, "Shift": 1.15}
    assert hires_family_parameters(request, FLUX) == {"Hires Distilled CFG Scale": 1.5}
    assert hires_family_parameters(request.with_changes(enable_hr=False), FLUX) == {
        "Hires Distilled CFG Scale": None}


def test_forges_strings_are_written_and_read_back_exactly():
    request = Txt2ImgRequest(cfg_scale=1.0, distilled_cfg_scale=3.5, shift=3.0)
    line = create_infotext("a lighthouse", "", {"Steps": 20, "CFG scale": 1.0,
                                                **family_parameters(request, FLUX, {}),
                                                "Seed": 42})
    assert line == "a lighthouse\nSteps: 20, CFG scale: 1.0, Distilled CFG Scale: 3.5, Shift: 3.0, Seed: 42"
    values = txt2img_values_from_infotext(line)
    assert values["distilled_cfg_scale"] == 3.5 and values["shift"] == 3.0 and values["cfg_scale"] == 1.0


def test_a_forge_flux_infotext_pastes_into_the_fields():
    parsed = parse_infotext(FORGE_FLUX_INFOTEXT)
    assert parsed["Distilled CFG Scale"] == "3.5" and parsed["Hires Distilled CFG Scale"] == "2.8"
    values = txt2img_values_from_infotext(FORGE_FLUX_INFOTEXT)
    assert values["distilled_cfg_scale"] == 3.5 and values["hr_distilled_cfg"] == 2.8 and values["cfg_scale"] == 1.0
    assert "shift" not in values  # Forge wrote none: the control keeps the model's default
    # An SD1 infotext (no such keys) leaves both controls alone as well.
    sd1_values = txt2img_values_from_infotext("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    assert "distilled_cfg_scale" not in sd1_values and "shift" not in sd1_values


def test_the_xyz_axes_name_the_field_whose_family_rule_applies():
    registry = default_axis_registry()
    assert registry.get("Distilled CFG Scale").request_field == "distilled_cfg_scale"
    assert registry.get("Shift").request_field == "shift"
    assert registry.get("Steps").request_field is None
    for label in ("Distilled CFG Scale", "Shift"):
        assert registry.get(label).request_field in FAMILY_FIELDS
    applied = registry.get("Shift").apply(Txt2ImgRequest(), 2.0)
    assert applied.shift == 2.0


def test_the_refusal_says_what_the_setting_is_and_who_has_it():
    message = unused_field_message(SD1, "shift", "toy [abc]")
    assert message == "Shift does not apply to toy [abc] (SD1.x): only flow-matching models have it"
    assert "Distilled CFG Scale" in unused_field_message(SDXL, "distilled_cfg_scale", "xl")


def test_sampling_shift_prefers_the_request_and_ignores_non_flow_families():
    assert sampling_shift(SD3, 2.0, {"shift": 3.0}) == 2.0
    assert sampling_shift(SD3, None, {"shift": 3}) == 3.0
    assert sampling_shift(SD3, None, {}) is None
    # A resolution-dependent schedule (Flux.1 dev's) has no fixed shift unless the request sets one.
    assert sampling_shift(SD3, None, {"shift": 3.0, "use_dynamic_shifting": True}) is None
    assert sampling_shift(SD3, 2.0, {"shift": 3.0, "use_dynamic_shifting": True}) == 2.0
    assert sampling_shift(SDXL, 2.0, {"shift": 3.0}) is None


def test_the_shift_sliders_zero_means_the_models_own_schedule():
    from webui.ui.generation_controls import shift_of

    assert shift_of(0.0) is None and shift_of(2.5) == 2.5
