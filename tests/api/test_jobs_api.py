"""The job API (/api/v1/jobs) against a running server: submit, follow as server-sent events, download,
cancel, resume a cancelled training run, webhooks, owners, bad input, and queued jobs (a training run
among them) surviving a restart.

One API-only server with two users and an admin (API tokens), webhooks on and a signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from PIL import Image

from sdstudio_eval.toy_world import held_out_concept_images
from tests.conftest import free_port, start_server, stop_server, with_default_model
from webui.security.users import UserStore

JOBS = "/api/v1/jobs"
SECRET = "webhook-test-secret"
TINY = {"prompt": "a red circle on a blue background", "width": 64, "height": 64, "steps": 2, "seed": 5}
TOKENS: dict[str, str] = {}
DATASET = "jobs-hexagons"  # alice's datasets/users/alice/jobs-hexagons


def tiny_training(output_name: str, **changes) -> dict:
    """Two 64 px images in one batch: one step per epoch, and a saved state after every epoch."""
    return {"method": "lora", "output_name": output_name, "dataset_dir": DATASET, "trigger_word": "hxgn",
            "class_word": "shape", "resolution": 64, "min_bucket_resolution": 32, "max_bucket_resolution": 128,
            "bucket_step": 32, "rank": 4, "alpha": 4.0, "unet_lr": 0.002, "max_train_steps": 2,
            "train_batch_size": 2, "sample_every_n_steps": 0, "save_state": True, "save_every_n_epochs": 1,
            **changes}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("jobs-server"), default_model_folder)
    store = UserStore(data / "users.json")
    for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
        store.add_user(name, f"{name}-password", role)
        TOKENS[name] = store.create_token(name, "tests")
    dataset = data / "datasets" / "users" / "alice" / DATASET
    dataset.mkdir(parents=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 2)):
        image.save(dataset / f"hexagon_{index}.png")
    running = start_server(data, "--nowebui", "--allow-webhooks", env={"SDSTUDIO_WEBHOOK_SECRET": SECRET})
    holder = {"server": running}
    yield holder
    stop_server(holder["server"])


def call(server, method: str, path: str, user: str = "alice", **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 120)
    headers = {"Authorization": f"Bearer {TOKENS[user]}", **kwargs.pop("headers", {})}
    return requests.request(method, server["server"].url + path, headers=headers, **kwargs)


def submit(server, kind: str, request: dict, user: str = "alice", **extra) -> dict:
    response = call(server, "POST", JOBS, user, json={"kind": kind, "request": request, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def follow(server, job_id: str, user: str = "alice", after: int | None = None) -> list[tuple[int, str, dict]]:
    """Read the job's event stream until `finished`: (id, type, data) triples."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    events: list[tuple[int, str, dict]] = []
    with call(server, "GET", f"{JOBS}/{job_id}/events", user, stream=True, headers=headers, timeout=300) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines(decode_unicode=True):
            if line == "":
                if "event" in fields:
                    events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                    if fields["event"] == "finished":
                        break
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
    return events


def wait_done(server, job_id: str, user: str = "alice") -> dict:
    follow(server, job_id, user)
    return call(server, "GET", f"{JOBS}/{job_id}", user).json()


class WebhookReceiver:
    """A local HTTP endpoint that records the webhook calls it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append(({key.lower(): value for key, value in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_a_txt2img_job_is_followed_live_and_its_image_downloaded(server):
    job = submit(server, "txt2img", TINY)
    assert job["kind"] == "txt2img" and job["state"] in ("queued", "running") and job["owner"] == "alice"
    events = follow(server, job["id"])
    types = [kind for _, kind, _ in events]
    assert types[0] == "queued" and "started" in types and types[-1] == "finished"
    assert [seq for seq, _, _ in events] == sorted(seq for seq, _, _ in events)
    steps = [data for _, kind, data in events if kind == "progress" and data["total"] == 2]
    assert steps and steps[-1]["step"] == 2
    finished = events[-1][2]
    assert finished["state"] == "done" and finished["job"]["images"] == [f"{JOBS}/{job['id']}/images/0"]

    detail = call(server, "GET", f"{JOBS}/{job['id']}").json()
    assert detail["state"] == "done" and detail["position"] is None and detail["worker"]
    assert "a red circle on a blue background" in detail["infotexts"][0] and "Seed: 5" in detail["infotexts"][0]
    image = call(server, "GET", detail["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)

    # A client that reconnects with Last-Event-ID gets only what it missed.
    again = follow(server, job["id"], after=events[-2][0])
    assert [kind for _, kind, _ in again] == ["finished"]


def test_a_waiting_job_is_cancelled_and_never_runs_and_a_running_one_is_interrupted(server):
    long = submit(server, "txt2img", {**TINY, "steps": 30, "n_iter": 6})
    waiting = submit(server, "txt2img", TINY)
    assert waiting["state"] == "queued" and waiting["position"] >= 1
    stopped = call(server, "DELETE", f"{JOBS}/{waiting['id']}")
    assert stopped.status_code == 200 and stopped.json()["stopped"] == "cancelled"
    detail = call(server, "GET", f"{JOBS}/{waiting['id']}").json()
    assert detail["state"] == "cancelled" and detail["started_at"] is None and detail["images"] == []

    follow_until_started(server, long["id"])
    assert call(server, "POST", f"{JOBS}/{long['id']}/skip").json()["skipped"] is True
    assert call(server, "DELETE", f"{JOBS}/{long['id']}").json()["stopped"] == "interrupted"
    finished = wait_done(server, long["id"])
    assert finished["state"] == "interrupted" and finished["result"]["interrupted"] is True
    again = call(server, "DELETE", f"{JOBS}/{long['id']}")
    assert again.status_code == 409 and "finished" in again.json()["detail"]
    assert call(server, "POST", f"{JOBS}/{long['id']}/skip").status_code == 409


def follow_until_started(server, job_id: str) -> list[tuple[int, str, dict]]:
    events: list[tuple[int, str, dict]] = []
    with call(server, "GET", f"{JOBS}/{job_id}/events", stream=True, timeout=300) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                events.append((0, line[7:], {}))
                if line[7:] in ("started", "finished"):
                    break
    return events


def test_users_see_and_stop_only_their_own_jobs_and_the_admin_sees_all(server):
    mine = submit(server, "txt2img", TINY, user="bob")
    assert call(server, "GET", f"{JOBS}/{mine['id']}", "alice").status_code == 404
    assert call(server, "DELETE", f"{JOBS}/{mine['id']}", "alice").status_code == 404
    assert call(server, "GET", f"{JOBS}/{mine['id']}/events", "alice").status_code == 404
    assert call(server, "GET", f"{JOBS}/{mine['id']}", "root").json()["owner"] == "bob"
    wait_done(server, mine["id"], "bob")
    assert call(server, "GET", f"{JOBS}/{mine['id']}/images/0", "alice").status_code == 404
    listed = call(server, "GET", JOBS, "alice").json()["jobs"]
    assert listed and {job["owner"] for job in listed} == {"alice"}
    everyone = {job["owner"] for job in call(server, "GET", JOBS, "root").json()["jobs"]}
    assert {"alice", "bob"} <= everyone
    assert call(server, "GET", f"{JOBS}?owner=bob", "alice").status_code == 403
    done = call(server, "GET", f"{JOBS}?state=done&kind=txt2img", "bob").json()["jobs"]
    assert [job["id"] for job in done] == [mine["id"]]


def test_a_webhook_is_called_signed_when_the_job_ends_and_a_dead_one_is_recorded(server):
    receiver = WebhookReceiver()
    try:
        job = submit(server, "txt2img", TINY, webhook=receiver.url)
        assert receiver.arrived.wait(120), "the webhook was never called"
        headers, body = receiver.calls[0]
        payload = json.loads(body)
        assert payload["id"] == job["id"] and payload["state"] == "done" and payload["result"]["images"]
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-sdstudio-signature"] == f"sha256={expected}"  # header names are case-insensitive
    finally:
        receiver.close()
    dead = submit(server, "txt2img", TINY, webhook=f"http://127.0.0.1:{free_port()}/gone")
    detail = wait_done(server, dead["id"])
    assert detail["state"] == "done"  # the job itself is fine
    for _ in range(100):
        detail = call(server, "GET", f"{JOBS}/{dead['id']}").json()
        if (detail["webhook"] or {}).get("status"):
            break
        threading.Event().wait(0.2)
    assert detail["webhook"]["status"].startswith("failed after 2 attempts")


@pytest.mark.parametrize("body, status, reason", [
    ({"kind": "paint", "request": {}}, 422, "use one of txt2img, img2img, xyz-plot, extras, train"),
    ({"kind": "txt2img", "request": {"steps": "many", "pad": "x" * 1000}}, 422, "request: steps"),
    ('{"kind": "txt2img", "request": {"width": 1e400}}', 422, "width"),
    ({"kind": "txt2img", "request": TINY, "webhook": "ftp://example.com/x"}, 422, "http:// or https://"),
    ({"kind": "xyz-plot", "request": {**TINY, "x": {"type": "No such axis", "values": "1"}}}, 422, "No such axis"),
    ({"kind": "train", "request": {"method": "lora", "dataset_dir": "/etc"}}, 422, ""),
])
def test_bad_jobs_are_refused_with_a_reason_and_nothing_is_queued(server, body, status, reason):
    before = len(call(server, "GET", f"{JOBS}?limit=500", "root").json()["jobs"])
    if isinstance(body, str):  # JSON that a client library would refuse to write (1e400)
        response = call(server, "POST", JOBS, data=body, headers={"Content-Type": "application/json"})
    else:
        response = call(server, "POST", JOBS, json=body)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"] and "xxxxxxxx" not in response.text
    assert len(call(server, "GET", f"{JOBS}?limit=500", "root").json()["jobs"]) == before


def test_unknown_ids_answer_404_and_the_api_is_documented(server):
    assert call(server, "GET", f"{JOBS}/not-a-job").status_code == 404
    assert call(server, "DELETE", f"{JOBS}/not-a-job").status_code == 404
    assert requests.get(server["server"].url + JOBS, timeout=30).status_code == 401  # no token, no jobs
    schema = call(server, "GET", "/openapi.json").json()
    assert {f"{JOBS}", f"{JOBS}/{{job_id}}", f"{JOBS}/{{job_id}}/events", "/sdapi/v1/txt2img"} <= set(schema["paths"])
    assert call(server, "GET", "/docs").status_code == 200


def test_an_xyz_plot_job_runs_every_cell(server):
    job = submit(server, "xyz-plot", {**TINY, "x": {"type": "CFG Scale", "values": "3, 9"}})
    detail = wait_done(server, job["id"])
    assert detail["state"] == "done" and "CFG Scale" in detail["infotexts"][0]
    grid = Image.open(io.BytesIO(call(server, "GET", detail["images"][0]).content))
    assert grid.width >= 128  # two cells side by side


def saved_state_steps(server, output_name: str) -> dict[str, int]:
    """{state folder name: its step} of alice's saved states of `output_name`."""
    folder = server["server"].data_dir / "training" / "users" / "alice" / "states"
    return {state.name: json.loads((state / "state.json").read_text())["step"]
            for state in folder.glob(f"{output_name}-*state") if (state / "state.json").is_file()}


def test_a_cancelled_training_run_is_resumed_in_one_call_from_its_last_saved_state(server):
    # A run cancelled while it waited never started: nothing to resume, and the trainer is free again.
    blocker = submit(server, "txt2img", {**TINY, "steps": 40, "n_iter": 8})
    waiting = submit(server, "train", tiny_training("jobs_waits"))
    assert call(server, "DELETE", f"{JOBS}/{waiting['id']}").json()["stopped"] == "cancelled"
    refused = call(server, "POST", f"{JOBS}/{waiting['id']}/resume")
    assert refused.status_code == 409 and "no saved state" in refused.json()["detail"]
    assert "never started" in refused.json()["detail"]
    call(server, "DELETE", f"{JOBS}/{blocker['id']}")
    refused = call(server, "POST", f"{JOBS}/{blocker['id']}/resume")
    assert refused.status_code == 409 and "only training jobs can be resumed" in refused.json()["detail"]

    # Cancel a run after its first saved state; resume it; it goes on from there to the end.
    first = submit(server, "train", tiny_training("jobs_hex", max_train_steps=4))
    deadline = time.monotonic() + 300
    while not saved_state_steps(server, "jobs_hex") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call(server, "DELETE", f"{JOBS}/{first['id']}").json()["stopped"] == "interrupted"
    stopped = wait_done(server, first["id"])
    assert stopped["state"] == "interrupted" and stopped["result"]["outcome"] == "cancelled"
    states = saved_state_steps(server, "jobs_hex")
    last_name, last_step = max(states.items(), key=lambda item: item[1])
    assert 1 <= last_step < 4, states

    assert call(server, "POST", f"{JOBS}/{first['id']}/resume", "bob").status_code == 404  # not bob's job
    resumed = call(server, "POST", f"{JOBS}/{first['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    new = resumed.json()
    assert new["kind"] == "train" and new["owner"] == "alice" and new["id"] != first["id"]
    assert new["resumed_from"] == first["id"] and new["state_name"] == last_name
    assert call(server, "GET", f"{JOBS}/{first['id']}").json()["resumed_as"] == new["id"]
    again = call(server, "POST", f"{JOBS}/{first['id']}/resume")
    assert again.status_code == 409 and f"resumed already as job {new['id'][:8]}" in again.json()["detail"]
    busy = call(server, "POST", f"{JOBS}/{new['id']}/resume")
    assert busy.status_code == 409 and "still" in busy.json()["detail"]

    finished = wait_done(server, new["id"])
    assert finished["state"] == "done" and finished["result"]["outcome"] == "done"
    assert any(file.endswith("jobs_hex.safetensors") for file in finished["result"]["files"])
    run = call(server, "GET", "/sdapi/v1/train/progress").json()
    assert run["step"] == run["total"] == 4 and f"resumed at step {last_step}" in run["messages"]
    done = call(server, "POST", f"{JOBS}/{new['id']}/resume")
    assert done.status_code == 409 and "nothing left to train" in done.json()["detail"]


def test_queued_jobs_survive_a_restart_and_run_after_it(server):
    running = submit(server, "txt2img", {**TINY, "steps": 40, "n_iter": 8})
    queued = submit(server, "txt2img", {**TINY, "seed": 77})
    training = submit(server, "train", tiny_training("jobs_after_restart"))
    follow_until_started(server, running["id"])
    data_dir = server["server"].data_dir
    stop_server(server["server"])
    server["server"] = start_server(data_dir, "--nowebui", "--allow-webhooks", env={"SDSTUDIO_WEBHOOK_SECRET": SECRET})
    interrupted = call(server, "GET", f"{JOBS}/{running['id']}").json()
    assert interrupted["state"] == "interrupted" and "stopped" in interrupted["error"]
    detail = wait_done(server, queued["id"])
    assert detail["state"] == "done" and "Seed: 77" in detail["infotexts"][0]
    trained = wait_done(server, training["id"])
    assert trained["state"] == "done" and trained["started_at"] > detail["started_at"]
    assert any(file.endswith("jobs_after_restart.safetensors") for file in trained["result"]["files"])
