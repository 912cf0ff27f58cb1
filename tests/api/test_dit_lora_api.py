"""Over HTTP, as a script would: a Flux.1 LoRA in the prompt of a generation on an SD3.5 checkpoint is refused
with a 4xx naming both families, and the server keeps serving."""

from __future__ import annotations

import pytest
import requests
import torch

from tests.conftest import start_server, stop_server
from tests.support.dit_lora_files import write_file
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, write_single_file

CHECKPOINT = "sd3.5_medium_incl_clips_t5xxl"


@pytest.fixture(scope="module")
def sd3_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("sd3-lora-data")
    checkpoints, loras = data / "models" / "Stable-diffusion", data / "models" / "Lora"
    checkpoints.mkdir(parents=True)
    loras.mkdir(parents=True)
    write_single_file(checkpoints / f"{CHECKPOINT}.safetensors", tiny_sd3_modules(MEDIUM, seed=3), dtype=torch.float32)
    # sd-scripts' Flux naming: BFL module names under lora_unet_ (a double block's fused qkv, a single block's linear1).
    write_file(loras / "flux_style.safetensors", {
        f"{name}.{role}": torch.zeros(shape) for name, rows in (
            ("lora_unet_double_blocks_0_img_attn_qkv", 192), ("lora_unet_single_blocks_0_linear1", 448))
        for role, shape in (("lora_down.weight", (2, 64)), ("lora_up.weight", (rows, 2)), ("alpha", ()))})
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def test_a_flux_lora_on_an_sd3_checkpoint_is_refused_with_both_names(sd3_server):
    response = requests.post(f"{sd3_server.url}/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "a photo of a cat <lora:flux_style:1>", "width": 64, "height": 64, "steps": 2,
        "override_settings": {"sd_model_checkpoint": CHECKPOINT}})
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert "flux_style" in detail and "SD3.5" in detail and "Flux.1" in detail, detail
    listed = requests.get(f"{sd3_server.url}/sdapi/v1/loras", timeout=60)
    assert listed.status_code == 200 and [lora["name"] for lora in listed.json()] == ["flux_style"]
