"""The A1111-compatible API against a real `launch.py --api` server, as a script would use it."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server
from webui.generation.infotext import parse_infotext, read_infotext

SMALL = {"width": 64, "height": 64, "steps": 3}


def post(server, route: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=300, **kwargs)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_returns_images_with_infotext_and_info(server):
    response = post(server, "txt2img", {**SMALL, "prompt": "a (red:1.2) circle", "negative_prompt": "blur",
                                        "seed": 77, "sampler_name": "Euler a", "batch_size": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 3  # grid first, then the two images, as A1111 returns
    image = decode(body["images"][1])
    assert image.size == (64, 64)
    params = parse_infotext(read_infotext(image))
    assert params["Prompt"] == "a (red:1.2) circle" and params["Seed"] == "77" and params["Sampler"] == "Euler a"
    info = json.loads(body["info"])
    assert info["all_seeds"] == [77, 78] and info["sampler_name"] == "Euler a"
    assert body["parameters"]["prompt"] == "a (red:1.2) circle"


def test_same_seed_over_http_is_reproducible(server):
    first = post(server, "txt2img", {**SMALL, "prompt": "x", "seed": 5}).json()["images"][0]
    second = post(server, "txt2img", {**SMALL, "prompt": "x", "seed": 5}).json()["images"][0]
    assert decode(first).tobytes() == decode(second).tobytes()


@pytest.mark.parametrize("body,status,reason", [
    ({"width": 100}, 422, "multiple of 8"),
    ({"steps": 0}, 422, "steps 0"),
    ({"sampler_name": "Nope"}, 422, "Nope"),
    ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, 404, "not found"),
    ({"override_settings": {"sd_model_checkpoint": "broken-download"}}, 422, "cannot be loaded"),
    ({"steps": "many"}, 422, "steps"),
    ({"prompt": "a circle <lora:nowhere:1>"}, 422, "'nowhere' not found"),
])
def test_bad_input_gets_a_4xx_with_a_reason_and_the_server_keeps_serving(server, body, status, reason):
    response = post(server, "txt2img", {**SMALL, **body})
    assert response.status_code == status, response.text
    assert reason in json.dumps(response.json())
    assert "Traceback" not in response.text
    assert post(server, "txt2img", {**SMALL, "prompt": "still alive"}).status_code == 200


def test_model_listing_options_and_broken_model(server):
    models = requests.get(f"{server.url}/sdapi/v1/sd-models", timeout=30).json()
    assert [m["model_name"] for m in models] == ["sd-studio-toy"]
    refreshed = requests.post(f"{server.url}/sdapi/v1/refresh-checkpoints", timeout=30).json()
    assert "broken-download" in refreshed["unusable"]
    response = post(server, "options", {"sd_model_checkpoint": "broken-download"})
    assert response.status_code == 422 and "broken-download" in response.text
    chosen = post(server, "options", {"sd_model_checkpoint": "sd-studio-toy"}).json()["sd_model_checkpoint"]
    assert chosen.startswith("sd-studio-toy [") and len(chosen.split("[")[1].rstrip("]")) == 10
    assert requests.get(f"{server.url}/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"] == chosen


def test_samplers_schedulers_and_png_info(server):
    samplers = {s["name"] for s in requests.get(f"{server.url}/sdapi/v1/samplers", timeout=30).json()}
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "Heun", "LMS",
            "DDIM", "PLMS", "UniPC", "LCM"} <= samplers
    schedulers = {s["name"] for s in requests.get(f"{server.url}/sdapi/v1/schedulers", timeout=30).json()}
    assert {"Automatic", "Karras", "Exponential", "SGM Uniform", "Uniform"} <= schedulers
    image_b64 = post(server, "txt2img", {**SMALL, "prompt": "png info check", "seed": 9}).json()["images"][0]
    info = post(server, "png-info", {"image": image_b64}).json()
    assert info["parameters"]["Prompt"] == "png info check" and info["parameters"]["Seed"] == "9"
    not_an_image = post(server, "png-info", {"image": base64.b64encode(b"hello").decode()})
    assert not_an_image.status_code == 422 and "not an image" in not_an_image.text


def test_progress_and_interrupt_during_a_long_request(server):
    results: dict = {}

    def long_request():
        results["response"] = post(server, "txt2img", {**SMALL, "steps": 150, "n_iter": 4, "prompt": "long"})

    thread = threading.Thread(target=long_request)
    thread.start()
    progress = {}
    for _ in range(600):
        progress = requests.get(f"{server.url}/sdapi/v1/progress", timeout=30).json()
        if progress["state"].get("sampling_step", 0) >= 2:
            break
        threading.Event().wait(0.05)
    assert progress["state"]["sampling_steps"] == 150 and 0 < progress["progress"] < 1
    assert requests.post(f"{server.url}/sdapi/v1/interrupt", timeout=30).json()["interrupted"] is True
    thread.join(300)
    body = results["response"].json()
    assert json.loads(body["info"])["interrupted"] is True
    assert 1 <= len(body["images"]) < 5


def test_auth_covers_ui_and_api(tmp_path, default_model_folder):
    import shutil

    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    secured = start_server(tmp_path, "--api", "--auth", "alice:s3cret")
    try:
        assert requests.get(f"{secured.url}/sdapi/v1/sd-models", timeout=30).status_code == 401
        assert requests.get(f"{secured.url}/sdapi/v1/sd-models", auth=("alice", "wrong"), timeout=30).status_code == 401
        assert requests.get(f"{secured.url}/sdapi/v1/sd-models", auth=("alice", "s3cret"), timeout=30).status_code == 200
        flags = requests.get(f"{secured.url}/sdapi/v1/cmd-flags", auth=("alice", "s3cret"), timeout=30).text
        assert "s3cret" not in flags
        # The gradio app itself asks for a login; its config does not leak the UI.
        page = requests.get(secured.url + "/", timeout=30).text
        assert "txt2img_prompt" not in page
        assert requests.get(f"{secured.url}/config", timeout=30).status_code in (401, 403, 404)
    finally:
        stop_server(secured)


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_img2img_and_inpaint_over_http_like_a1111_clients(server):
    source = Image.new("RGB", (64, 64), (230, 200, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    response = post(server, "img2img", {**SMALL, "prompt": "a red circle", "seed": 4, "init_images": [encode(source)],
                                        "mask": encode(mask), "mask_blur": 0, "inpainting_fill": 1,
                                        "inpaint_full_res": False, "denoising_strength": 1.0})
    assert response.status_code == 200, response.text
    result = decode(response.json()["images"][0]).convert("RGB")
    assert result.crop((32, 0, 64, 64)).tobytes() == source.crop((32, 0, 64, 64)).tobytes()
    assert result.crop((0, 0, 32, 64)).tobytes() != source.crop((0, 0, 32, 64)).tobytes()
    params = parse_infotext(read_infotext(decode(response.json()["images"][0])))
    assert params["Denoising strength"] == "1.0" and params["Mask blur"] == "0"
    hires = post(server, "txt2img", {**SMALL, "prompt": "x", "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2})
    assert decode(hires.json()["images"][0]).size == (128, 128)


@pytest.mark.parametrize("body, reason", [
    ({"init_images": []}, "init_images"),
    ({"init_images": ["bm90IGFuIGltYWdl"]}, "not an image"),
    ({"denoising_strength": 2.0}, "denoising_strength"),
    ({"init_images": ["SOURCE"], "width": 4096}, "width 4096"),
])
def test_bad_img2img_input_gets_a_reason(server, body, reason):
    source = encode(Image.new("RGB", (64, 64), (10, 20, 30)))
    body = {**SMALL, "init_images": [source], **body}
    body["init_images"] = [source if item == "SOURCE" else item for item in body["init_images"]]
    response = post(server, "img2img", body)
    assert response.status_code == 422 and reason in response.json()["detail"], response.text


def test_a_dora_lora_whose_magnitude_fits_no_axis_is_refused_with_the_shapes(server):
    """A DoRA file whose dora_scale fits neither an output nor an input channel per value of its layer fails the
    request with the shapes (a 4xx, not a traceback), and the server keeps serving."""
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # the toy model's 48x48 to_q
    lora_dir = server.data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    path = lora_dir / "bad_dora.safetensors"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 48), f"{name}.lora_up.weight": torch.zeros(48, 2),
               f"{name}.alpha": torch.tensor(2.0), f"{name}.dora_scale": torch.ones(49, 1)}, str(path))
    try:
        response = post(server, "txt2img", {**SMALL, "prompt": "a circle <lora:bad_dora:1>"})
    finally:
        path.unlink()  # the session server's other tests list its LoRAs
    assert response.status_code == 422, response.text
    assert "bad_dora.safetensors" in response.text and "dora_scale has shape (49, 1)" in response.text
    assert "Traceback" not in response.text
    assert post(server, "txt2img", {**SMALL, "prompt": "still alive"}).status_code == 200
