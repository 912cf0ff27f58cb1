"""Model upscalers over A1111's API against one real `launch.py --api` server whose data folder holds tiny
random ESRGAN / Real-ESRGAN files, an unknown architecture and a pickle that needs code: the upscaler list,
the Extras with a model, hires fix and img2img's resize with one, and the refusals."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests import upscaler_files as files
from tests.conftest import start_server, stop_server, with_default_model
from webui.generation.infotext import parse_infotext, read_infotext

ESRGAN = "4x-tiny-esrgan"
REAL_ESRGAN = "RealESRGAN_tiny_x2"
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("upscalers"), default_model_folder)
    esrgan, real = data / "models" / "ESRGAN", data / "models" / "RealESRGAN"
    esrgan.mkdir(parents=True)
    real.mkdir(parents=True)
    files.write_esrgan_old(esrgan / f"{ESRGAN}.pth", scale=4)
    files.write_realesrgan(real / f"{REAL_ESRGAN}.pth", scale=2)
    files.write_unknown_architecture(esrgan / "mystery.safetensors")
    files.write_code_pickle(esrgan / "runs-code.pth", data / "marker.txt")
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def api(server, route: str) -> str:
    return f"{server.url}/sdapi/v1/{route}"


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def picture(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_the_upscaler_list_has_a1111s_fields_for_every_entry(server):
    listed = requests.get(api(server, "upscalers"), timeout=60).json()
    assert [item["name"] for item in listed][:3] == ["None", "Lanczos", "Nearest"]
    by_name = {item["name"]: item for item in listed}
    assert set(by_name[ESRGAN]) >= {"name", "model_name", "model_path", "model_url", "scale"}
    assert by_name[ESRGAN]["model_name"] == "ESRGAN" and by_name[ESRGAN]["scale"] == 4
    assert by_name[ESRGAN]["model_path"].endswith(f"models/ESRGAN/{ESRGAN}.pth") and by_name[ESRGAN]["usable"]
    assert by_name[REAL_ESRGAN]["scale"] == 2 and by_name[REAL_ESRGAN]["usable"]
    assert by_name["Lanczos"]["model_path"] is None and by_name["Lanczos"]["scale"] == 1
    assert not by_name["mystery"]["usable"] and "not recognised by spandrel" in by_name["mystery"]["reason"]
    assert not by_name["runs-code"]["usable"] and "arbitrary code" in by_name["runs-code"]["reason"]
    assert not (server.data_dir / "marker.txt").exists()


def test_extras_upscale_with_a_model_at_its_scale(server):
    source = picture(24, 16)
    response = requests.post(api(server, "extra-single-image"),
                             json={"image": encode(source), "upscaler_1": ESRGAN, "upscaling_resize": 4}, timeout=300)
    assert response.status_code == 200, response.text
    result = decode(response.json()["image"]).convert("RGB")
    assert result.size == (96, 64)
    lanczos = np.asarray(source.resize((96, 64), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(result, dtype=float) - lanczos).mean() > 5
    assert f"Postprocess upscaler: {ESRGAN}" in response.json()["html_info"]

    batch = requests.post(api(server, "extra-batch-images"), timeout=300, json={
        "upscaler_1": REAL_ESRGAN, "upscaling_resize": 2, "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5,
        "imageList": [{"data": encode(source), "name": "a"}, {"data": encode(picture(10, 10)), "name": "b"}]})
    assert batch.status_code == 200, batch.text
    assert [decode(item).size for item in batch.json()["images"]] == [(48, 32), (20, 20)]
    assert "Postprocess upscaler 2: Lanczos" in batch.json()["html_info"]


@pytest.mark.parametrize("body,reason", [
    ({"upscaler_1": "runs-code"}, "arbitrary code"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "mystery", "extras_upscaler_2_visibility": 0.5}, "not recognised"),
    ({"upscaler_1": "4x-UltraSharp"}, "unknown"),
])
def test_an_unusable_or_unknown_upscaler_is_refused_naming_the_choices(server, body, reason):
    response = requests.post(api(server, "extra-single-image"), json={"image": encode(picture(8, 8)), **body}, timeout=60)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert reason in detail and ESRGAN in detail and "Lanczos" in detail
    name = body.get("upscaler_2", body["upscaler_1"])
    hires = requests.post(api(server, "txt2img"), timeout=60, json={**SMALL, "enable_hr": True, "hr_upscaler": name})
    assert hires.status_code == 422 and reason in hires.json()["detail"] and ESRGAN in hires.json()["detail"]


def test_hires_fix_with_an_esrgan_upscaler(server):
    response = requests.post(api(server, "txt2img"), timeout=600, json={
        **SMALL, "enable_hr": True, "hr_upscaler": ESRGAN, "hr_scale": 2, "hr_second_pass_steps": 1,
        "denoising_strength": 0.3})
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    assert image.size == (128, 128)
    assert parse_infotext(read_infotext(image))["Hires upscaler"] == ESRGAN


def test_img2img_resize_uses_the_upscaler_for_img2img_option(server):
    source = picture(32, 32)
    body = {**SMALL, "init_images": [encode(source)], "denoising_strength": 0.0}
    modelled = requests.post(api(server, "img2img"), timeout=300,
                             json={**body, "override_settings": {"upscaler_for_img2img": ESRGAN}})
    plain = requests.post(api(server, "img2img"), timeout=300, json=body)
    assert modelled.status_code == 200 and plain.status_code == 200, (modelled.text, plain.text)
    by_model = np.asarray(decode(modelled.json()["images"][0]).convert("RGB"), dtype=float)
    by_lanczos = np.asarray(decode(plain.json()["images"][0]).convert("RGB"), dtype=float)
    assert by_model.shape == by_lanczos.shape == (64, 64, 3)
    assert np.abs(by_model - by_lanczos).mean() > 5
    refused = requests.post(api(server, "img2img"), timeout=60,
                            json={**body, "override_settings": {"upscaler_for_img2img": "mystery"}})
    assert refused.status_code == 422 and "not recognised" in refused.json()["detail"]


def test_tile_options_are_read_and_checked(server):
    assert requests.get(api(server, "options"), timeout=60).json()["ESRGAN_tile"] == 192
    refused = requests.post(api(server, "options"), json={"ESRGAN_tile": 64, "ESRGAN_tile_overlap": 40}, timeout=60)
    assert refused.status_code == 422 and "ESRGAN_tile_overlap" in refused.json()["detail"]
    assert requests.post(api(server, "options"), json={"ESRGAN_tile": 32}, timeout=60).status_code == 200
    tiled = requests.post(api(server, "extra-single-image"), timeout=300,
                          json={"image": encode(picture(40, 40)), "upscaler_1": ESRGAN, "upscaling_resize": 4})
    assert tiled.status_code == 200 and decode(tiled.json()["image"]).size == (160, 160)
    assert requests.get(api(server, "options"), timeout=60).json()["ESRGAN_tile"] == 32


def wait_for_job(server, job_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = requests.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=60).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_an_extras_job_through_the_job_api_serves_its_images(server):
    first, second = picture(24, 16), picture(12, 12).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    body = {"upscaler_1": ESRGAN, "upscaling_resize": 4,
            "imageList": [{"data": encode(first), "name": "first"}, {"data": encode(second), "name": "second"}]}
    answer = requests.post(f"{server.url}/api/v1/jobs", json={"kind": "extras", "request": body}, timeout=60)
    assert answer.status_code == 202, answer.text
    assert answer.json()["kind"] == "extras" and answer.json()["state"] in ("queued", "running", "done")
    job = wait_for_job(server, answer.json()["id"])
    assert job["state"] == "done", job
    assert len(job["images"]) == 2 and len(job["infotexts"]) == 2
    served = [Image.open(io.BytesIO(requests.get(server.url + url, timeout=60).content)) for url in job["images"]]
    assert [image.size for image in served] == [(96, 64), (48, 48)]
    assert "Postprocess upscale by: 4" in read_infotext(served[0]) and ESRGAN in read_infotext(served[0])
    lanczos = np.asarray(first.resize((96, 64), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(served[0].convert("RGB"), dtype=float) - lanczos).mean() > 5  # the model ran
    saved = sorted(path.name for path in (server.data_dir / "outputs" / "extras-images").iterdir())
    assert any(name.endswith("-first.png") for name in saved) and any(name.endswith("-second.png") for name in saved)
    # the history lists extras jobs, those of the A1111 route (which saves nothing) among them
    assert requests.post(api(server, "extra-single-image"), timeout=300,
                         json={"image": encode(second), "upscaler_1": "Lanczos"}).status_code == 200
    listed = requests.get(f"{server.url}/api/v1/jobs", params={"kind": "extras"}, timeout=60)
    assert listed.status_code == 200, listed.text
    assert sorted(len(item["images"]) for item in listed.json()["jobs"])[::len(listed.json()["jobs"]) - 1] == [0, 2]
    assert requests.get(server.url + job["images"][0][:-1] + "2", timeout=60).status_code == 404


@pytest.mark.parametrize("request_body, reason", [
    ({"upscaler_1": "Lanczos"}, "needs `image`"),
    ({"upscaler_1": "no-such-upscaler", "image": "x"}, "no-such-upscaler"),
    ({"upscaler_1": "Lanczos", "image": "***"}, "request.image"),
])
def test_a_bad_extras_job_is_refused_with_the_reason(server, request_body, reason):
    answer = requests.post(f"{server.url}/api/v1/jobs", json={"kind": "extras", "request": request_body}, timeout=60)
    assert answer.status_code in (413, 422), answer.text
    assert reason in answer.json()["detail"]


def test_the_upscaler_refresh_buttons_refresh_the_img2img_upscaler_setting_too(server):
    """A model dropped in after the page loaded is offered by Settings' "Upscaler for img2img" once either 🔄
    (the Extras one, the checkpoint one) rescanned, as it is by the hires and Extras lists."""
    for button, name in (("from_extras_refresh", "2x-dropped-extras"), ("from_checkpoint_refresh", "2x-dropped-ckpt")):
        files.write_realesrgan(server.data_dir / "models" / "RealESRGAN" / f"{name}.pth", scale=2)
        started = requests.post(f"{server.url}/gradio_api/call/{button}", json={"data": ["Latent", "None", "None"]},
                                timeout=60)
        assert started.status_code == 200, started.text
        stream = requests.get(f"{server.url}/gradio_api/call/{button}/{started.json()['event_id']}", timeout=300).text
        event, data = re.findall(r"event: (\w+)\ndata: (.*)", stream)[-1]
        assert event == "complete", stream
        hires, first, second, setting = json.loads(data)
        assert [name in [choice[0] for choice in update["choices"]] for update in (hires, first, second, setting)] \
            == [True] * 4
        assert [choice[0] for choice in setting["choices"]] == [choice[0] for choice in first["choices"]]
        assert "value" not in setting  # the stored setting is shown as it is, never changed by a refresh
