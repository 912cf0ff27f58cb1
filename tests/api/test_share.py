"""`--share` without internet (issue #14, item 2): gradio's tunnel cannot be made here, so what is tested is
everything around it. A server started with `--share` and no accounts requires the start-up token like
`--listen`, binds 127.0.0.1 only (the tunnel connects from this machine), serves the tunnel's
`*.gradio.live` host name and no other, and logs that the share link could not be created while it keeps
serving. A second server, whose share request gets no answer at all (a silent proxy, as on a network that
drops packets), starts and serves all the same and warns once it gave up waiting.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import psutil
import pytest
import requests

from tests.conftest import start_server, stop_server, with_default_model
from webui.settings import SHARE_TIMEOUT_S

SHARE_FAILED = "could not create a share link"


def wait_for_log(server, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return server.log()
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{server.log()[-3000:]}")


def listening_addresses(server) -> set[str]:
    port = int(server.url.rsplit(":", 1)[1])
    process = psutil.Process(server.process.pid)
    return {conn.laddr.ip for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("share"), default_model_folder)
    running = start_server(data, "--share", "--api")
    running.token = re.search(r"\?token=([A-Za-z0-9_-]+)", running.log()).group(1)
    yield running
    stop_server(running)


def test_share_requires_the_start_up_token_like_listen(shared):
    for method, path in (("GET", "/"), ("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/interrupt"),
                         ("GET", "/gradio_api/info")):
        answer = requests.request(method, shared.url + path, timeout=30, allow_redirects=False)
        assert answer.status_code == 401, (path, answer.status_code)
        assert "sd-studio-toy" not in answer.text
    bearer = {"Authorization": f"Bearer {shared.token}"}
    models = requests.get(shared.url + "/sdapi/v1/sd-models", headers=bearer, timeout=30)
    assert models.status_code == 200 and "sd-studio-toy" in models.text
    session = requests.Session()
    assert "txt2img_prompt" in session.get(f"{shared.url}/?token={shared.token}", timeout=30).text


def test_share_binds_this_machine_only_and_says_so(shared):
    banner = shared.log().split("running on", 1)[1].splitlines()[0]
    assert banner.startswith(" http://127.0.0.1:") and "(this machine only)" in banner
    assert "Login with the access token: http://127.0.0.1:" in shared.log()
    assert listening_addresses(shared) == {"127.0.0.1"}


def test_the_tunnels_host_name_is_served_and_others_are_not(shared):
    bearer = {"Authorization": f"Bearer {shared.token}"}
    through_tunnel = requests.get(shared.url + "/sdapi/v1/sd-models", timeout=30,
                                  headers={**bearer, "Host": "abc123def.gradio.live"})
    assert through_tunnel.status_code == 200
    rebound = requests.get(shared.url + "/sdapi/v1/sd-models", timeout=30, headers={**bearer, "Host": "evil.example"})
    assert rebound.status_code in (400, 403) and "sd-studio-toy" not in rebound.text


def test_without_internet_a_warning_is_logged_and_the_server_keeps_serving(shared):
    log = wait_for_log(shared, SHARE_FAILED, timeout=SHARE_TIMEOUT_S + 60)
    assert "Traceback" not in log and "Public share link" not in log
    bearer = {"Authorization": f"Bearer {shared.token}"}
    assert requests.get(shared.url + "/sdapi/v1/progress", headers=bearer, timeout=30).status_code == 200
    assert shared.process.poll() is None


class SilentProxy:
    """A local TCP port that accepts connections and never answers: a share server that cannot be reached."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_share_request_that_gets_no_answer_does_not_hold_up_the_start(tmp_path, default_model_folder):
    proxy = SilentProxy()
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    data = with_default_model(tmp_path, default_model_folder)
    running = start_server(data, "--share", "--api",
                           env={"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url, "NO_PROXY": "", "no_proxy": ""})
    try:
        token = re.search(r"\?token=([A-Za-z0-9_-]+)", running.log()).group(1)
        # Serving while gradio's request still waits for an answer.
        deadline = time.monotonic() + 30
        while not proxy.held and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proxy.held and SHARE_FAILED not in running.log(), running.log()
        answer = requests.get(running.url + "/sdapi/v1/progress", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200
        log = wait_for_log(running, SHARE_FAILED, timeout=SHARE_TIMEOUT_S + 60)
        assert f"within {SHARE_TIMEOUT_S} s" in log and "Traceback" not in log
        assert requests.get(running.url + "/sdapi/v1/progress", headers={"Authorization": f"Bearer {token}"},
                            timeout=30).status_code == 200
    finally:
        stop_server(running)
        proxy.close()
