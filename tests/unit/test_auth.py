"""Accounts, tokens, login backoff and the security middleware's rules, on a tiny ASGI app."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from webui.security.accounts import AccountService
from webui.security.auth import SESSION_COOKIE, Authenticator, Credentials, LoginThrottle, TooManyAttempts
from webui.security.identity import ADMIN, LOCAL_ADMIN, USER, Forbidden, User, request_user
from webui.security.middleware import HttpPolicy, SecurityMiddleware
from webui.security.served_files import ServedFiles
from webui.security.server import build_server_security, startup_banner
from webui.security.users import AccountError, UserStore, verify_password
from webui.settings import settings_from_args


def make_app(authenticator: Authenticator, policy: HttpPolicy | None = None) -> TestClient:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict:
        user = request_user(request)
        return {"name": user.name, "role": user.role}

    @app.post("/act")
    async def act(request: Request) -> dict:
        return {"by": request_user(request).name, "size": len(await request.body())}

    app.add_middleware(SecurityMiddleware, authenticator=authenticator, policy=policy or HttpPolicy())
    return TestClient(app, base_url="http://127.0.0.1:7860")


def basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


# ---- accounts ----

def test_passwords_are_hashed_and_the_file_is_private(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(path)
    store.add_user("alice", "correct horse", USER)
    text = path.read_text()
    assert "correct horse" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = UserStore(path)
    assert again.check_password("alice", "correct horse") == User("alice", USER)
    assert again.check_password("alice", "wrong password") is None
    assert again.check_password("nobody", "correct horse") is None
    assert verify_password("x", "not-a-hash") is False


def test_tokens_are_shown_once_stored_as_digests_and_revocable(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(path)
    store.add_user("bob", "long enough", ADMIN)
    secret = store.create_token("bob", "bot")
    assert secret not in path.read_text()
    assert UserStore(path).user_for_token(secret) == User("bob", ADMIN)
    [record] = store.tokens_of("bob")
    store.revoke_token("bob", record.token_id)
    assert UserStore(path).user_for_token(secret) is None


@pytest.mark.parametrize("name,password,role,reason", [
    ("../etc", "long enough", USER, "user name"),
    ("..", "long enough", USER, "user name"),  # also a folder name: outputs/users/<name>/
    (".hidden", "long enough", USER, "user name"),
    ("carol", "short", USER, "at least"),
    ("carol", "long enough", "root", "role"),
])
def test_bad_accounts_are_refused_with_a_reason(tmp_path, name, password, role, reason):
    with pytest.raises(AccountError, match=reason):
        UserStore(tmp_path / "users.json").add_user(name, password, role)


def test_flag_accounts_are_admins_kept_out_of_the_file_and_the_last_admin_stays(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(path, flag_accounts=(("root", "from the flag"),))
    assert store.check_password("root", "from the flag") == User("root", ADMIN)
    store.add_user("dora", "long enough", ADMIN)
    assert "root" not in json.loads(path.read_text())["users"]
    with pytest.raises(AccountError, match="--auth"):
        store.remove_user("root")
    alone = UserStore(tmp_path / "other.json")
    alone.add_user("eve", "long enough", ADMIN)
    with pytest.raises(AccountError, match="last admin"):
        alone.remove_user("eve")


def test_account_rules_users_manage_their_tokens_admins_manage_accounts(tmp_path):
    store = UserStore(tmp_path / "users.json")
    service = AccountService(Authenticator(store))
    with pytest.raises(AccountError, match="first account must be an admin"):
        service.add_user(LOCAL_ADMIN, "frank", "long enough", USER)
    service.add_user(LOCAL_ADMIN, "admin1", "long enough", ADMIN)
    plain = service.add_user(User("admin1", ADMIN), "frank", "long enough", USER)
    with pytest.raises(Forbidden):
        service.add_user(plain, "mallory", "long enough", ADMIN)
    with pytest.raises(Forbidden):
        service.users(plain)
    service.create_token(plain, "mine")
    assert [row.label for row in service.tokens(plain)] == ["mine"]
    assert service.tokens(User("admin1", ADMIN)) == []
    with pytest.raises(AccountError, match="accounts"):
        service.create_token(LOCAL_ADMIN, "nope")


# ---- backoff ----

def test_failed_logins_back_off_and_a_success_clears_them():
    throttle = LoginThrottle(free_attempts=2)
    throttle.failed("ip:1")
    throttle.check("ip:1")
    throttle.failed("ip:1")
    with pytest.raises(TooManyAttempts):
        throttle.check("ip:1")
    throttle.check("ip:2")
    throttle.succeeded("ip:1")
    throttle.check("ip:1")


# ---- middleware ----

def test_open_server_is_the_local_admin_but_still_refuses_foreign_hosts_and_origins():
    client = make_app(Authenticator(UserStore(None)))
    assert client.get("/whoami").json() == {"name": LOCAL_ADMIN.name, "role": ADMIN}
    answer = client.get("/whoami", headers={"Host": "evil.example"})
    assert answer.status_code == 400 and "allowed-hosts" in answer.json()["detail"]
    assert client.get("/whoami", headers={"Host": "192.168.1.20:7860"}).status_code == 200
    for origin in ("https://evil.example", "http://localhost:9999", "null"):
        refused = client.post("/act", headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert "access-control-allow-origin" not in refused.headers
    assert client.post("/act", headers={"Origin": "http://127.0.0.1:7860"}).status_code == 200


def test_allowed_hosts_and_origins_come_from_the_policy():
    policy = HttpPolicy(allowed_hosts=("gpu.example.net",), allowed_origins=("https://app.example",))
    client = make_app(Authenticator(UserStore(None)), policy)
    assert client.get("/whoami", headers={"Host": "gpu.example.net:7860"}).status_code == 200
    answer = client.get("/whoami", headers={"Origin": "https://app.example"})
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    preflight = client.options("/act", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and "POST" in preflight.headers["access-control-allow-methods"]


def test_token_link_starts_a_session_and_drops_the_token_from_the_url():
    client = make_app(Authenticator(UserStore(None), access_token="start-up-secret"))
    assert client.get("/whoami").status_code == 401
    page = client.get("/whoami", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    link = client.get("/whoami?token=start-up-secret&x=1", follow_redirects=False)
    assert link.status_code == 303 and link.headers["location"] == "/whoami?x=1"
    assert SESSION_COOKIE in link.cookies
    assert client.get("/whoami").json()["role"] == ADMIN
    assert client.get("/whoami?token=wrong").status_code == 200  # the session still holds


def test_sessions_outlive_the_authenticator_but_not_their_account_or_the_start_up_token(tmp_path):
    from webui.security.store import SecurityStore

    users = UserStore(tmp_path / "users.json")
    users.add_user("root", "long enough", ADMIN)
    users.add_user("ida", "long enough", USER)
    first = Authenticator(users, store=SecurityStore(tmp_path / "security.sqlite3"))
    session = first.start_session(User("ida", USER))
    restarted = Authenticator(UserStore(tmp_path / "users.json"), store=SecurityStore(tmp_path / "security.sqlite3"))
    assert restarted.authenticate(Credentials("1.2.3.4", session=session)) == User("ida", USER)
    users.remove_user("ida")
    assert restarted.authenticate(Credentials("1.2.3.4", session=session)) is None
    by_token = Authenticator(UserStore(None), access_token="first-token", store=SecurityStore(tmp_path / "t.sqlite3"))
    token_session = by_token.start_session(by_token.token_user("first-token", "1.2.3.4"))
    again = Authenticator(UserStore(None), access_token="first-token", store=SecurityStore(tmp_path / "t.sqlite3"))
    assert again.authenticate(Credentials("1.2.3.4", session=token_session)) is not None
    next_start = Authenticator(UserStore(None), access_token="new-token", store=SecurityStore(tmp_path / "t.sqlite3"))
    assert next_start.authenticate(Credentials("1.2.3.4", session=token_session)) is None


def test_cookie_sessions_need_json_or_an_origin_for_changes_bearer_clients_do_not():
    store = UserStore(None, flag_accounts=(("gina", "password1"),))
    client = make_app(Authenticator(store))
    login = client.post("/login", data={"username": "gina", "password": "password1", "next": "/whoami"},
                        follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/whoami"
    form_like = client.post("/act", content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form_like.status_code == 403
    assert client.post("/act", json={}).json()["by"] == "gina"
    assert client.post("/act", headers={"Origin": "http://127.0.0.1:7860"}).status_code == 200
    anonymous = TestClient(client.app, base_url="http://127.0.0.1:7860")
    assert anonymous.post("/act", headers=basic("gina", "password1")).json()["by"] == "gina"


def test_login_redirects_only_inside_the_server_and_wrong_logins_back_off():
    client = make_app(Authenticator(UserStore(None, flag_accounts=(("hal", "password1"),)),
                                    throttle=LoginThrottle(free_attempts=3)))
    escaped = client.post("/login", data={"username": "hal", "password": "password1", "next": "//evil.example/x"},
                          follow_redirects=False)
    assert escaped.headers["location"] == "/"
    fresh = TestClient(client.app, base_url="http://127.0.0.1:7860")
    statuses = [fresh.post("/login", data={"username": "hal", "password": f"wrong{i}"}).status_code for i in range(5)]
    assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429
    throttled = fresh.get("/whoami", headers=basic("hal", "password1"))
    assert throttled.status_code == 429 and "retry-after" in throttled.headers


def test_body_limit_refuses_declared_and_chunked_bodies():
    client = make_app(Authenticator(UserStore(None)), HttpPolicy(max_body_bytes=1000))
    assert client.post("/act", content=b"x" * 999).json()["size"] == 999
    assert client.post("/act", content=b"x" * 1001).status_code == 413

    def chunks():
        for _ in range(20):
            yield b"x" * 100

    assert client.post("/act", content=chunks()).status_code == 413


# ---- start-up ----

def test_listen_without_auth_creates_a_token_and_says_where_it_listens(tmp_path):
    settings = settings_from_args(["--listen", "--data-dir", str(tmp_path)], environ={})
    security = build_server_security(settings)
    token = security.authenticator.access_token
    assert token and not security.authenticator.open
    banner = "\n".join(startup_banner(settings, security))
    assert "0.0.0.0" in banner and f"?token={token}" in banner
    insecure = settings_from_args(["--listen", "--insecure-no-auth", "--data-dir", str(tmp_path)], environ={})
    security = build_server_security(insecure)
    assert security.authenticator.open and "WARNING" in "\n".join(startup_banner(insecure, security))
    local = build_server_security(settings_from_args(["--data-dir", str(tmp_path)], environ={}))
    assert local.authenticator.open and local.authenticator.access_token is None


def test_accounts_from_the_environment_and_bad_origins_in_flags(tmp_path):
    settings = settings_from_args(["--listen", "--data-dir", str(tmp_path)], environ={"SDSTUDIO_AUTH": "ivy:password1"})
    security = build_server_security(settings)
    assert security.authenticator.access_token is None
    assert security.authenticator.users.check_password("ivy", "password1") == User("ivy", ADMIN)
    from webui.settings import SettingsError

    with pytest.raises(SettingsError, match="cors-allow-origins"):
        settings_from_args(["--cors-allow-origins", "evil.example/path"], environ={})


def test_a_running_store_sees_accounts_written_by_another_process_and_survives_a_broken_file(tmp_path):
    path = tmp_path / "users.json"
    running = UserStore(path, flag_accounts=(("root", "from the flag"),))
    UserStore(path).add_user("kim", "long enough", USER)
    secret = UserStore(path).create_token("kim", "cli")
    assert running.user_for_token(secret) == User("kim", USER)
    assert running.check_password("root", "from the flag") == User("root", ADMIN)
    path.write_text("{broken")
    assert running.user_for_token(secret) == User("kim", USER)
    with pytest.raises(AccountError, match="cannot read"):
        UserStore(path)


def test_the_accounts_command_line_adds_lists_and_mints_tokens(tmp_path, capsys, monkeypatch):
    from webui.security.users_cli import main

    monkeypatch.setenv("SDSTUDIO_PASSWORD", "typed at a prompt")
    assert main(["--data-dir", str(tmp_path), "add", "lee", "--role", "admin"]) == 0
    assert main(["--data-dir", str(tmp_path), "token", "lee", "--label", "bot"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert UserStore(tmp_path / "users.json").user_for_token(secret) == User("lee", ADMIN)
    assert main(["--data-dir", str(tmp_path), "add", "lee"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "list"]) == 0
    assert "lee\tadmin\t1 token(s)" in capsys.readouterr().out


def test_gradio_is_never_asked_to_fetch_a_url_for_a_client():
    app = FastAPI()

    @app.post("/gradio_api/call/{name}")
    async def call(name: str, request: Request) -> dict:
        return {"got": len(await request.body())}

    @app.get("/gradio_api/file={path:path}")
    def file(path: str) -> dict:
        return {"path": path}

    app.add_middleware(SecurityMiddleware, authenticator=Authenticator(UserStore(None)), policy=HttpPolicy(),
                       served=ServedFiles(roots=("/tmp/gradio",)))
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    remote = {"data": [{"path": "https://example.invalid/x.png", "meta": {"_type": "gradio.FileData"}}]}
    refused = client.post("/gradio_api/call/img2img", json=remote)
    assert refused.status_code == 403 and "upload" in refused.json()["detail"]
    prompt_mentioning_it = {"data": ['a prompt with "path": "https://example.invalid" in it']}
    assert client.post("/gradio_api/call/txt2img", json=prompt_mentioning_it).status_code == 200
    local = {"data": [{"path": "/tmp/gradio/abc/x.png", "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/abc/x.png"}]}
    assert client.post("/gradio_api/call/img2img", json=local).status_code == 200
    for path in ("/gradio_api/file=https://example.invalid/x", "/gradio_api/file=https%3A//example.invalid/x",
                 "/gradio_api/proxy=http://example.invalid/"):
        assert client.get(path).status_code == 403, path
    assert client.get("/gradio_api/file=/tmp/gradio/abc/x.png").status_code == 200
