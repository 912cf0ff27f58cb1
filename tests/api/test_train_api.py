"""The training API (/sdapi/v1/train...) against a real `launch.py --api` server, as a script would use it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from sdstudio_eval.toy_world import held_out_concept_images

TRAIN = "/sdapi/v1/train"


def tiny_body(dataset: Path | str, **changes) -> dict:
    body = {"method": "lora", "output_name": "api_hex", "dataset_dir": str(dataset), "trigger_word": "hxgn",
            "class_word": "shape", "resolution": 64, "min_bucket_resolution": 32, "max_bucket_resolution": 128,
            "bucket_step": 32, "rank": 4, "alpha": 4.0, "unet_lr": 0.002, "max_train_steps": 4,
            "train_batch_size": 2, "sample_every_n_steps": 2, "sample_prompts": ["hxgn, a shape"], "sample_steps": 2}
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def hexagons(server) -> Path:
    folder = server.data_dir / "datasets" / "api-hexagons"  # a client names folders in the data folder's datasets/
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 4)):
        image.save(folder / f"hexagon_{index}.png")
    return folder


def progress(server) -> dict:
    response = requests.get(server.url + TRAIN + "/progress", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(server, condition, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = progress(server)
        if condition(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"training did not get there in {timeout}s: {state}")


def test_train_over_http_and_follow_it_until_the_files_exist(server, hexagons):
    response = requests.post(server.url + TRAIN, json=tiny_body(hexagons.name), timeout=60)  # datasets/<name>
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["state"] in ("queued", "running") and started["name"] == "api_hex"
    assert started["config"]["base_checkpoint"].startswith("sd-studio-toy")

    seen_steps = set()

    def finished(state: dict) -> bool:
        seen_steps.add(state["step"])
        return state["finished"]

    state = wait_until(server, finished)
    assert state["state"] == "done" and state["error"] is None and not state["cancelled"]
    assert state["step"] == state["total"] == 4 and state["epoch"] >= 1
    assert isinstance(state["loss"], float) and state["eta"] is not None
    assert any(message.startswith("dataset: 4 images") for message in state["messages"])
    assert [Path(file).name for file in state["files"]] == ["api_hex.safetensors"]
    assert all(Path(file).is_file() for file in state["files"])
    assert state["usage"] == "<lora:api_hex:1> hxgn"
    # the saved LoRA's keys were checked against every loader; the job record keeps the same counts
    [check] = state["key_checks"]
    total = check["total"]
    assert total > 0 and check["complete"] and state["key_problems"] == []
    assert check["summary"] == f"api_hex.safetensors: {total} of {total} keys load in SD Studio, diffusers, ComfyUI"
    assert check["not_checked"].startswith("A1111: not checked")  # the toy model has no A1111 layout
    assert check["summary"] in state["messages"][-1]
    job_id = started["job"].removeprefix("job-")  # the train API names the job as A1111's progress does
    job = requests.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=30).json()
    assert job["result"]["key_checks"] == [check] and job["result"]["key_problems"] == []
    assert job["result"]["outcome"] == "done"
    loras = requests.get(server.url + "/sdapi/v1/loras", timeout=30).json()
    assert "api_hex" in [lora["name"] for lora in loras]


@pytest.mark.parametrize("changes,reason", [
    ({"unet_lr": 0}, "unet_lr: must be a number above 0"),
    ({"rank": "big"}, "rank: must be a whole number"),
    ({"learning_rate": 1e-4}, "learning_rate: unknown setting"),
    ({"dataset_dir": "nowhere-at-all"}, "does not exist"),
    ({"dataset_dir": "/nowhere/at/all"}, "use a folder under datasets/"),
    ({"dataset_dir": "/etc"}, "use a folder under datasets/"),
    ({"dataset_dir": "../../../../../../../../etc"}, "use a folder under datasets/"),
    ({"resume_from": "/etc"}, "use a folder under training/states/"),
    ({"caption_extension": ".json"}, "caption_extension: '.json' is not one of .txt, .caption"),
    ({"output_name": ""}, "output_name"),
    ({"optimizer": "SGD"}, "optimizer: 'SGD' is not one of"),
    ({"validation_dir": "api-hexagons"}, "the validation set overlaps the training set (4 image(s): hexagon_0.png"),
    ({"masked_loss": True}, "masked_loss is on but no image has a mask"),
    ({"masked_loss": True, "masks_dir": "/etc"}, "use a folder under datasets/"),
    ({"caption_dropout_rate": 2}, "caption_dropout_rate: must be a number from 0 up to 1"),
    ({"down_lr_weight": -1}, "down_lr_weight: must be a number from 0 up to 10"),
    ({"use_ema": True, "ema_decay": 1.5}, "ema_decay: must be a number above 0"),
    ({"cache_text_encoder_outputs": True, "train_text_encoder": True}, "cache_text_encoder_outputs: needs a frozen"),
    ({"gpus": "0,999"}, "999 does not exist: this machine has "),
    ({"gpus": "0,0"}, "gpus: each GPU can be listed once"),
    ({"gpus": "all"}, "gpus: list CUDA device numbers separated by commas"),
])
def test_a_bad_config_gets_422_with_the_reason_and_nothing_starts(server, hexagons, changes, reason):
    before = progress(server)
    response = requests.post(server.url + TRAIN, json=tiny_body(hexagons, **changes), timeout=60)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert "Traceback" not in response.text
    after = progress(server)
    assert (after["name"], after["state"]) == (before["name"], before["state"])


def test_a_body_that_is_not_an_object_gets_422(server):
    response = requests.post(server.url + TRAIN, data=json.dumps(["lora"]), timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "JSON object" in response.text


def test_cancel_stops_a_running_training_and_a_second_start_is_refused(server, hexagons):
    idle = requests.post(server.url + TRAIN + "/cancel", timeout=30).json()
    assert idle["cancelled"] is False
    body = tiny_body(hexagons, output_name="api_long", max_train_steps=400, sample_every_n_steps=0)
    assert requests.post(server.url + TRAIN, json=body, timeout=60).status_code == 202
    second = requests.post(server.url + TRAIN, json=tiny_body(hexagons, output_name="api_other"), timeout=60)
    assert second.status_code == 409 and "api_long" in second.json()["detail"]
    wait_until(server, lambda state: state["step"] >= 1 or state["finished"])
    answer = requests.post(server.url + TRAIN + "/cancel", timeout=30).json()
    assert answer["cancelled"] is True and "Cancelling" in answer["message"]
    state = wait_until(server, lambda state: state["finished"], timeout=120)
    assert state["state"] == "cancelled" and state["cancelled"] and 1 <= state["step"] < 400


def test_presets_for_the_model_family_and_the_users_own(server):
    folder = server.data_dir / "training" / "presets"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_fast.json").write_text(json.dumps({"method": "lora", "rank": 2, "max_train_steps": 50}))
    presets = {p["name"]: p for p in requests.get(server.url + TRAIN + "/presets", timeout=30).json()}
    assert {"sd1_lora", "sd1_dreambooth", "sd1_dreambooth_lora", "sd1_textual_inversion", "sd1_pivotal"} <= set(presets)
    assert not any(name.startswith("sdxl_") for name in presets)  # the toy model is SD1-shaped
    assert presets["sd1_lora"]["config"]["method"] == "lora" and presets["sd1_lora"]["user"] is False
    assert presets["my_fast"]["user"] is True and presets["my_fast"]["config"]["rank"] == 2


def test_training_routes_need_the_api_login_when_auth_is_on(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api.train_api import build_train_router
    from webui.context import build_context
    from webui.security.server import build_server_security
    from webui.settings import settings_from_args

    # An empty data dir: the default model is copied in, as on a first start.
    settings = settings_from_args(["--data-dir", str(tmp_path), "--auth", "alice:s3cret"], environ={})
    ctx = build_context(settings)
    try:
        app = FastAPI(middleware=build_server_security(settings).middleware())  # as webui.app serves it
        app.include_router(build_train_router(ctx))
        client = TestClient(app, base_url="http://127.0.0.1:7860")
        assert client.get(TRAIN + "/progress").status_code == 401
        assert client.post(TRAIN, json={"method": "lora"}, auth=("alice", "wrong")).status_code == 401
        assert client.post(TRAIN + "/cancel").status_code == 401
        assert client.get(TRAIN + "/progress", auth=("alice", "s3cret")).json()["state"] == "idle"
    finally:
        ctx.close()
