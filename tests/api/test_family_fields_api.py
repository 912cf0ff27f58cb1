"""Forge's per-family fields over HTTP: `distilled_cfg_scale`, `hr_distilled_cfg` and `shift` in A1111-style
bodies, their validation, the infotext of a model that does not use them, and the X/Y/Z axes that are only
accepted for checkpoints whose family uses the setting. One server: the default SD1 model and a tiny SD3.5
Medium single file and a tiny Flux.1 dev "all in one" file of the exact architectures (tests/support/)."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
import requests
import torch
from PIL import Image

from tests.conftest import start_server, stop_server
from tests.support.flux_files import tiny_flux_modules, write_all_in_one
from tests.support.sd3_files import tiny_sd3_modules, write_single_file
from webui.generation.infotext import parse_infotext, read_infotext

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 9}
SD3_FILE = "tiny-sd3.5-medium"
FLUX_FILE = "tiny-flux1-dev-aio"


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = tmp_path_factory.mktemp("family-fields")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    write_single_file(checkpoints / f"{SD3_FILE}.safetensors", tiny_sd3_modules(), dtype=torch.float32)
    write_all_in_one(checkpoints / f"{FLUX_FILE}.safetensors", tiny_flux_modules())
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def post(server, route: str, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=300)


def test_the_fields_are_accepted_echoed_and_left_out_of_an_sd1_infotext(served):
    response = post(served, "txt2img", {**SMALL, "prompt": "a red circle", "distilled_cfg_scale": 2.5,
                                        "shift": 2.0, "hr_distilled_cfg": 1.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["distilled_cfg_scale"] == 2.5 and body["parameters"]["shift"] == 2.0
    assert body["parameters"]["hr_distilled_cfg"] == 1.5
    infotext = read_infotext(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))
    params = parse_infotext(infotext)
    assert params["Model"] == "sd-studio-toy" and params["Seed"] == "9"
    # SD1 takes neither distilled guidance nor a flow shift: Forge writes neither for it, nor do we.
    assert "Distilled CFG Scale" not in params and "Shift" not in params


@pytest.mark.parametrize("changes,reason", [
    ({"distilled_cfg_scale": 31}, "distilled_cfg_scale 31"),
    ({"distilled_cfg_scale": "strong"}, "distilled_cfg_scale"),
    ({"shift": 0}, "shift 0"),
    ({"shift": 21.5}, "shift 21.5"),
    ({"enable_hr": True, "hr_distilled_cfg": -1}, "hr_distilled_cfg -1"),
])
def test_out_of_range_values_get_a_422_naming_the_field(served, changes, reason):
    response = post(served, "txt2img", {**SMALL, **changes})
    assert response.status_code == 422, response.text
    assert reason in str(response.json()["detail"])
    if "enable_hr" not in changes:  # img2img has no hires pass
        response = post(served, "img2img", {**SMALL, **changes, "init_images": [_png_b64()]})
        assert response.status_code == 422 and reason in str(response.json()["detail"])


def test_a_shift_axis_on_an_sd1_model_is_refused_with_the_reason(served):
    response = post(served, "txt2img", {**SMALL, "script_name": "x/y/z plot", "script_args": ["Shift", "2, 4", None]})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "Shift does not apply to sd-studio-toy" in detail and "(SD1.x)" in detail
    assert "only flow-matching models have it" in detail
    response = post(served, "txt2img", {**SMALL, "script_name": "x/y/z plot",
                                        "script_args": ["Distilled CFG Scale", "2, 4", None]})
    assert response.status_code == 422 and "Distilled CFG Scale does not apply" in response.json()["detail"]
    assert requests.get(f"{served.url}/sdapi/v1/sd-models", timeout=30).status_code == 200  # still serving


def test_a_shift_axis_on_a_flow_model_is_planned_but_distilled_cfg_is_not(served):
    jobs = f"{served.url}/api/v1/jobs"
    on_sd3 = {**SMALL, "prompt": "a red circle", "override_settings": {"sd_model_checkpoint": SD3_FILE}}
    refused = requests.post(jobs, json={"kind": "xyz-plot", "request": {
        **on_sd3, "x": {"type": "Distilled CFG Scale", "values": "2, 4"}}}, timeout=60)
    assert refused.status_code == 422 and "X axis: Distilled CFG Scale does not apply to tiny-sd3.5-medium (SD3.5)" in refused.json()["detail"], refused.text
    accepted = requests.post(jobs, json={"kind": "xyz-plot", "request": {
        **on_sd3, "x": {"type": "Shift", "values": "2, 4"}}}, timeout=60)
    assert accepted.status_code == 202, accepted.text
    requests.delete(f"{jobs}/{accepted.json()['id']}", timeout=60)  # its cells need the SD3 engine (branch sd3gen)


def test_on_flux_distilled_cfg_is_planned_and_clip_skip_refused(served):
    jobs = f"{served.url}/api/v1/jobs"
    on_flux = {**SMALL, "prompt": "a red circle", "override_settings": {"sd_model_checkpoint": FLUX_FILE}}
    refused = requests.post(jobs, json={"kind": "xyz-plot", "request": {
        **on_flux, "x": {"type": "Clip skip", "values": "1, 2"}}}, timeout=60)
    assert refused.status_code == 422, refused.text
    assert "Clip skip does not apply to tiny-flux1-dev-aio (Flux.1)" in refused.json()["detail"]
    accepted = requests.post(jobs, json={"kind": "xyz-plot", "request": {
        **on_flux, "x": {"type": "Distilled CFG Scale", "values": "2, 4"}}}, timeout=60)
    assert accepted.status_code == 202, accepted.text
    requests.delete(f"{jobs}/{accepted.json()['id']}", timeout=60)


def test_a_size_axis_with_sides_flux_cannot_take_is_refused_naming_the_cell(served):
    """Flux reads 2x2 patches of the 8x-downscaled latents: a Size axis value of 72x64 is refused before the plot
    runs, naming the cell and the multiple (the first cell, 64x64, passes)."""
    on_flux = {**SMALL, "prompt": "a red circle", "override_settings": {"sd_model_checkpoint": FLUX_FILE}}
    refused = requests.post(f"{served.url}/api/v1/jobs", json={"kind": "xyz-plot", "request": {
        **on_flux, "x": {"type": "Size", "values": "64x64, 72x64"}}}, timeout=60)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "72x64" in detail and "width 72 is not a multiple of 16 for Flux.1 dev" in detail, detail


def test_sd_models_keeps_a1111s_fields_and_lists_every_family(served):
    models = requests.get(f"{served.url}/sdapi/v1/sd-models", timeout=30).json()
    assert {model["model_name"] for model in models} == {"sd-studio-toy", SD3_FILE, FLUX_FILE}
    for model in models:
        assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
