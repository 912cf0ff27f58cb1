"""Issue #14's attacks on auth, hosts, origins and bodies, replayed against real servers.

One server is started as people start it on a rented GPU (`--listen`, no accounts: a start-up token),
one with accounts (`--auth-file` admin + a plain user with an API token in users.json).
"""

from __future__ import annotations

import json
import re
import time

import psutil
import pytest
import requests

from tests.conftest import start_server, stop_server, with_default_model
from webui.security.users import UserStore


@pytest.fixture(scope="module")
def listening(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("listen"), default_model_folder)
    running = start_server(data, "--listen", "--api", "--max-body-mb", "1")
    running.token = re.search(r"\?token=([A-Za-z0-9_-]+)", running.log()).group(1)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def accounts(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("accounts"), default_model_folder)
    store = UserStore(data / "users.json")
    store.add_user("ulla", "user password", "user")
    auth_file = data / "auth.txt"
    auth_file.write_text("boss:admin-password-9\n")
    running = start_server(data, "--api", "--auth-file", str(auth_file))
    running.user_token = store.create_token("ulla", "script")
    yield running
    stop_server(running)


def session_for(server) -> requests.Session:
    session = requests.Session()
    assert session.get(f"{server.url}/?token={server.token}", timeout=30).status_code == 200
    return session


# ---- item 2: --listen without auth ----

def test_listen_prints_the_real_bind_address_and_a_token_login(listening):
    log = listening.log()
    assert "running on http://0.0.0.0:" in log
    assert "localhost" not in log.split("running on", 1)[1].splitlines()[0]
    assert f"?token={listening.token}" in log


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"), ("POST", "/gradio_api/call/load_captions"),
    ("POST", "/gradio_api/upload"), ("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/train"),
    ("POST", "/sdapi/v1/interrupt"), ("GET", "/sdapi/v1/cmd-flags"),
    ("GET", "/sdapi/v1/memory"), ("GET", "/sdapi/v1/embeddings"), ("GET", "/sdapi/v1/script-info"),
    ("POST", "/sdapi/v1/extra-single-image"),
])
def test_every_route_needs_the_token_and_leaks_nothing(listening, method, path):
    answer = requests.request(method, listening.url + path, json={"data": ["/etc", ".txt"]}, timeout=30,
                              allow_redirects=False)
    assert answer.status_code == 401
    assert "sd-studio-toy" not in answer.text and "txt2img" not in answer.text


def test_a_browser_is_sent_to_the_login_page_which_shows_no_app(listening):
    page = requests.get(listening.url + "/", headers={"Accept": "text/html"}, timeout=30)
    assert page.url.startswith(listening.url + "/login")
    assert 'name="token"' in page.text and "txt2img" not in page.text and "sd-studio-toy" not in page.text
    assert "txt2img_prompt" in session_for(listening).get(listening.url + "/", timeout=30).text


def test_foreign_host_names_are_refused_even_with_the_token(listening):
    session = session_for(listening)
    answer = session.get(listening.url + "/sdapi/v1/options", headers={"Host": "evil.example"}, timeout=30)
    assert answer.status_code == 400 and "evil.example" in answer.json()["detail"]
    assert session.get(listening.url + "/sdapi/v1/options", timeout=30).status_code == 200


# ---- item 6: CSRF, CORS ----

@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    {"Origin": "http://localhost:9999"},
    {"Origin": "null", "Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
])
def test_cross_site_posts_with_the_session_cookie_are_refused(listening, headers):
    session = session_for(listening)
    for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/train/cancel", "/sdapi/v1/refresh-checkpoints"):
        answer = session.post(listening.url + path, data="x=1", headers=headers, timeout=30)
        assert answer.status_code == 403, path
        assert "cross" in answer.json()["detail"]
        assert "access-control-allow-origin" not in answer.headers  # a refusal allows no origin
    same_page = session.post(listening.url + "/sdapi/v1/interrupt", json={}, timeout=30)
    assert same_page.status_code == 200


# ---- body limit ----

def test_oversized_bodies_are_refused_before_reading_and_the_server_keeps_serving(listening):
    session = session_for(listening)
    answer = session.post(listening.url + "/sdapi/v1/txt2img", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "larger than 1 MB" in answer.json()["detail"]
    assert session.get(listening.url + "/sdapi/v1/options", timeout=30).status_code == 200


# ---- accounts, roles, tokens, secrets ----

def test_admin_and_user_roles_over_http(accounts):
    admin, user = ("boss", "admin-password-9"), ("ulla", "user password")
    url = accounts.url + "/sdapi/v1"
    assert requests.get(f"{url}/options", auth=("boss", "wrong"), timeout=30).status_code == 401
    assert requests.post(f"{url}/refresh-checkpoints", auth=admin, timeout=60).status_code == 200
    refused = requests.post(f"{url}/refresh-checkpoints", auth=user, timeout=30)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    bearer = {"Authorization": f"Bearer {accounts.user_token}"}
    assert requests.get(f"{url}/sd-models", headers=bearer, timeout=30).status_code == 200
    assert requests.get(f"{url}/sd-models", headers={"Authorization": "Bearer sds_forged"}, timeout=30).status_code == 401


def test_only_an_admin_changes_everyones_options_but_anyone_overrides_for_one_request(accounts):
    admin, user = ("boss", "admin-password-9"), ("ulla", "user password")
    url = accounts.url + "/sdapi/v1"
    tiny = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    refused = requests.post(f"{url}/options", json={"samples_save": False}, auth=user, timeout=30)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    kept = requests.post(f"{url}/txt2img", json={**tiny, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                                  "override_settings_restore_afterwards": False}, auth=user, timeout=300)
    assert kept.status_code == 403 and "override_settings_restore_afterwards" in kept.json()["detail"]
    once = requests.post(f"{url}/txt2img", json={**tiny, "override_settings": {"CLIP_stop_at_last_layers": 2}},
                         auth=user, timeout=300)
    assert once.status_code == 200 and json.loads(once.json()["info"])["clip_skip"] == 2
    assert requests.get(f"{url}/options", auth=user, timeout=30).json()["CLIP_stop_at_last_layers"] == 1
    assert requests.post(f"{url}/options", json={"CLIP_stop_at_last_layers": 2}, auth=admin, timeout=30).status_code == 200
    assert requests.get(f"{url}/options", auth=user, timeout=30).json()["CLIP_stop_at_last_layers"] == 2
    assert requests.post(f"{url}/options", json={"CLIP_stop_at_last_layers": 1}, auth=admin, timeout=30).status_code == 200


def test_secrets_are_not_in_flags_the_process_list_or_the_log(accounts):
    flags = requests.get(f"{accounts.url}/sdapi/v1/cmd-flags", auth=("boss", "admin-password-9"), timeout=30).text
    command_line = " ".join(psutil.Process(accounts.process.pid).cmdline())
    for secret in ("admin-password-9", "user password", accounts.user_token):
        assert secret not in flags and secret not in command_line and secret not in accounts.log()


def test_login_form_sets_a_session_for_the_ui(accounts):
    session = requests.Session()
    answer = session.post(accounts.url + "/login", data={"username": "ulla", "password": "user password", "next": "/"},
                          timeout=30)
    assert answer.status_code == 200 and "txt2img_prompt" in answer.text


def gradio_call(session: requests.Session, url: str, name: str, data: list) -> str:
    """Call a gradio endpoint like its client does; the text of the event stream that answers."""
    started = session.post(f"{url}/gradio_api/call/{name}", json={"data": data}, timeout=30)
    assert started.status_code == 200, started.text
    return session.get(f"{url}/gradio_api/call/{name}/{started.json()['event_id']}", timeout=120).text


def test_a_plain_user_cannot_merge_checkpoints_in_the_ui_but_an_admin_can_try(accounts):
    user, admin = requests.Session(), requests.Session()
    user.post(accounts.url + "/login", data={"username": "ulla", "password": "user password"}, timeout=30)
    admin.post(accounts.url + "/login", data={"username": "boss", "password": "admin-password-9"}, timeout=30)
    title = requests.get(f"{accounts.url}/sdapi/v1/sd-models", auth=("boss", "admin-password-9"), timeout=30).json()[0]["title"]
    args = [title, title, "None", "merged", 0.5, "Weighted sum", "fp16", "None"]
    refused = gradio_call(user, accounts.url, "run_merge", args)
    assert "event: error" in refused and "admin" in refused
    assert not list((accounts.data_dir / "models" / "Stable-diffusion").glob("merged*"))
    done = gradio_call(admin, accounts.url, "run_merge", args)
    assert "event: complete" in done and "merged" in done


def test_the_ui_never_fetches_a_url_a_client_names(listening):
    session = session_for(listening)
    remote = {"data": [{"path": "https://example.invalid/x.png", "meta": {"_type": "gradio.FileData"}}]}
    answer = session.post(listening.url + "/gradio_api/call/read", json=remote, timeout=30)
    assert answer.status_code == 403 and "upload" in answer.json()["detail"]
    proxied = session.get(listening.url + "/gradio_api/file=https://example.invalid/x.png", timeout=30)
    assert proxied.status_code == 403


# ---- login backoff (last: it throttles this client address for a few seconds) ----

def test_repeated_wrong_tokens_are_throttled_then_allowed_again(listening):
    statuses = [requests.get(f"{listening.url}/sdapi/v1/options", timeout=30,
                             headers={"Authorization": f"Bearer wrong-{i}"}).status_code for i in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429
    throttled = requests.get(f"{listening.url}/sdapi/v1/options", headers={"Authorization": f"Bearer {listening.token}"},
                             timeout=30)
    assert throttled.status_code == 429
    time.sleep(int(throttled.headers["retry-after"]) + 0.5)
    allowed = requests.get(f"{listening.url}/sdapi/v1/options", headers={"Authorization": f"Bearer {listening.token}"},
                           timeout=30)
    assert allowed.status_code == 200
