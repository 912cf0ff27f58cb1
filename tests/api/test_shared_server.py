"""Issue #14 on a server several people share: each sees only their own images and training run, admin
actions are refused to plain users (UI and API), an abandoned UI generation gives the worker back,
refused origins get no CORS header, and the brush editors obey the pixel limit.

One server with accounts: `boss` (admin), `ulla` and `vera` (plain users), each with an API token, and a
small `--max-image-pixels` so that an editor image can sit between that limit and Pillow's own guard
(twice the limit), where only our check stops it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import threading
import time
import uuid
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from sdstudio_eval.toy_world import held_out_concept_images
from tests.conftest import ROOT, start_server, stop_server, with_default_model
from tests.support.oversized_png import oversized_png
from webui.security.users import UserStore

MAX_PIXELS = 1_000_000
USERS = {"boss": "admin", "ulla": "user", "vera": "user"}
TOKENS: dict[str, str] = {}
FILE_DATA = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("shared"), default_model_folder)
    store = UserStore(data / "users.json")
    for name, role in USERS.items():
        store.add_user(name, f"{name}-password-1", role)
        TOKENS[name] = store.create_token(name, "tests")
    running = start_server(data, "--api", "--max-image-pixels", str(MAX_PIXELS))
    running.info = requests.get(running.url + "/gradio_api/info", headers=bearer("boss"), timeout=30).json()
    yield running
    stop_server(running)


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def call_data(server, name: str, **by_label) -> list:
    """Values for every input of a gradio endpoint: its defaults, tiny sizes, and `by_label` overrides."""
    values = []
    for parameter in server.info["named_endpoints"][f"/{name}"]["parameters"]:
        label = parameter.get("label")
        if label in by_label:
            values.append(by_label[label])
        elif label in ("Width", "Height"):
            values.append(64)
        elif label == "Sampling steps":
            values.append(1)
        elif parameter["component"] in ("Slider", "Number"):
            values.append(parameter.get("example_input"))
        elif parameter.get("parameter_has_default"):
            values.append(parameter.get("parameter_default"))
        elif parameter["component"] in ("Image", "Imageeditor", "File", "Gallery"):
            values.append(None)
        else:
            values.append(parameter.get("example_input"))
    return values


def start_call(server, user: str, name: str, data: list) -> requests.Response:
    return requests.post(f"{server.url}/gradio_api/call/{name}", json={"data": data}, headers=bearer(user), timeout=60)


def gradio_call(server, user: str, name: str, data: list) -> tuple[str, str]:
    """(the final event, its data) of a gradio endpoint called as its HTTP client does."""
    started = start_call(server, user, name, data)
    if started.status_code != 200:
        return str(started.status_code), started.text
    stream = requests.get(f"{server.url}/gradio_api/call/{name}/{started.json()['event_id']}", headers=bearer(user),
                          timeout=600).text
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream)
    final = [event for event in events if event[0] in ("complete", "error")]
    return final[-1] if final else ("none", stream)


def raw_get(server, path: str, user: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side `..` folding or re-encoding)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.request("GET", path, headers=bearer(user))
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def png_bytes(size: tuple[int, int] = (64, 64), color: str = "green") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(server, user: str, content: bytes, name: str = "mine.png") -> str:
    answer = requests.post(f"{server.url}/gradio_api/upload", headers=bearer(user), timeout=120,
                           files={"files": (name, content, "image/png")})
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def api_progress(server, user: str) -> dict:
    answer = requests.get(f"{server.url}/sdapi/v1/progress", headers=bearer(user), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_until(condition, timeout: float = 300, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{message} not reached in {timeout}s"
        time.sleep(0.1)


# ---- 1. other users' images through gradio's file route -------------------------------------------

def test_a_user_fetches_only_the_images_gradio_showed_them(shared, tmp_path):
    kind, payload = gradio_call(shared, "ulla", "txt2img", call_data(shared, "txt2img", Seed=31))
    assert kind == "complete", payload
    image = json.loads(payload)[0][0]["image"]["path"]  # ulla's first gallery image, in gradio's cache
    assert raw_get(shared, "/gradio_api/file=" + image, "ulla")[0] == 200
    assert raw_get(shared, "/gradio_api/file=" + image, "boss")[0] == 200  # an admin sees everyone's
    refused = raw_get(shared, "/gradio_api/file=" + image, "vera")
    assert refused[0] == 404 and b"not found" in refused[1]
    # Every other spelling of ulla's file, and files outside gradio's folders, answer vera the same way.
    folder, leaf = os.path.split(image)
    link = tmp_path / "link.webp"
    link.symlink_to(image)
    spellings = [f"{folder}/../{os.path.basename(folder)}/{leaf}", f"/{image}", image.replace("/", "//"),
                 quote(image, safe=""), os.path.relpath(image, ROOT), str(link), "/etc/passwd",
                 str(ROOT / "launch.py"), f"{folder}/missing.webp", "/tmp/gradio/no-such-folder/image.webp"]
    for spelling in spellings:
        assert raw_get(shared, "/gradio_api/file=" + spelling, "vera") == refused, spelling
    assert raw_get(shared, "/gradio_api/file=" + os.path.relpath(image, ROOT), "ulla")[0] == 200
    # Naming ulla's file as the input of a gradio call (PNG Info reads it) is refused before gradio sees it.
    as_input = [{"path": image, "meta": FILE_DATA}]
    assert start_call(shared, "vera", "read", as_input).status_code == 404
    assert start_call(shared, "vera", "read", [{"path": f"{folder}/../{os.path.basename(folder)}/{leaf}",
                                                "meta": FILE_DATA}]).status_code == 404
    assert gradio_call(shared, "ulla", "read", as_input)[0] == "complete"
    # Outside gradio's upload folder no file is an input, not even for an admin (the saved PNG of that image).
    saved = next((shared.data_dir / "outputs").glob("**/*-31.png"))
    assert start_call(shared, "boss", "read", [{"path": str(saved), "meta": FILE_DATA}]).status_code == 404


def test_uploads_belong_to_their_uploader(shared):
    mine = upload(shared, "vera", png_bytes(color="purple"))
    assert raw_get(shared, "/gradio_api/file=" + mine, "vera")[0] == 200
    assert raw_get(shared, "/gradio_api/file=" + mine, "ulla")[0] == 404
    assert raw_get(shared, "/gradio_api/file=" + mine, "boss")[0] == 200
    as_input = [{"path": mine, "meta": FILE_DATA}]
    assert start_call(shared, "ulla", "read", as_input).status_code == 404
    assert gradio_call(shared, "vera", "read", as_input)[0] == "complete"


# ---- 4. CORS: a refused origin gets no allow-origin header ---------------------------------------

@pytest.mark.parametrize("host,origin", [
    (None, "http://localhost:9999"), (None, "http://127.0.0.1:1"), ("10.20.30.40:7860", "https://evil.example"),
    ("localhost", "null"),
])
def test_a_refused_origin_gets_no_cors_headers(shared, host, origin):
    headers = {**bearer("ulla"), "Origin": origin, **({"Host": host} if host else {})}
    for method, path in (("POST", "/sdapi/v1/interrupt"), ("GET", "/sdapi/v1/options"), ("GET", "/config"),
                         ("OPTIONS", "/sdapi/v1/txt2img")):
        extra = {"Access-Control-Request-Method": "POST"} if method == "OPTIONS" else {}
        answer = requests.request(method, shared.url + path, headers={**headers, **extra}, timeout=30)
        assert answer.status_code == 403, (path, answer.status_code)
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")], answer.headers
    assert requests.get(shared.url + "/sdapi/v1/options", headers=bearer("ulla"), timeout=30).status_code == 200


# ---- 5. the brush editors obey --max-image-pixels ----------------------------------------------

def test_an_editor_image_over_the_pixel_limit_is_refused_naming_it(shared):
    # 1200 x 1200 = 1.44 M pixels: over the limit, under Pillow's own guard (2 x the limit).
    big = upload(shared, "vera", oversized_png(1200, 1200), "big.png")
    editor = {"background": {"path": big, "meta": FILE_DATA}, "layers": [], "composite": {"path": big, "meta": FILE_DATA}}
    editors = [p["label"] for p in shared.info["named_endpoints"]["/img2img"]["parameters"]
               if p["component"] == "Imageeditor"]
    assert len(editors) == 3  # Sketch, Inpaint, Inpaint sketch
    for label in editors:
        kind, payload = gradio_call(shared, "vera", "img2img", call_data(shared, "img2img", **{label: editor}))
        assert kind == "error" and "1,440,000 pixels" in payload and f"{MAX_PIXELS:,} pixels" in payload, payload
    small = upload(shared, "vera", png_bytes((64, 64)), "small.png")
    fine = {"background": {"path": small, "meta": FILE_DATA}, "layers": [], "composite": {"path": small, "meta": FILE_DATA}}
    kind, payload = gradio_call(shared, "vera", "img2img", call_data(shared, "img2img", **{editors[0]: fine}))
    assert "pixels" not in payload, payload  # an image within the limit reaches the handler


# ---- 6. admin-only actions, UI and API ----------------------------------------------------------

def test_admin_actions_are_refused_to_a_plain_user_in_the_ui_and_the_api(shared):
    checkpoints = shared.data_dir / "models" / "Stable-diffusion"
    (checkpoints / "dropped-in.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": trunc")
    ui_actions = {
        "refresh_checkpoints": [],
        "run_merge": [title(shared), title(shared), "None", "merged", 0.5, "Weighted sum", "fp16", "None"],
        "upload_files": call_data(shared, "upload_files", **{"Hub repo id (user/name)": "someone/x"}),
        "add_user": call_data(shared, "add_user"),
    }
    answers = {name: gradio_call(shared, "ulla", name, data) for name, data in ui_actions.items()}
    assert "dropped-in" not in answers["refresh_checkpoints"][1]  # the folder was not rescanned for her
    for name in ("run_merge", "upload_files", "add_user"):
        kind, payload = answers[name]
        assert kind == "error" and "admin" in payload, (name, payload)
    assert not list(checkpoints.glob("merged*"))
    assert "dropped-in" in gradio_call(shared, "boss", "refresh_checkpoints", [])[1]  # an admin's rescan lists it
    # gradio's run history would make the server call the Hub with a client's token: not served.
    for route in ("/gradio_api/run-history/buckets", "/gradio_api/run-history/records"):
        assert requests.get(shared.url + route, headers=bearer("boss"), timeout=30).status_code == 404, route
    refused = requests.post(f"{shared.url}/sdapi/v1/refresh-checkpoints", headers=bearer("ulla"), timeout=30)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    (checkpoints / "dropped-in.safetensors").unlink()
    # Presets are shared: a plain user adds new ones but does not replace one everybody uses.
    preset_label = "Save current settings as preset"
    assert gradio_call(shared, "ulla", "store_preset", call_data(shared, "store_preset", **{preset_label: "ullas"}))[0] == "complete"
    kind, payload = gradio_call(shared, "vera", "store_preset", call_data(shared, "store_preset", **{preset_label: "ullas"}))
    assert kind == "error" and "admin" in payload
    assert gradio_call(shared, "boss", "store_preset", call_data(shared, "store_preset", **{preset_label: "ullas"}))[0] == "complete"
    # Training over an existing model's name would replace it: an admin's action.
    replacing = requests.post(f"{shared.url}/sdapi/v1/train", headers=bearer("vera"), timeout=60,
                              json=train_body(shared, output_name="sd-studio-toy"))
    assert replacing.status_code == 422 and "admin" in replacing.json()["detail"], replacing.text


def title(server) -> str:
    return requests.get(f"{server.url}/sdapi/v1/sd-models", headers=bearer("boss"), timeout=30).json()[0]["title"]


# ---- 2. training progress belongs to the run's owner --------------------------------------------

def train_body(server, **changes) -> dict:
    """Ulla's run on her own dataset (a plain user's `datasets/` is `datasets/users/<name>/`)."""
    folder = server.data_dir / "datasets" / "users" / "ulla" / "shared-hexagons"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for index, image in enumerate(held_out_concept_images("hexagon", 4)):
            image.save(folder / f"hexagon_{index}.png")
    body = {"method": "lora", "output_name": "ulla_hex", "dataset_dir": folder.name, "trigger_word": "hxgn",
            "class_word": "shape", "resolution": 64, "min_bucket_resolution": 32, "max_bucket_resolution": 128,
            "bucket_step": 32, "rank": 4, "alpha": 4.0, "unet_lr": 0.002, "max_train_steps": 2000,
            "train_batch_size": 2, "sample_every_n_steps": 1, "sample_prompts": ["hxgn, a shape"], "sample_steps": 1}
    return {**body, **changes}


def train_progress(server, user: str) -> dict:
    answer = requests.get(f"{server.url}/sdapi/v1/train/progress", headers=bearer(user), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_only_the_owner_or_an_admin_sees_a_training_run(shared):
    started = requests.post(f"{shared.url}/sdapi/v1/train", headers=bearer("ulla"), json=train_body(shared), timeout=60)
    assert started.status_code == 202, started.text
    try:
        wait_until(lambda: train_progress(shared, "ulla")["step"] >= 2, message="ulla's run training")
        own = train_progress(shared, "ulla")
        assert own["name"] == "ulla_hex" and own["loss"] is not None and own["owner"] == "ulla"
        admin = train_progress(shared, "boss")
        assert admin["name"] == "ulla_hex" and admin["owner"] == "ulla"
        other = train_progress(shared, "vera")
        assert other["state"] == "busy" and other["name"] is None and other["loss"] is None
        assert "ulla" not in json.dumps(other) and "hxgn" not in json.dumps(other)
        # The Train tab's panel, as each of them opens it.
        panels = {user: gradio_call(shared, user, "reconnect", [title(shared)]) for user in ("ulla", "vera")}
        assert panels["ulla"][0] == "complete" and "ulla_hex" in panels["ulla"][1] and "gradio.FileData" in panels["ulla"][1]
        assert panels["vera"][0] == "complete" and "Another user" in panels["vera"][1]
        assert "ulla_hex" not in panels["vera"][1] and "gradio.FileData" not in panels["vera"][1]
        refused = requests.post(f"{shared.url}/sdapi/v1/train/cancel", headers=bearer("vera"), json={}, timeout=30)
        assert refused.json()["cancelled"] is False
        kind, payload = gradio_call(shared, "vera", "export_files", call_data(shared, "export_files"))
        assert kind == "error"
    finally:
        requests.post(f"{shared.url}/sdapi/v1/train/cancel", headers=bearer("ulla"), json={}, timeout=30)
    wait_until(lambda: train_progress(shared, "ulla")["finished"], message="ulla's run cancelled")
    assert train_progress(shared, "ulla")["state"] == "cancelled"
    after = train_progress(shared, "vera")
    assert after["state"] == "idle" and after["name"] is None


# ---- 3. a browser tab that goes away gives the worker back --------------------------------------

def test_a_ui_generation_whose_client_leaves_is_cancelled_and_the_next_job_runs(shared):
    outputs = shared.data_dir / "outputs"
    holder = threading.Thread(target=requests.post, args=(f"{shared.url}/sdapi/v1/txt2img",), daemon=True, kwargs={
        "json": {"prompt": "hold the worker", "width": 64, "height": 64, "steps": 150, "n_iter": 20},
        "headers": bearer("ulla"), "timeout": 600})
    holder.start()
    wait_until(lambda: api_progress(shared, "ulla")["state"].get("sampling_step", 0) >= 1, message="ulla's job running")
    started = start_call(shared, "vera", "txt2img", call_data(shared, "txt2img", Seed=4242))
    assert started.status_code == 200, started.text
    stream = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=600)
    stream.request("GET", f"/gradio_api/call/txt2img/{started.json()['event_id']}", headers=bearer("vera"))
    stream.getresponse()  # the event stream is open: gradio runs the event, which queues vera's job
    wait_until(lambda: api_progress(shared, "vera")["state"]["queue_position"] == 1, message="vera's job queued")
    stream.close()  # the tab is closed
    wait_until(lambda: api_progress(shared, "vera")["state"]["queue_position"] is None, message="vera's job cancelled")
    requests.post(f"{shared.url}/sdapi/v1/interrupt", headers=bearer("ulla"), json={}, timeout=30)
    holder.join(600)
    kind, payload = gradio_call(shared, "vera", "txt2img", call_data(shared, "txt2img", Seed=4343))
    assert kind == "complete", payload
    assert list(outputs.glob("**/*-4343.png")), "the next job did not run"
    assert not list(outputs.glob("**/*-4242.png")), "the job of the tab that went away ran"


def test_a_closed_page_stops_the_xyz_plot_it_started(shared):
    """The X/Y/Z tab follows its job with a timer, not a stream: gradio's `unload` (the page's heartbeat
    connection closes) is what tells the server the page is gone."""
    page = uuid.uuid4().hex
    heartbeat = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=600)
    heartbeat.request("GET", f"/gradio_api/heartbeat/{page}", headers=bearer("vera"))
    heartbeat.getresponse()
    data = call_data(shared, "start_plot", **{"X type": "Seed", "X values": "1-10", "Sampling steps": 150,
                                               "Prompt": "a plot nobody will see"})
    started = requests.post(f"{shared.url}/gradio_api/call/start_plot", json={"data": data, "session_hash": page},
                            headers=bearer("vera"), timeout=60)
    assert started.status_code == 200, started.text
    answer = requests.get(f"{shared.url}/gradio_api/call/start_plot/{started.json()['event_id']}",
                          headers=bearer("vera"), timeout=120).text
    assert "event: complete" in answer, answer[-500:]
    wait_until(lambda: api_progress(shared, "vera")["state"].get("sampling_step", 0) >= 1, message="the plot running")
    heartbeat.close()  # the page is closed
    wait_until(lambda: not api_progress(shared, "boss")["state"]["busy"], timeout=60, message="the plot stopped")
