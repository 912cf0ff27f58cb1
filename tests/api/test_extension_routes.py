"""Extensions on a running server (issue 16): a route an extension adds is served behind the app's login,
its app-started hook runs once the server answers, it queues work through the scheduler for the caller,
and a broken extension next to it changes nothing else."""

from __future__ import annotations

import base64
import io
import textwrap

import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model

ROUTE_EXTENSION = '''
from fastapi import APIRouter, Request

from webui.extensions import api

router = APIRouter()
services = {}


@router.get("/ping")
def ping(request: Request):
    return {"pong": True, "caller": api.caller_of(request).name}


@router.post("/draw")
def draw(request: Request, body: dict):
    caller = api.caller_of(request)
    job_id = services["app"].submit_txt2img(api.Txt2ImgRequest(prompt=body["prompt"], steps=2, width=64,
                                                               height=64, seed=5), caller)
    outcome = services["app"].wait(job_id, timeout=120)
    return {"job": job_id, "size": list(outcome.images[0].size), "infotext": outcome.infotexts[0]}


def started(event: api.AppStarted) -> None:
    services["app"] = event.services
    (event.data_folder / "started.txt").write_text(event.base_url + "\\n" + ",".join(event.services.checkpoint_titles()))


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_router(router)
    ext.on_app_started(started)
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("extensions"), default_model_folder)
    for name, code in [("hello", ROUTE_EXTENSION), ("broken", "import not_a_module_anywhere\n")]:
        folder = data / "extensions" / name
        folder.mkdir(parents=True)
        (folder / "extension.toml").write_text(f'name = "{name}"\nversion = "0.1.0"\napi = ">=1.0, <2"\n')
        (folder / "extension.py").write_text(textwrap.dedent(code))
    auth_file = data / "auth.txt"
    auth_file.write_text("boss:admin-password-9\n")
    running = start_server(data, "--api", "--auth-file", str(auth_file))
    yield running
    stop_server(running)


AUTH = ("boss", "admin-password-9")


def test_an_extension_route_needs_the_login(served):
    assert requests.get(f"{served.url}/extensions/hello/ping", timeout=30).status_code == 401
    answer = requests.get(f"{served.url}/extensions/hello/ping", auth=AUTH, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"pong": True, "caller": "boss"}


def test_the_app_started_hook_ran_with_the_servers_address_and_services(served):
    text = (served.data_dir / "extension-data" / "hello" / "started.txt").read_text()
    address, titles = text.split("\n")
    assert address == f"http://127.0.0.1:{served.url.rsplit(':', 1)[1]}"
    assert "sd-studio-toy" in titles


def test_an_extension_queues_work_for_its_caller_through_the_scheduler(served):
    answer = requests.post(f"{served.url}/extensions/hello/draw", json={"prompt": "a red circle"}, auth=AUTH,
                           timeout=180)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["size"] == [64, 64] and body["infotext"].startswith("a red circle\nSteps: 2,")
    jobs = requests.get(f"{served.url}/api/v1/jobs", auth=AUTH, timeout=30).json()
    mine = [job for job in jobs["jobs"] if job["id"] == body["job"]]
    assert mine and mine[0]["owner"] == "boss"


def test_a_broken_extension_is_logged_and_the_app_works(served):
    assert "extension broken failed to load" in served.log()
    assert "ModuleNotFoundError" in served.log()
    answer = requests.post(f"{served.url}/sdapi/v1/txt2img", json={"prompt": "a blue square", "steps": 2, "width": 64,
                                                                   "height": 64}, auth=AUTH, timeout=180)
    assert answer.status_code == 200
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    assert image.size == (64, 64)
