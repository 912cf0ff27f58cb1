"""POST /sdapi/v1/txt2img with batch_size 4 on a server with two workers: the batch is split over both
workers (the job record names them), and the images, seeds and infotexts are those of the one-worker
server (within one level of 255: each worker's UNet sees a batch of 2 instead of 4)."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model

BATCH = {"prompt": "a red circle on a blue background", "width": 64, "height": 64, "steps": 6, "seed": 41,
         "batch_size": 4, "sampler_name": "Euler a",
         # The one-worker reference is the shared session server, whose current model other modules change.
         "override_settings": {"sd_model_checkpoint": "sd-studio-toy"}}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("split-server"), default_model_folder)
    running = start_server(data, "--api", "--nowebui", "--workers", "2")
    yield running
    stop_server(running)


def txt2img(server, body: dict) -> dict:
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def jobs_of(server, kind: str) -> list[dict]:
    """The server's jobs of one kind, newest first (this server has no accounts: the local caller sees all)."""
    response = requests.get(f"{server.url}/api/v1/jobs", params={"kind": kind}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["jobs"]


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


def test_a_batch_of_four_on_two_workers_gives_the_one_worker_images_seeds_and_infotexts(server, two_workers):
    # The server loads the model on one worker at start: wait until that job ends, so that both workers are free
    # when the batch arrives (a busy worker takes no part).
    deadline = time.monotonic() + 120
    while any(job["state"] in ("queued", "running") for job in jobs_of(two_workers, "load-checkpoint")):
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.2)
    split, alone = txt2img(two_workers, BATCH), txt2img(server, BATCH)
    job = jobs_of(two_workers, "txt2img")[0]
    assert sorted(job["worker"].split(", ")) == ["cpu#0", "cpu#1"], job
    split_info, alone_info = json.loads(split["info"]), json.loads(alone["info"])
    assert split_info["all_seeds"] == alone_info["all_seeds"] == [41, 42, 43, 44]
    assert split_info["infotexts"] == alone_info["infotexts"]
    assert len(split["images"]) == len(alone["images"]) == 5  # the grid, then the four images
    for ours, theirs in zip(split["images"], alone["images"]):
        assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
