"""Installing, updating and uninstalling extensions over HTTP on a running server, from a local git
repository (file:// URL), and A1111's GET /sdapi/v1/extensions (issue 16, items 4 and 7)."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import start_server, stop_server, with_default_model
from tests.support.extension_repos import commit_all, extension_repo, write_extension
from webui.security.users import UserStore

TOKENS: dict[str, str] = {}
EXTENSIONS = "/api/v1/extensions"


def accounts(data) -> None:
    store = UserStore(data / "users.json")
    for name, role in (("root", "admin"), ("alice", "user")):
        store.add_user(name, f"{name}-password-1", role)
        TOKENS[name] = store.create_token(name, "tests")


def call(url: str, method: str, path: str, user: str = "root", **kwargs) -> requests.Response:
    return requests.request(method, url + path, headers={"Authorization": f"Bearer {TOKENS[user]}"}, timeout=120,
                            **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("extension-admin"), default_model_folder)
    accounts(data)
    holder = {"server": start_server(data, "--api"), "repos": tmp_path_factory.mktemp("repos")}
    yield holder
    stop_server(holder["server"])


def listed(url: str) -> dict[str, dict]:
    answer = call(url, "GET", EXTENSIONS)
    assert answer.status_code == 200, answer.text
    return {row["name"]: row for row in answer.json()["extensions"]}


def test_install_update_uninstall_over_http_and_the_a1111_listing(served):
    url, repo = served["server"].url, served["repos"] / "hello"
    remote = extension_repo(repo, "hello", version="1.0.0")
    answer = call(url, "POST", f"{EXTENSIONS}/install", json={"url": remote})
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "hello" and "Installed hello 1.0.0" in answer.json()["message"]
    row = listed(url)["hello"]
    assert (row["state"], row["remote"], row["pending"]) == ("not loaded yet", remote, "loads at the next start")
    a1111 = {item["name"]: item for item in call(url, "GET", "/sdapi/v1/extensions", user="alice").json()}
    assert a1111["hello"]["remote"] == remote and a1111["hello"]["commit_hash"] == row["commit"]
    assert a1111["hello"]["enabled"] is True and a1111["hello"]["branch"] == "main"
    assert set(a1111["hello"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}

    write_extension(repo, "hello", version="1.1.0")
    second = commit_all(repo, "1.1.0")
    answer = call(url, "POST", f"{EXTENSIONS}/hello/update")
    assert answer.status_code == 200 and second[:10] in answer.json()["message"]
    assert listed(url)["hello"]["version"] == "1.1.0"

    answer = call(url, "DELETE", f"{EXTENSIONS}/hello")
    assert answer.status_code == 200 and "Uninstalled hello" in answer.json()["message"]
    assert "hello" not in listed(url)
    assert not (served["server"].data_dir / "extensions" / "hello").exists()


@pytest.mark.parametrize("body, status, reason", [
    ({"url": "--upload-pack=touch /tmp/x"}, 422, "must not start with '-'"),
    ({"url": "http://example.com/plain-http.git"}, 422, "not an accepted git URL"),
    ({"url": "file:///nowhere/at/all"}, 422, "cannot clone file:///nowhere/at/all"),
    ({"nope": 1}, 422, "url: Field required"),
])
def test_bad_install_requests_get_a_reason_and_the_server_keeps_serving(served, body, status, reason):
    url = served["server"].url
    answer = call(url, "POST", f"{EXTENSIONS}/install", json=body)
    assert answer.status_code == status and reason in answer.json()["detail"]
    assert call(url, "GET", "/sdapi/v1/sd-models").status_code == 200


def test_a_repository_without_a_manifest_is_refused(served):
    repo = served["repos"] / "plain"
    repo.mkdir()
    (repo / "README.md").write_text("not an extension\n")
    commit_all(repo, "plain")
    answer = call(served["server"].url, "POST", f"{EXTENSIONS}/install", json={"url": repo.as_uri()})
    assert answer.status_code == 422 and "no extension.toml" in answer.json()["detail"]
    assert sorted(p.name for p in (served["server"].data_dir / "extensions").iterdir()) == []


def test_only_admins_manage_extensions(served):
    url = served["server"].url
    remote = extension_repo(served["repos"] / "other", "other")
    answer = call(url, "POST", f"{EXTENSIONS}/install", user="alice", json={"url": remote})
    assert answer.status_code == 403 and "needs an admin account" in answer.json()["detail"]
    assert call(url, "GET", EXTENSIONS, user="alice").status_code == 403
    assert requests.get(url + "/sdapi/v1/extensions", timeout=30).status_code == 401


def test_an_installed_extension_runs_after_a_restart(served):
    url = served["server"].url
    remote = extension_repo(served["repos"] / "greeter", "greeter", version="2.0.0")
    assert call(url, "POST", f"{EXTENSIONS}/install", json={"url": remote}).status_code == 200
    data = served["server"].data_dir
    stop_server(served["server"])
    served["server"] = start_server(data, "--api")
    row = listed(served["server"].url)["greeter"]
    assert (row["state"], row["hooks"], row["problem"]) == ("loaded", ["app_started"], "")
    assert (data / "extension-data" / "greeter" / "hello.txt").read_text() == "2.0.0"
    answer = call(served["server"].url, "PUT", f"{EXTENSIONS}/greeter/enabled", json={"enabled": False})
    assert answer.status_code == 200 and "greeter is off" in answer.json()["message"]
    assert listed(served["server"].url)["greeter"]["state"] == "disabled"


def test_installs_are_refused_on_a_network_server(tmp_path, default_model_folder):
    data = with_default_model(tmp_path / "listening", default_model_folder)
    accounts(data)
    remote = extension_repo(tmp_path / "repo", "hello")
    running = start_server(data, "--api", "--listen")
    try:
        answer = call(running.url, "POST", f"{EXTENSIONS}/install", json={"url": remote})
        assert answer.status_code == 403
        assert "reachable from the network (--listen)" in answer.json()["detail"]
        assert "--enable-insecure-extension-access" in answer.json()["detail"]
        assert not (data / "extensions" / "hello").exists()
    finally:
        stop_server(running)
