"""Training a LoRA on an SD3.5 checkpoint over HTTP (/sdapi/v1/train) on a real `launch.py --api` server."""

from __future__ import annotations

import time

import pytest
import requests
import torch
from safetensors import safe_open

from sdstudio_eval.toy_world import held_out_concept_images
from tests.conftest import start_server, stop_server, with_default_model
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, write_single_file

TRAIN = "/sdapi/v1/train"
CHECKPOINT = "sd3.5_medium_tiny"


@pytest.fixture(scope="module")
def sd3_server(tmp_path_factory, default_model_folder):
    """The embedded default model (SD1-shaped) and a tiny SD3.5 Medium side by side."""
    data = with_default_model(tmp_path_factory.mktemp("sd3-api"), default_model_folder)
    checkpoints = data / "models" / "Stable-diffusion"
    write_single_file(checkpoints / f"{CHECKPOINT}.safetensors", tiny_sd3_modules(MEDIUM, seed=1), dtype=torch.float32)
    folder = data / "datasets" / "hexagons"
    folder.mkdir(parents=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 2)):
        image.save(folder / f"hexagon_{index}.png")
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def body(**changes) -> dict:
    values = {"method": "lora", "output_name": "api_sd3", "base_checkpoint": CHECKPOINT, "dataset_dir": "hexagons",
              "trigger_word": "hxgn", "class_word": "shape", "resolution": 64, "enable_bucketing": False, "rank": 4,
              "alpha": 4.0, "unet_lr": 0.002, "max_train_steps": 2, "max_train_epochs": 0}
    values.update(changes)
    return values


def test_an_sd3_lora_trains_over_http_and_its_file_names_sd3(sd3_server):
    response = requests.post(sd3_server.url + TRAIN, json=body(), timeout=60)
    assert response.status_code == 202, response.text
    assert response.json()["config"]["base_checkpoint"].startswith(CHECKPOINT)
    deadline = time.monotonic() + 300
    while not (state := requests.get(sd3_server.url + TRAIN + "/progress", timeout=30).json())["finished"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["state"] == "done" and state["error"] is None and state["step"] == 2
    [file] = state["files"]
    with safe_open(file, "pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == "sd3"
        assert all(key.startswith("transformer.transformer_blocks.") for key in handle.keys())
    assert "api_sd3" in [lora["name"] for lora in requests.get(sd3_server.url + "/sdapi/v1/loras", timeout=30).json()]


def test_presets_follow_the_family_of_the_base_checkpoint_asked_about(sd3_server, default_model_folder):
    def names(base: str) -> set[str]:
        response = requests.get(sd3_server.url + TRAIN + "/presets", params={"base_checkpoint": base}, timeout=30)
        assert response.status_code == 200, response.text
        return {preset["name"] for preset in response.json()}

    sd3, toy = names(CHECKPOINT), names(default_model_folder.name)
    assert {"sd3_lora", "sd3_dreambooth_lora"} <= sd3 and not any(name.startswith(("sd1_", "toy_")) for name in sd3)
    assert "sd1_lora" in toy and not any(name.startswith("sd3_") for name in toy)


def test_a_method_sd3_cannot_train_gets_422_with_the_reason(sd3_server):
    response = requests.post(sd3_server.url + TRAIN, json=body(method="textual_inversion", output_name="api_ti"),
                             timeout=60)
    assert response.status_code == 422, response.text
    assert "method: SD3.5 checkpoints can be trained with lora, dreambooth_lora" in response.json()["detail"]
    assert requests.get(sd3_server.url + "/sdapi/v1/loras", timeout=30).status_code == 200
