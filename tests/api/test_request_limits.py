"""Issue #14's memory, echo and starvation attacks (items 3, 4, 5 and the 500s of item 6), replayed
against one running server and checked closed: each gets a 4xx with a reason and the server answers
the next request.

The server has accounts (plain users and one admin, each with an API token) so that job owners can be
told apart; small queue bounds make the flood tests quick.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from PIL import Image

from tests.conftest import start_server, stop_server, with_default_model
from tests.support.oversized_png import oversized_png, oversized_png_base64
from webui.security.users import UserStore

MAX_QUEUE, MAX_PER_USER = 8, 3
TINY = {"width": 64, "height": 64, "steps": 1}
RSS_BOUND = 300 * 1024 * 1024
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "watcher", "user0", "user1", "user2", "user3")
ADMIN = "root"
TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("limits-server"), default_model_folder)
    store = UserStore(data / "users.json")
    for name in USERS + (ADMIN,):
        store.add_user(name, f"{name}-password", "admin" if name == ADMIN else "user")
        TOKENS[name] = store.create_token(name, "tests")
    running = start_server(data, "--api", "--max-queue", str(MAX_QUEUE), "--max-queue-per-user", str(MAX_PER_USER))
    yield running
    stop_server(running)


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def post(server, route: str, body: dict | str, user: str = "alice", **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 300)
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {"Content-Type": "application/json", **as_user(user)}
    return requests.post(f"{server.url}/sdapi/v1/{route}", data=data, headers=headers, **kwargs)


def progress(server, user: str, timeout: float = 10) -> dict:
    response = requests.get(f"{server.url}/sdapi/v1/progress", headers=as_user(user), timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def assert_still_serving(server) -> None:
    response = post(server, "txt2img", {**TINY, "prompt": "still alive"})
    assert response.status_code == 200, response.text


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def wait_until(condition, timeout: float = 120, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{message} not reached in {timeout}s"
        time.sleep(0.05)


# ---- item 4: unknown fields are ignored and never echoed -------------------------------------------

def test_unknown_fields_are_ignored_and_never_echoed(server):
    pad = "x" * (2 * 1024 * 1024)
    response = post(server, "txt2img", {**TINY, "prompt": "echo check", "pad": pad,
                                        "override_settings": {"sd_vae": "Automatic", "not_a_setting": pad}})
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 200 * 1024 and "xxxxxxxx" not in response.text
    parameters = response.json()["parameters"]
    assert "pad" not in parameters and parameters["prompt"] == "echo check"
    assert set(parameters["override_settings"]) == {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers",
                                                    "samples_save", "upscaler_for_img2img"}


# ---- item 6: NaN, Infinity and out-of-range numbers -------------------------------------------------

@pytest.mark.parametrize("raw_body,field", [
    ('{"seed": 1e400}', "seed"),
    ('{"width": NaN}', "width"),
    ('{"override_settings": {"CLIP_stop_at_last_layers": Infinity}}', "override_settings.CLIP_stop_at_last_layers"),
    ('{"cfg_scale": -Infinity}', "cfg_scale"),
    ('{"subseed_strength": NaN}', "subseed_strength"),
    ('{"seed": 99999999999999999999}', "seed"),
    ('{"steps": 1e300}', "steps"),
])
def test_non_finite_and_out_of_range_numbers_get_422_naming_the_field(server, raw_body, field):
    response = post(server, "txt2img", raw_body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(field), detail
    assert_still_serving(server)


def test_a_body_that_is_not_json_gets_a_reason(server):
    response = post(server, "txt2img", '{"prompt": "unterminated')
    assert response.status_code == 422 and "JSON" in response.json()["detail"]


def test_prompt_length_and_work_per_request_are_limited(server):
    too_long = post(server, "txt2img", {**TINY, "prompt": "a " * 20000})
    assert too_long.status_code == 422 and "prompt is 40,000 characters long" in too_long.json()["detail"]
    too_much = post(server, "txt2img", {**TINY, "steps": 150, "n_iter": 8, "batch_size": 4})
    assert too_much.status_code == 422 and "exceeds the limit of 4000 steps" in too_much.json()["detail"]


# ---- item 3: images are sized from their header, before decoding ------------------------------------

def test_a_15000_pixel_square_png_gets_413_not_500(server):
    bomb = oversized_png_base64(15000, 15000)
    for route, body in (("png-info", {"image": bomb}),
                        ("img2img", {**TINY, "init_images": [bomb]}),
                        ("img2img", {**TINY, "init_images": [png_base64(Image.new("RGB", (64, 64)))], "mask": bomb})):
        response = post(server, route, body)
        assert response.status_code == 413, response.text
        assert "too many pixels" in response.json()["detail"] and "16,777,216" in response.json()["detail"]
    assert_still_serving(server)


def test_six_parallel_oversized_images_do_not_reach_the_decoder(server):
    bomb = oversized_png_base64(12000, 12000)  # 420 KB of PNG, 432 MB once decoded
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def watch_rss() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_rss)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda route: post(server, route, {"image": bomb} if route == "png-info" else
                                                   {**TINY, "init_images": [bomb]}),
                                ["png-info"] * 3 + ["img2img"] * 3))
    done.set()
    watcher.join()
    assert [answer.status_code for answer in answers] == [413] * 6, [answer.text[:200] for answer in answers]
    assert all("pixels" in answer.json()["detail"] for answer in answers)
    assert peak[0] - before < RSS_BOUND, f"RSS grew by {(peak[0] - before) / 2**20:.0f} MB"
    assert_still_serving(server)


def test_gradio_uploads_are_bounded_in_bytes_and_pixels(server):
    big = requests.post(f"{server.url}/gradio_api/upload", headers=as_user("alice"), timeout=120,
                        files={"files": ("big.png", b"\x00" * (51 * 1024 * 1024), "image/png")})
    assert big.status_code == 413 and "maximum allowed size" in big.text
    uploaded = requests.post(f"{server.url}/gradio_api/upload", headers=as_user("alice"), timeout=120,
                             files={"files": ("bomb.png", oversized_png(12000, 12000, channels=1), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    # The PNG Info tab's handler ("read"), called as the browser does: an error naming the size, no decode.
    call = requests.post(f"{server.url}/gradio_api/call/read", headers=as_user("alice"), timeout=60,
                         json={"data": [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}]})
    answer = requests.get(f"{server.url}/gradio_api/call/read/{call.json()['event_id']}", headers=as_user("alice"),
                          timeout=120).text
    assert "event: error" in answer and "144000000 pixels" in answer, answer[:500]
    assert_still_serving(server)


# ---- item 5: starvation, disconnects, bounded queue, owners -----------------------------------------

class LongJob:
    """A txt2img request in a thread that keeps the worker busy until interrupted (20 x 150 steps)."""

    def __init__(self, server, user: str):
        self.server, self.user, self.response = server, user, None
        self.body = {**TINY, "steps": 150, "n_iter": 20, "prompt": f"long job of {user}"}
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        wait_until(lambda: progress(server, user)["state"].get("sampling_step", 0) >= 1, message="the long job running")

    def _run(self) -> None:
        self.response = post(self.server, "txt2img", self.body, self.user, timeout=600)

    def finish(self) -> requests.Response:
        self.thread.join(600)
        return self.response


def test_only_the_owner_or_an_admin_sees_and_stops_the_running_job(server):
    job = LongJob(server, "alice")
    try:
        own = progress(server, "alice")
        assert own["state"]["sampling_steps"] == 150 and own["state"]["queue_position"] == 0
        other = progress(server, "bob")
        assert other["state"]["busy"] is True and other["current_image"] is None and other["textinfo"] is None
        assert "sampling_step" not in other["state"] and other["state"]["queue_position"] is None
        refused = post(server, "interrupt", {}, "bob")
        assert refused.status_code == 403 and "belongs to another user" in refused.json()["detail"]
        assert post(server, "skip", {}, "bob").status_code == 403
        assert post(server, "interrupt", {}, ADMIN).json() == {"interrupted": True}
    finally:
        post(server, "interrupt", {}, "alice")
    response = job.finish()
    assert json.loads(response.json()["info"])["interrupted"] is True


def open_request(server, body: dict, user: str) -> http.client.HTTPConnection:
    """Send a txt2img request and leave it waiting; `close()` on the result is the client going away."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=600)
    connection.request("POST", "/sdapi/v1/txt2img", body=json.dumps(body),
                       headers={"Content-Type": "application/json", **as_user(user)})
    return connection


def test_a_disconnected_clients_queued_job_never_runs_and_its_running_job_is_interrupted(server):
    outputs = server.data_dir / "outputs"
    alice = open_request(server, {**TINY, "steps": 150, "n_iter": 20, "seed": 1000, "save_images": True}, "alice")
    wait_until(lambda: progress(server, "alice")["state"].get("sampling_step", 0) >= 1, message="alice's job running")
    bob = open_request(server, {**TINY, "seed": 4242, "save_images": True, "prompt": "gone"}, "bob")
    wait_until(lambda: progress(server, "bob")["state"]["queue_position"] == 1, message="bob's job queued")
    bob.close()
    wait_until(lambda: progress(server, "bob")["state"]["queue_position"] is None, message="bob's job cancelled")
    alice.close()
    wait_until(lambda: not progress(server, ADMIN)["state"]["busy"], message="alice's job interrupted")
    assert_still_serving(server)
    assert not list(outputs.glob("**/*-4242.png")), "the disconnected client's queued job ran"
    saved = [path for path in outputs.glob("**/*.png")
             if not path.name.startswith("grid") and 1000 <= int(path.stem.split("-")[1]) < 1020]
    assert len(saved) < 20, "the running job of the disconnected client was not interrupted"


def test_80_queued_requests_are_answered_or_refused_and_progress_keeps_answering(server):
    codes: Counter = Counter()
    slowest_progress = [0.0]
    finished = threading.Event()

    def request(number: int) -> None:
        codes[post(server, "txt2img", {**TINY, "prompt": f"flood {number}"}, f"user{number % 4}").status_code] += 1

    def poll() -> None:
        while not finished.is_set():
            started = time.monotonic()
            progress(server, "watcher", timeout=10)  # a generous client timeout, not a speed goal
            slowest_progress[0] = max(slowest_progress[0], time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(80) as pool:
            list(pool.map(request, range(80)))
    finally:
        finished.set()
        poller.join()
    assert sum(codes.values()) == 80 and set(codes) <= {200, 429, 503}, codes
    assert codes[200] >= 1 and codes[429] + codes[503] >= 1, codes  # some ran, the rest were refused at the door
    assert_still_serving(server)


def test_a_full_share_answers_429_and_a_full_queue_503_with_a_reason(server):
    holder = LongJob(server, "carol")  # 1 job of carol's runs
    # Fill the queue: 2 more of carol's (her share: 3), 3 of dave's, 2 of erin's: 8 jobs in all.
    waiting_users = ["carol"] * (MAX_PER_USER - 1) + ["dave"] * MAX_PER_USER + ["erin"] * 2
    try:
        with ThreadPoolExecutor(len(waiting_users)) as pool:
            queued = [pool.submit(post, server, "txt2img", {**TINY, "prompt": f"queued {n}"}, user)
                      for n, user in enumerate(waiting_users)]
            wait_until(lambda: progress(server, ADMIN)["state"]["job_count"] == MAX_QUEUE,
                       message="the queue filled")
            mine = post(server, "txt2img", TINY, "carol")
            assert mine.status_code == 429 and "the most one user may have (3)" in mine.json()["detail"]
            everyone = post(server, "txt2img", TINY, "frank")
            assert everyone.status_code == 503 and "queue is full" in everyone.json()["detail"]
            assert everyone.headers.get("Retry-After")
            assert progress(server, "erin")["state"]["queue_position"] >= 1  # erin sees her place in line
            post(server, "interrupt", {}, "carol")
            assert [future.result().status_code for future in queued] == [200] * len(waiting_users)
    finally:
        post(server, "interrupt", {}, "carol")
        holder.finish()
    assert_still_serving(server)
