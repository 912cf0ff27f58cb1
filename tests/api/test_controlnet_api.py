"""The shipped controlnet extension over HTTP, on the session's `launch.py --api` server: sd-webui-controlnet's
routes and a txt2img body shaped like a recorded sd-webui-controlnet client request (its documented format:
`alwayson_scripts.controlnet.args` holding unit objects), with 422s that list what exists."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from tests.support.controlnet_files import sd1_unet_config, sdxl_unet_config, tiny_controlnet, write_ldm

SMALL = {"prompt": "a red circle on a blue background", "width": 64, "height": 64, "steps": 3, "sampler_name": "Euler",
         "seed": 7, "cfg_scale": 7}


@pytest.fixture(scope="module")
def url(server):
    folder = server.data_dir / "models" / "ControlNet"
    write_ldm(folder / "control_v11p_sd15_canny.safetensors", tiny_controlnet(sd1_unet_config(), seed=3, scale=8))
    write_ldm(folder / "controlnet_sdxl_canny.safetensors", tiny_controlnet(sdxl_unet_config(), seed=4))
    return server.url


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture(scope="module")
def control_image() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((10, 10, 54, 54), fill="white")
    return b64_png(image)


def recorded_body(control_image: str, **unit_changes) -> dict:
    """A txt2img body as sd-webui-controlnet's API clients send it (their README's example fields)."""
    unit = {"enabled": True, "input_image": control_image, "mask": None, "module": "canny",
            "model": "control_v11p_sd15_canny [d14c016b]", "weight": 1.0, "resize_mode": 1, "lowvram": False,
            "processor_res": 64, "threshold_a": 100, "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": 0, "pixel_perfect": False, **unit_changes}
    return {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}


def test_model_and_module_lists(url):
    models = requests.get(url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert any(title.startswith("control_v11p_sd15_canny [") for title in models)
    assert any(title.startswith("control_sdstudio_toy_canny [") for title in models)   # shipped with the app
    modules = requests.get(url + "/controlnet/module_list", timeout=30).json()
    assert {"none", "canny", "invert", "shuffle", "inpaint_only"} <= set(modules["module_list"])
    assert "models/ControlNet/annotators" in modules["unavailable"]["depth_midas"]


def test_detect_runs_a_preprocessor_and_refuses_unknown_ones(url, control_image):
    answer = requests.post(url + "/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [control_image], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}, timeout=60)
    assert answer.status_code == 200, answer.text
    edges = np.asarray(decoded(answer.json()["images"][0]).convert("L"))
    assert edges[32, 32] == 0 and 50 < (edges > 127).sum() < 400   # the circle's outline, not its inside
    unknown = requests.post(url + "/controlnet/detect", json={"controlnet_module": "magic",
                                                             "controlnet_input_images": [control_image]}, timeout=30)
    assert unknown.status_code == 422 and "canny" in unknown.json()["detail"]


def test_weight_annotators_say_exactly_what_is_missing(server, url, control_image):
    """controlnet_aux cannot import on this machine: /controlnet/detect refuses a weight annotator with a 422
    naming the package (with why) and the missing file with its source and folder; once the file is in the
    annotator folder, only the package is named."""
    folder = server.data_dir / "models" / "ControlNet" / "annotators"
    modules = requests.get(url + "/controlnet/module_list", timeout=30).json()
    assert "depth_midas" not in modules["module_list"] and "depth_midas" not in modules["module_detail"]

    def refusal() -> str:
        answer = requests.post(url + "/controlnet/detect", json={
            "controlnet_module": "depth", "controlnet_input_images": [control_image]}, timeout=30)  # an alias
        assert answer.status_code == 422, answer.text
        return answer.json()["detail"]

    detail = refusal()
    assert "controlnet_aux==0.0.10 package, which does not import here (ModuleNotFoundError" in detail
    assert f"dpt_hybrid-midas-501f0c75.pt (from https://huggingface.co/lllyasviel/Annotators) in {folder}" in detail
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"")
    try:
        detail = refusal()
        assert "controlnet_aux==0.0.10" in detail and "dpt_hybrid" not in detail
        assert requests.get(url + "/controlnet/module_list", timeout=30).json()["unavailable"]["depth_midas"] == detail
    finally:
        (folder / "dpt_hybrid-midas-501f0c75.pt").unlink()


def test_recorded_client_request_generates_with_the_unit_and_records_it(url, control_image):
    # Weight 0 is bitwise the image without the unit (tests/engine/test_controlnet_generation.py): the reference.
    zero = requests.post(url + "/sdapi/v1/txt2img", json=recorded_body(control_image, weight=0), timeout=300)
    # hr_option by index (1: "Low res only"); without hires fix the one pass is the unit's, and it is recorded.
    controlled = requests.post(url + "/sdapi/v1/txt2img", json=recorded_body(control_image, hr_option=1), timeout=300)
    assert controlled.status_code == 200 and zero.status_code == 200, controlled.text + zero.text
    difference = np.abs(np.asarray(decoded(controlled.json()["images"][0]).convert("RGB"), dtype=np.int16)
                        - np.asarray(decoded(zero.json()["images"][0]).convert("RGB"), dtype=np.int16))
    assert difference.mean() > 1.0
    infotext = json.loads(controlled.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1,' in infotext
    assert "base64" not in infotext and control_image[:40] not in infotext
    assert "Hr Option: Low res only" in infotext


@pytest.mark.parametrize("unit, reason", [
    ({"model": "control_v11p_sd15_depth [fefefefe]"}, "control_v11p_sd15_canny ["),
    ({"module": "openpose"}, "models/ControlNet/annotators"),
    ({"module": "magic"}, "canny"),
    ({"control_mode": "Whatever"}, "My prompt is more important"),
    ({"model": "controlnet_sdxl_canny"}, "SD1.x"),
    ({"hr_option": "Sometimes"}, "Both, Low res only, High res only"),
])
def test_bad_units_get_a_422_with_the_reason_and_the_server_goes_on(url, control_image, unit, reason):
    answer = requests.post(url + "/sdapi/v1/txt2img", json=recorded_body(control_image, **unit), timeout=300)
    assert answer.status_code == 422, answer.text
    assert reason in answer.json()["detail"]
    assert requests.get(url + "/controlnet/model_list", timeout=30).status_code == 200


def test_the_webuiapi_client_lists_detects_and_generates_with_a_controlnet_unit(url, control_image):
    import webuiapi  # an A1111 client with sd-webui-controlnet support (a test extra)

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), sampler="Euler", steps=3)
    model = next(title for title in client.controlnet_model_list() if title.startswith("control_v11p_sd15_canny ["))
    assert "canny" in client.controlnet_module_list()
    picture = decoded(control_image)
    detected = client.controlnet_detect([picture], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    edges = np.asarray(detected.image.convert("L"))
    assert edges[32, 32] == 0 and edges.max() == 255
    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model=model, processor_res=64, threshold_a=100,
                                   threshold_b=200, control_mode=1)
    result = client.txt2img(prompt="a red circle on a blue background", width=64, height=64, seed=7, cfg_scale=7,
                            controlnet_units=[unit])
    assert result.image.size == (64, 64)
    assert f'ControlNet 0: "Module: canny, Model: {model}, Weight: 1, Resize Mode: Resize and Fill' in result.info[
        "infotexts"][0] and "Control Mode: My prompt is more important" in result.info["infotexts"][0]
