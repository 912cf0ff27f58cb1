"""Which gradio files belong to whom (webui.security.served_files) and the share host rule, without a server."""

from __future__ import annotations

import asyncio
import json

from webui.security.middleware import HttpPolicy
from webui.security.served_files import ServedFiles, body_file_paths, file_paths, file_route_target, recording_send
from webui.security.server import build_server_security
from webui.security.store import SecurityStore
from webui.settings import settings_from_args


def test_file_values_are_found_but_strings_that_spell_paths_are_not():
    answer = {"data": [[{"image": {"path": "/c/a.webp", "meta": {"_type": "gradio.FileData"}}, "caption": None}],
                       "prompt /c/secret.webp", {"path": "/c/b.webp"}],
              "diff": [["replace", [0, "image", "path"], "/c/d.webp"], ["replace", [1], "/c/e.webp"],
                       ["append", [2, "path"], ".webp"]]}
    assert sorted(file_paths(answer)) == ["/c/a.webp", "/c/b.webp", "/c/d.webp"]
    assert body_file_paths(b'{"data": ["{\\"path\\": \\"/c/x\\"}"]}') == []  # a prompt holding JSON text
    assert body_file_paths(b"not json") == []


def test_a_file_belongs_to_whoever_was_handed_it_under_any_spelling(tmp_path):
    served = ServedFiles()
    image = tmp_path / "cache" / "abc" / "image.webp"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    link = tmp_path / "link.webp"
    link.symlink_to(image)
    served.record(str(image), "ulla")
    for spelling in (str(image), f"{tmp_path}/cache/abc/../abc/image.webp", f"{tmp_path}//cache/abc/image.webp",
                     str(link)):
        assert served.belongs_to(spelling, "ulla"), spelling
        assert not served.belongs_to(spelling, "vera"), spelling
    served.record(str(link), "vera")  # the same bytes shown to two users: both may fetch it
    assert served.belongs_to(str(image), "vera") and served.belongs_to(str(image), "ulla")
    assert not served.belongs_to("/etc/passwd", "ulla") and not served.belongs_to("", "ulla")
    assert not served.belongs_to(f"{image}\x00", "ulla")


def test_the_record_is_bounded_oldest_first_and_forgets_old_files():
    now = [1000.0]
    served = ServedFiles(store=SecurityStore(":memory:", max_served=2, served_days=1, clock=lambda: now[0],
                                             prune_every=1))
    for name in ("/c/1", "/c/2", "/c/3"):
        now[0] += 1
        served.record(name, "ulla")
    assert not served.belongs_to("/c/1", "ulla") and served.belongs_to("/c/2", "ulla")
    now[0] += 2 * 24 * 3600  # past `served_days`: no longer fetchable, even before it is pruned
    assert not served.belongs_to("/c/3", "ulla")


def test_the_record_and_sessions_survive_a_new_store_on_the_same_file(tmp_path):
    from webui.security.identity import USER, User

    path = tmp_path / "security.sqlite3"
    first = SecurityStore(path)
    ServedFiles(store=first).record("/c/ulla.png", "ulla")
    first.add_session("cookie-value", User("ulla", USER), expires=9e12)
    first.add_session("token-login", User("admin", "admin"), expires=9e12, access_token="start-token")
    first.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert b"cookie-value" not in path.read_bytes()  # only a digest of the cookie is stored
    again = SecurityStore(path)
    assert ServedFiles(store=again).belongs_to("/c/ulla.png", "ulla")
    assert not ServedFiles(store=again).belongs_to("/c/ulla.png", "vera")
    assert again.session("cookie-value", access_token=None) == (User("ulla", USER), False)
    assert again.session("token-login", access_token="next-start-token") is None  # a new token ends them
    assert again.session("token-login", access_token="start-token") is None  # and they were deleted
    assert again.session("unknown", access_token=None) is None


def test_an_unreadable_store_is_moved_aside_and_a_fresh_one_used(tmp_path):
    path = tmp_path / "security.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = SecurityStore(path)
    store.record_files(["/c/x"], "ulla")
    assert store.file_belongs_to("/c/x", "ulla")
    assert [p.name for p in tmp_path.glob("security.sqlite3.corrupt-*")]


def test_the_file_route_names_its_target():
    assert file_route_target("/gradio_api/file=/tmp/gradio/a/b.png") == "/tmp/gradio/a/b.png"
    assert file_route_target("/gradio_api/upload") is None


def test_streamed_and_uploaded_answers_record_their_files_for_the_reader():
    served, sent = ServedFiles(), []

    async def send(message: dict) -> None:
        sent.append(message)

    async def replay(route: str, content_type: bytes, chunks: list[bytes]) -> None:
        wrapped = recording_send(send, served, "ulla", route)
        await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for index, chunk in enumerate(chunks):
            await wrapped({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    message = json.dumps({"msg": "process_completed", "output": {"data": [{"path": "/c/streamed.webp"}]}}).encode()
    half = len(message) // 2
    stream = [b"data: " + message[:half], message[half:] + b"\n\n", b'data: {"msg": "close_stream"}\n\n']
    upload = [b'["/c/up', b'loaded.png"]']
    asyncio.run(replay("/gradio_api/queue/data", b"text/event-stream; charset=utf-8", stream))
    asyncio.run(replay("/gradio_api/upload", b"application/json", upload))
    assert served.belongs_to("/c/streamed.webp", "ulla") and served.belongs_to("/c/uploaded.png", "ulla")
    assert not served.belongs_to("/c/streamed.webp", "vera")
    assert b"".join(m.get("body", b"") for m in sent) == b"".join(stream + upload)  # passed on unchanged


def test_share_links_are_served_by_their_host_name_and_suffix_entries_match_subdomains(tmp_path):
    shared = build_server_security(settings_from_args(["--share", "--data-dir", str(tmp_path)]))
    assert shared.policy.host_allowed("a1b2c3.gradio.live") and not shared.policy.host_allowed("gradio.live.evil.example")
    local = build_server_security(settings_from_args(["--data-dir", str(tmp_path)]))
    assert not local.policy.host_allowed("a1b2c3.gradio.live")
    policy = HttpPolicy(allowed_hosts=(".example.net",))
    assert policy.host_allowed("gpu.example.net:7860") and not policy.host_allowed("example.net.evil.org")


def test_call_inputs_must_lie_in_gradios_upload_folder_for_admins_too(tmp_path):
    uploads = tmp_path / "gradio"
    (uploads / "h").mkdir(parents=True)
    (uploads / "h" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    (uploads / "h" / "out.png").symlink_to(tmp_path / "secret.png")
    served = ServedFiles(roots=(str(uploads),))
    served.record(str(uploads / "h" / "a.png"), "ulla")
    assert served.may_pass(str(uploads / "h" / "a.png"), "ulla", is_admin=False)
    assert not served.may_pass(str(uploads / "h" / "a.png"), "vera", is_admin=False)
    assert served.may_pass(str(uploads / "h" / "a.png"), "boss", is_admin=True)
    for outside in (str(tmp_path / "secret.png"), str(uploads / "h" / "out.png"), f"{uploads}/../secret.png", ""):
        assert not served.may_pass(outside, "boss", is_admin=True), outside
    assert not ServedFiles().may_pass(str(uploads / "h" / "a.png"), "boss", is_admin=True)  # no folder: nothing
