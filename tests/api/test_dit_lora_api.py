"""Over HTTP, as a script would: a LoRA made for another family (here an SD3.5 MMDiT LoRA in a prompt for the
default SD1 model) is left out and the picture is still made, with a warning naming both families; the same seed
without the tag gives the same picture."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.conftest import start_server, stop_server
from tests.support.dit_lora_files import write_file


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("foreign-lora-data")
    loras = data / "models" / "Lora"
    loras.mkdir(parents=True)
    # sd-scripts' SD3 naming: Stability's MMDiT module names under lora_unet_.
    write_file(loras / "sd3_style.safetensors", {
        f"lora_unet_joint_blocks_0_x_block_attn_qkv.{role}": torch.full(shape, 0.1)
        for role, shape in (("lora_down.weight", (2, 64)), ("lora_up.weight", (192, 2)))})
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def txt2img(server, prompt: str) -> dict:
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", timeout=300, json={
        "prompt": prompt, "seed": 11, "steps": 3, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_lora_of_another_family_is_left_out_with_a_warning_naming_both(server):
    with_tag = txt2img(server, "a red circle <lora:sd3_style:1>")
    warnings = json.loads(with_tag["info"])["warnings"]
    assert any("sd3_style" in warning and "SD1.x" in warning and "SD3.5" in warning and "without it" in warning
               for warning in warnings), warnings
    plain = txt2img(server, "a red circle")
    assert json.loads(plain["info"])["warnings"] == []
    np.testing.assert_array_equal(pixels(with_tag), pixels(plain))  # (the PNG texts differ: the prompt has the tag)


def pixels(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
