"""Over HTTP on one server with accounts: A1111's txt2img `refiner_checkpoint` / `refiner_switch_at` end up in
the images' infotext (and PNG Info reads them back), bad refiners get a reason, and per-checkpoint settings
are readable by anyone and changed by an admin only."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.conftest import start_server, stop_server, with_default_model
from tests.engine.helpers import perturbed_copy
from webui.security.users import UserStore

ADMIN, USER = ("boss", "admin-password-9"), ("ulla", "user password")
BODY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, "seed": 5, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("refiner-api"), default_model_folder)
    perturbed_copy(default_model_folder, data / "models" / "Stable-diffusion" / "toy-refiner", seed=9)
    UserStore(data / "users.json").add_user("ulla", "user password", "user")
    (data / "auth.txt").write_text("boss:admin-password-9\n")
    running = start_server(data, "--api", "--auth-file", str(data / "auth.txt"))
    yield running
    stop_server(running)


def api(server, route: str) -> str:
    return f"{server.url}/sdapi/v1/{route}"


def test_refiner_fields_round_trip_into_the_infotext_and_png_info(server):
    answer = requests.post(api(server, "txt2img"), json={**BODY, "refiner_checkpoint": "toy-refiner",
                                                         "refiner_switch_at": 0.6}, auth=USER, timeout=300)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["parameters"]["refiner_checkpoint"] == "toy-refiner" and body["parameters"]["refiner_switch_at"] == 0.6
    info = json.loads(body["info"])
    assert info["extra_generation_params"]["Refiner"].startswith("toy-refiner [")
    assert info["extra_generation_params"]["Refiner switch at"] == 0.6
    read = requests.post(api(server, "png-info"), json={"image": body["images"][0]}, auth=USER, timeout=60).json()
    assert read["parameters"]["Refiner"] == info["extra_generation_params"]["Refiner"]
    assert read["parameters"]["Refiner switch at"] == "0.6"
    plain = requests.post(api(server, "txt2img"), json=BODY, auth=USER, timeout=300).json()
    assert base64.b64decode(plain["images"][0]) != base64.b64decode(body["images"][0])
    assert "Refiner" not in json.loads(plain["info"])["extra_generation_params"]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"refiner_checkpoint": "nope"}, "refiner: checkpoint 'nope' not found"),
    ({"refiner_checkpoint": "toy-refiner", "refiner_switch_at": 1.5}, "refiner_switch_at 1.5 is outside 0.01..1.0"),
])
def test_a_bad_refiner_gets_a_reason(server, fields, reason):
    answer = requests.post(api(server, "txt2img"), json={**BODY, **fields}, auth=USER, timeout=60)
    assert 400 <= answer.status_code < 500 and reason in answer.json()["detail"]


def test_checkpoint_settings_are_read_by_anyone_and_changed_by_an_admin_only(server):
    url = api(server, "checkpoint-settings")
    assert requests.get(url, params={"name": "toy-refiner"}, auth=USER, timeout=30).json()["prediction"] == "Automatic"
    wanted = {"name": "toy-refiner", "prediction": "v_prediction", "zero_terminal_snr": True}
    refused = requests.post(url, json=wanted, auth=USER, timeout=30)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    saved = requests.post(url, json=wanted, auth=ADMIN, timeout=30)
    assert saved.status_code == 200 and saved.json()["prediction"] == "v_prediction"
    read = requests.get(url, params={"name": "toy-refiner"}, auth=USER, timeout=30).json()
    assert (read["prediction"], read["zero_terminal_snr"]) == ("v_prediction", True)
    bad = requests.post(url, json={**wanted, "prediction": "sample"}, auth=ADMIN, timeout=30)
    assert bad.status_code == 422 and "prediction 'sample' is unknown" in bad.json()["detail"]
    unknown = requests.get(url, params={"name": "nope"}, auth=USER, timeout=30)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
