"""Flux ControlNets over HTTP, on the session's `launch.py --api` server: a Flux checkpoint and a Flux union
ControlNet dropped into the data folder are listed, an sd-webui-controlnet style body
(`alwayson_scripts.controlnet.args`, its `union_control_type`) generates with them on the Flux checkpoint
(`override_settings.sd_model_checkpoint`), and units that cannot work get a 422 with the reason."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm
from tests.support.flux_controlnet_files import tiny_flux_controlnet, write_weights_file
from tests.support.flux_files import DEV, tiny_flux_modules, write_all_in_one

CHECKPOINT = "flux1-dev-cn-aio"
UNION = "flux-union-pro-api"
SD1_CONTROLNET = "control_sd15_canny_beside_flux"


@pytest.fixture(scope="module")
def url(server):
    """The shared server with this module's files added, and taken away again afterwards (other modules list
    the server's checkpoints)."""
    models = server.data_dir / "models"
    added = [write_all_in_one(models / "Stable-diffusion" / f"{CHECKPOINT}.safetensors", tiny_flux_modules(DEV, 1)),
             write_weights_file(models / "ControlNet" / f"{UNION}.safetensors", tiny_flux_controlnet(seed=4, union=True)),
             write_ldm(models / "ControlNet" / f"{SD1_CONTROLNET}.safetensors", tiny_controlnet(sd1_unet_config(), 3))]
    assert requests.post(server.url + "/sdapi/v1/refresh-checkpoints", json={}, timeout=60).status_code == 200
    yield server.url
    for path in added:
        path.unlink()
    assert requests.post(server.url + "/sdapi/v1/refresh-checkpoints", json={}, timeout=60).status_code == 200


@pytest.fixture(scope="module")
def control_image() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def body(control_image: str, **unit_changes) -> dict:
    unit = {"enabled": True, "input_image": control_image, "module": "none", "model": UNION, "weight": 1.0,
            "resize_mode": 1, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
            "union_control_type": "canny", **unit_changes}
    return {"prompt": "a white square", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 7,
            "override_settings": {"sd_model_checkpoint": CHECKPOINT},
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}


def image_of(answer: requests.Response) -> np.ndarray:
    picture = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    return np.asarray(picture.convert("RGB"), dtype=np.int16)


def test_a_flux_union_controlnet_unit_generates_on_a_flux_checkpoint(url, control_image):
    listed = requests.get(url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert any(title.startswith(f"{UNION} [") for title in listed)
    zero = requests.post(url + "/sdapi/v1/txt2img", json=body(control_image, weight=0), timeout=300)
    controlled = requests.post(url + "/sdapi/v1/txt2img", json=body(control_image), timeout=300)
    assert zero.status_code == 200 and controlled.status_code == 200, zero.text + controlled.text
    assert np.abs(image_of(controlled) - image_of(zero)).mean() > 1.0
    infotext = json.loads(controlled.json()["info"])["infotexts"][0]
    assert f"Model: {CHECKPOINT}" in infotext
    assert f'ControlNet 0: "Module: none, Model: {UNION}, Weight: 1,' in infotext
    assert "Union Control Type: canny" in infotext


@pytest.mark.parametrize("unit, reason", [
    ({"union_control_type": None}, "canny (0), tile (1), depth (2)"),
    ({"union_control_type": "sketchy"}, "use one of canny (0)"),
    ({"control_mode": 1}, "use 'Balanced'"),
    ({"model": SD1_CONTROLNET}, "is for SD1.x but the checkpoint"),
])
def test_flux_units_that_cannot_work_get_a_422_with_the_reason(url, control_image, unit, reason):
    answer = requests.post(url + "/sdapi/v1/txt2img", json=body(control_image, **unit), timeout=300)
    assert answer.status_code == 422, answer.text
    assert reason in answer.json()["detail"], answer.text
    assert requests.get(url + "/controlnet/model_list", timeout=30).status_code == 200
