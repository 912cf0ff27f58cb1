"""Generation-time extension hooks over HTTP: one `launch.py --api` server with the test pack
(tests/extension_pack/) in `<data>/extensions/` and the shipped wildcards extension, as an API client sees them."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model
from webui.generation.infotext import parse_infotext, read_infotext

PACK = Path(__file__).resolve().parents[1] / "extension_pack"
SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("pack-server"), default_model_folder)
    shutil.copytree(PACK, data / "extensions", ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def txt2img(server, **body) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/txt2img", json={**SMALL, **body}, timeout=300)


def images_of(response: requests.Response) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in response.json()["images"]]


def test_an_extension_sampler_is_listed_and_usable(served):
    names = [sampler["name"] for sampler in requests.get(f"{served.url}/sdapi/v1/samplers", timeout=30).json()]
    assert "Pack Euler" in names and "Euler" in names
    response = txt2img(served, prompt="a red circle", sampler_name="Pack Euler", seed=3)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sampler_name"] == "Pack Euler"
    refused = txt2img(served, prompt="a red circle", sampler_name="Pack Euler", scheduler="Karras")
    assert refused.status_code == 422 and "takes no schedule type" in refused.json()["detail"]


def test_prompt_expansion_gives_each_image_its_own_infotext(served):
    response = txt2img(served, prompt="a PACKCOLORS square", seed=20, save_images=True)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_prompts"] == ["a red square", "a green square", "a blue square"]
    assert info["all_seeds"] == [20, 21, 22]
    singles = images_of(response)[info["index_of_first_image"]:]
    assert [parse_infotext(read_infotext(image))["Prompt"] for image in singles] == info["all_prompts"]


def test_wildcards_end_to_end(served):
    template = "a {red|blue} __shapes__ on a __colors__ background"
    response = txt2img(served, prompt=template, seed=40, batch_size=3)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    prompts = info["all_prompts"]
    assert len(prompts) == 3 and all("{" not in p and "__" not in p and p.startswith("a ") for p in prompts)
    for text, prompt in zip(info["infotexts"][info["index_of_first_image"]:], prompts):
        fields = parse_infotext(text)
        assert fields["Prompt"] == prompt and fields["Template"] == template
    # Image 2 (seed 42) drawn by itself gets the same prompt: random mode follows each image's seed.
    alone = json.loads(txt2img(served, prompt=template, seed=42).json()["info"])
    assert alone["all_prompts"] == [prompts[2]]
    plain = json.loads(txt2img(served, prompt="a red circle", seed=1).json()["info"])
    assert plain["all_prompts"] == ["a red circle"] and "Template" not in plain["infotexts"][0]


def test_a_failing_extension_is_named_in_the_warnings_and_the_job_finishes(served):
    response = txt2img(served, prompt="a red circle PACKCRASH", seed=9)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 1
    assert any("pack-broken" in warning and "switched off" in warning for warning in info["warnings"])
