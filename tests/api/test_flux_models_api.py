"""Flux.1 checkpoints through the A1111 API of a running server: a transformer-only file in models/unet is
listed as unusable with the files it needs and where to put them; selecting it is a 422 naming them, never a
traceback; once the user adds ae.safetensors, clip_l and t5xxl and refreshes, it loads. One server."""

from __future__ import annotations

import json

import pytest
import requests
import torch

from tests.conftest import start_server, stop_server, with_default_model
from tests.support.flux_files import DEV, SCHNELL, tiny_flux_modules, write_all_in_one, write_companions, \
    write_transformer_file


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("flux-data"), default_model_folder)
    models = data / "models"
    dev = tiny_flux_modules(DEV, seed=1)
    write_transformer_file(models / "unet" / "flux1-dev.safetensors", dev, prefix="", dtype=torch.float16)
    write_all_in_one(models / "Stable-diffusion" / "flux1-schnell-aio.safetensors", tiny_flux_modules(SCHNELL, 2))
    running = start_server(data, "--api")
    yield running, dev
    stop_server(running)


def post(server, route: str, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=300)


def test_a_flux_transformer_without_companions_is_listed_unusable_then_loads_once_they_are_added(flux_server):
    server, dev = flux_server
    models = server.data_dir / "models"
    listed = [m["model_name"] for m in requests.get(f"{server.url}/sdapi/v1/sd-models", timeout=30).json()]
    assert "flux1-schnell-aio" in listed and "unet/flux1-dev" not in listed
    unusable = post(server, "refresh-checkpoints", {}).json()["unusable"]
    reason = unusable["unet/flux1-dev"]
    for wanted in ("ae.safetensors", str(models / "VAE"), "clip_l.safetensors", "t5xxl_fp16.safetensors",
                   str(models / "text_encoder")):
        assert wanted in reason, reason

    refused = post(server, "options", {"sd_model_checkpoint": "unet/flux1-dev"})
    assert refused.status_code == 422 and "ae.safetensors" in json.dumps(refused.json())
    assert "Traceback" not in refused.text

    write_companions(models, dev)
    assert "unet/flux1-dev" not in post(server, "refresh-checkpoints", {}).json()["unusable"]
    chosen = post(server, "options", {"sd_model_checkpoint": "unet/flux1-dev"})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["sd_model_checkpoint"].startswith("unet/flux1-dev [")
    assert requests.get(f"{server.url}/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"].startswith(
        "unet/flux1-dev [")
