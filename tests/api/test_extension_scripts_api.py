"""Extension scripts over A1111's API (issue 16, ext-ui) on one real `launch.py --api` server: the shipped
Prompt matrix by `script_name` with its arguments by name and by position, `/scripts` and `/script-info`
listing it, an always-on script's values in `alwayson_scripts`, clear 422s for bad values, a script that
refuses a request staying on, and a script that crashes being switched off while the server goes on."""

from __future__ import annotations

import base64
import io
import json
import textwrap

import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model
from webui.generation.infotext import parse_infotext, read_infotext

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 11}
PROBE = '''
from dataclasses import dataclass
from webui.extensions import api

@dataclass
class Tint:
    strength: float = api.script_field(0.0, "Tint strength", minimum=0.0, maximum=1.0, infotext="Tint strength")

@dataclass
class Nothing:
    pass

def crash(context):
    raise RuntimeError("the probe script always crashes")

def setup(ext):
    ext.add_script("Tint", Tint, alwayson=True)
    ext.add_script("Crasher", Nothing, crash)
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("ext-scripts"), default_model_folder)
    folder = data / "extensions" / "probe"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text('name = "probe"\nversion = "0.1.0"\napi = ">=1.0, <2"\n')
    (folder / "extension.py").write_text(textwrap.dedent(PROBE))
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def url(server, route: str) -> str:
    return f"{server.url}/sdapi/v1/{route}"


def txt2img(server, **fields) -> requests.Response:
    return requests.post(url(server, "txt2img"), json={**SMALL, **fields}, timeout=600)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_scripts_and_script_info_list_the_extension_scripts_with_their_arguments(served):
    scripts = requests.get(url(served, "scripts"), timeout=30).json()
    assert scripts["txt2img"][0] == "x/y/z plot" and {"prompt matrix", "crasher"} <= set(scripts["txt2img"])
    assert "tint" not in scripts["txt2img"]              # always-on scripts are not in the dropdown's list
    infos = requests.get(url(served, "script-info"), timeout=30).json()
    matrix = next(info for info in infos if info["name"] == "prompt matrix" and not info["is_img2img"])
    assert [arg["name"] for arg in matrix["args"]] == ["put_at_start", "different_seeds", "prompt_type",
                                                       "variations_delimiter", "margin_size"]
    assert matrix["args"][2]["choices"] == ["positive", "negative"] and matrix["is_alwayson"] is False
    tint = next(info for info in infos if info["name"] == "tint" and info["is_img2img"])
    assert tint["is_alwayson"] is True and tint["args"][0]["maximum"] == 1.0
    assert any(info["name"] == "x/y/z plot" for info in infos)


def test_prompt_matrix_by_name_makes_every_combination_and_a_labelled_grid(served):
    answer = txt2img(served, prompt="a red circle|blue background|striped", script_name="Prompt matrix",
                     script_args={"different_seeds": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    info = json.loads(body["info"])
    images = [decode(image) for image in body["images"]]
    assert len(images) == 5 and info["index_of_first_image"] == 1
    grid = images[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64     # two columns, two rows, plus the label bands
    prompts = [parse_infotext(read_infotext(image))["Prompt"] for image in images[1:]]
    assert prompts == ["a red circle", "a red circle, blue background", "a red circle, striped",
                       "a red circle, blue background, striped"]
    assert info["all_seeds"] == [11, 12, 13, 14]
    parameters = parse_infotext(info["infotexts"][1])
    assert parameters["Script"] == "Prompt matrix" and parameters["Prompt matrix different seeds"] == "True"


def test_prompt_matrix_takes_a1111s_positional_arguments(served):
    answer = txt2img(served, prompt="a red circle|striped", script_name="prompt matrix",
                     script_args=[True, False, "positive", "space", 4])
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    prompts = [parse_infotext(text)["Prompt"] for text in info["infotexts"][1:]]
    assert prompts == ["a red circle", "striped a red circle"]
    assert info["all_seeds"] == [11, 11]                     # one seed for every picture unless asked


@pytest.mark.parametrize("fields, detail", [
    ({"script_name": "prompt matrix", "script_args": {"put_at_start": "yes"}},
     "Prompt matrix: put_at_start: Put variable parts at start of prompt: expected true or false, got 'yes'"),
    ({"script_name": "prompt matrix", "script_args": {"margins": 2}}, "unknown argument(s) 'margins'"),
    ({"script_name": "prompt matrix", "script_args": [False, False, "both"]}, "'both' is not one of positive, negative"),
    ({"script_name": "prompt matrix", "script_args": [False] * 6}, "takes at most 5 arguments"),
    ({"script_name": "matrix of prompts"}, "'matrix of prompts' is unknown; scripts on this server's txt2img: x/y/z"),
    ({"alwayson_scripts": {"Glow": {"args": []}}}, "unknown script(s) 'Glow'; always-on scripts on this server: ControlNet, Tint"),
    ({"alwayson_scripts": {"Tint": {"args": [3]}}}, "Tint: strength: Tint strength: 3.0 is outside 0.0 .. 1.0"),
])
def test_bad_script_values_get_a_422_that_names_them(served, fields, detail):
    answer = txt2img(served, prompt="a|b", **fields)
    assert answer.status_code == 422 and detail in answer.json()["detail"], answer.text


def test_a_request_the_script_refuses_is_a_422_and_the_script_stays(served):
    answer = txt2img(served, prompt="|".join("abcdefgh"), script_name="prompt matrix")
    assert answer.status_code == 422
    assert "7 variable parts make 128 images; at most 6 parts" in answer.json()["detail"]
    assert "prompt matrix" in requests.get(url(served, "scripts"), timeout=30).json()["txt2img"]


def test_alwayson_values_reach_the_request_and_the_infotext(served):
    answer = txt2img(served, prompt="a blue square", alwayson_scripts={"tint": {"args": {"strength": 0.25}}})
    assert answer.status_code == 200, answer.text
    image = decode(answer.json()["images"][0])
    assert parse_infotext(read_infotext(image))["Tint strength"] == "0.25"


def test_a_crashing_script_is_switched_off_and_the_server_goes_on(served):
    answer = txt2img(served, prompt="a cat", script_name="Crasher")
    assert answer.status_code == 422, answer.text
    assert "extension 'probe' failed and was switched off until restart" in answer.json()["detail"]
    assert "the probe script always crashes" in answer.json()["detail"]
    scripts = requests.get(url(served, "scripts"), timeout=30).json()
    assert "crasher" not in scripts["txt2img"] and "prompt matrix" in scripts["txt2img"]
    assert txt2img(served, prompt="a cat").status_code == 200


def test_options_carry_extension_settings_as_extension_dot_key(served):
    options = requests.get(url(served, "options"), timeout=30).json()
    assert options["hello-tab.greeting"] == "Hello" and options["CLIP_stop_at_last_layers"] == 1
    refused = requests.post(url(served, "options"), json={"hello-tab.greeting": 5, "CLIP_stop_at_last_layers": 2},
                            timeout=30)
    assert refused.status_code == 422
    assert "hello-tab: Greeting the Hello tab and its route say: expected text, got 5" in refused.json()["detail"]
    assert requests.get(url(served, "options"), timeout=30).json()["CLIP_stop_at_last_layers"] == 1  # nothing kept
    kept = requests.post(url(served, "options"), json={"hello-tab.greeting": "Hi", "some.other": 1}, timeout=30)
    assert kept.status_code == 200 and kept.json()["hello-tab.greeting"] == "Hi"
    assert requests.get(f"{served.url}/extensions/hello-tab/greeting", timeout=30).json() == {"greeting": "Hi, local!"}
    stored = json.loads((served.data_dir / "extension_settings.json").read_text())
    assert stored["hello-tab"]["greeting"] == "Hi"


def test_prompt_matrix_on_img2img_runs_from_the_init_image(served):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    body = {**SMALL, "prompt": "a square|striped", "init_images": [base64.b64encode(buffer.getvalue()).decode()],
            "denoising_strength": 0.5, "script_name": "prompt matrix", "script_args": {"prompt_type": "positive"}}
    answer = requests.post(url(served, "img2img"), json=body, timeout=600)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert len(answer.json()["images"]) == 3
    assert [parse_infotext(text)["Prompt"] for text in info["infotexts"][1:]] == ["a square", "a square, striped"]
    assert parse_infotext(info["infotexts"][1])["Denoising strength"] == "0.5"
