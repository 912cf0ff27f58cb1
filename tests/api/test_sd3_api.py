"""SD3.5 through the A1111 API: a script picks an SD3.5 checkpoint per request with `override_settings`, as it
would on A1111/Forge, on a server whose selected model is the default SD1-architecture one."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
import torch
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, write_single_file
from webui.generation.infotext import parse_infotext, read_infotext

SD3_NAME = "sd3.5_medium_incl_clips_t5xxl"
SMALL = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 4.5}


@pytest.fixture(scope="module")
def sd3_server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("sd3-server"), default_model_folder)
    write_single_file(data / "models" / "Stable-diffusion" / f"{SD3_NAME}.safetensors",
                      tiny_sd3_modules(MEDIUM, seed=5), dtype=torch.float32)
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def post(server, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)


def test_txt2img_with_an_sd3_checkpoint_chosen_per_request(sd3_server):
    body = {**SMALL, "prompt": "a (red:1.2) car", "negative_prompt": "blurry", "seed": 21, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": SD3_NAME}}
    response = post(sd3_server, body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)
    params = parse_infotext(read_infotext(image))
    assert (params["Model"], params["Sampler"], params["Seed"]) == (SD3_NAME, "Euler", "21")
    info = json.loads(response.json()["info"])
    assert info["sd_model_name"] == SD3_NAME and info["warnings"] == []

    refused = post(sd3_server, {**body, "sampler_name": "DDIM"})
    assert refused.status_code == 422, refused.text
    detail = json.dumps(refused.json())
    assert "DDIM" in detail and "Euler, Heun, DPM++ 2M, DPM++ 2M SDE, UniPC" in detail
    assert "Traceback" not in refused.text
    # The A1111 sampler list stays global; the default model still takes DDIM, and the server keeps serving.
    samplers = {s["name"] for s in requests.get(f"{sd3_server.url}/sdapi/v1/samplers", timeout=30).json()}
    assert "DDIM" in samplers
    assert post(sd3_server, {**SMALL, "prompt": "a circle", "sampler_name": "DDIM"}).status_code == 200


def sampler_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return parse_infotext(read_infotext(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))))["Sampler"]


def test_a_body_without_a_sampler_gets_the_model_familys_default(sd3_server):
    """A1111 clients often send no sampler: SD3.5 then samples with Euler (DPM++ 2M cannot start img2img from a
    noised image on a flow model), the SD1 default model with DPM++ 2M as before."""
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source, format="PNG")
    img2img = {**SMALL, "prompt": "a car", "seed": 3, "denoising_strength": 0.6,
               "init_images": [base64.b64encode(source.getvalue()).decode()],
               "override_settings": {"sd_model_checkpoint": SD3_NAME}}
    assert sampler_of(requests.post(f"{sd3_server.url}/sdapi/v1/img2img", json=img2img, timeout=300)) == "Euler"
    assert sampler_of(post(sd3_server, {**SMALL, "prompt": "a circle"})) == "DPM++ 2M"


def test_sides_an_sd3_model_cannot_take_are_refused_up_front_and_the_hires_target_is_rounded(sd3_server):
    """SD3.5 reads 2x2 patches of the 8x-downscaled latents: sides must be multiples of 16. 72 (a multiple of 8)
    is a 422 naming 16 before anything is queued; the SD1 default model still takes it. A hires scale whose
    target is not a multiple of 16 (64 x 1.375 = 88) is rounded down to 80, as A1111 floors its target."""
    body = {**SMALL, "prompt": "a car", "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": SD3_NAME}}
    refused = post(sd3_server, {**body, "width": 72})
    assert refused.status_code == 422, refused.text
    assert "width 72 is not a multiple of 16 for SD3.5 Medium (try 64 or 80)" in json.dumps(refused.json())
    assert post(sd3_server, {**SMALL, "prompt": "a circle", "width": 72}).status_code == 200

    hires = post(sd3_server, {**body, "enable_hr": True, "hr_scale": 1.375, "hr_upscaler": "Latent",
                              "hr_second_pass_steps": 1, "denoising_strength": 0.5})
    assert hires.status_code == 200, hires.text
    assert Image.open(io.BytesIO(base64.b64decode(hires.json()["images"][0]))).size == (80, 80)
