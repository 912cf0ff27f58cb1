"""Whose files gradio serves: every file a user uploads or is shown is theirs, and only theirs to fetch.

gradio keeps every upload and every image it shows (gallery outputs, live previews, training samples) in
its cache folder (`GRADIO_TEMP_DIR`, default `/tmp/gradio`) as `<sha256(install seed + bytes)>/<name>`,
and `GET /gradio_api/file=<path>` serves any file there to anyone logged in; a gradio call may also name
such a path as its input (`{"path": ...}`), which makes a handler read it. The names are not guessable
without the bytes and the install's seed, but they reach other users wherever a path is shown, and the
files stay until the cache is cleared.

gradio's own rule for inputs (only files in its upload folder) is not applied to an app mounted with
`gr.mount_gradio_app`, as SD Studio's is, so it is applied here, for every user, admins included: a file
value in a gradio call must lie in gradio's upload folder (`roots`).

So the middleware keeps a record, per data folder, of which user each served file was handed to: the paths
gradio returns from an upload, and the file values (`{"path": ...}` objects, and the `path` edits of a
streamed update) in the answers a user's own gradio calls stream back to them. A plain user may then
fetch, or pass as input, only files recorded as theirs; anything else, existing or not, gets the same
404. Admins are not limited. Paths are compared after resolving `..` and symlinks, so no spelling of a
path (absolute, relative, `..`, percent-encoded, through a link) reaches a file that is not theirs.

The record lives in the `SecurityStore` (webui.security.store), so it survives a restart: a user can
still fetch the images they were shown before it, and nobody else can. Two users who upload identical
bytes get the same cache file (gradio names it by content hash); it is then recorded for both, which
reveals nothing: each already holds those bytes (docs/SECURITY.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator

from webui.security.paths import is_within
from webui.security.store import SecurityStore

FILE_ROUTE = "/gradio_api/file="
UPLOAD_ROUTE = "/gradio_api/upload"
NOT_FOUND = "file not found: it was never shown to you on this server (upload it again)"
MAX_JSON_ANSWER = 16 * 1024 * 1024  # larger JSON answers are passed on without being read for paths

Send = Callable[[dict], Awaitable[None]]


def file_key(path: str) -> str:
    """The file a path names, as gradio opens it: made absolute against the working directory, then
    with symlinks and `..` resolved (what the operating system will actually open)."""
    return os.path.realpath(os.path.abspath(path))


def file_route_target(route: str) -> str | None:
    """The path of a `/gradio_api/file=<path>` route (already percent-decoded by the server), else None."""
    return route[len(FILE_ROUTE):] if route.startswith(FILE_ROUTE) else None


@dataclass
class ServedFiles:
    """Which users each served file belongs to (a file with the same bytes may belong to several)."""

    roots: tuple[str, ...] = ()  # gradio's upload folder(s): the only place a call's file inputs may be
    store: SecurityStore = field(default_factory=SecurityStore.in_memory, repr=False)  # where the record lives

    def record(self, path: str, owner: str) -> None:
        self.record_many([path], owner)

    def record_many(self, paths: Iterable[str], owner: str) -> None:
        """Record files handed to `owner` in one write (a gallery answer names many)."""
        keys = []
        for path in paths:
            if path and "\x00" not in path:
                try:
                    keys.append(file_key(path))
                except (OSError, ValueError):
                    continue
        self.store.record_files(keys, owner)

    def may_pass(self, path: str, owner: str, is_admin: bool) -> bool:
        """Whether a gradio call may name this file as an input: inside gradio's upload folder, and for
        a plain user handed to them (an admin may pass anyone's)."""
        if not path or "\x00" in path:
            return False
        inside = any(is_within(file_key(path), root) for root in self.roots)
        return inside and (is_admin or self.belongs_to(path, owner))

    def belongs_to(self, path: str, owner: str) -> bool:
        if not path or "\x00" in path:
            return False
        try:
            key = file_key(path)
        except (OSError, ValueError):
            return False
        return self.store.file_belongs_to(key, owner)


# ---- file values in gradio's JSON ----

def file_paths(node: Any) -> Iterator[str]:
    """Paths of the file values in a gradio request or answer: the `path` of every object that has one
    (FileData, image editor values, gallery items), and the new value of a streamed `replace`/`add` edit
    whose key is `path`. Plain strings are not paths: a prompt that spells a path names no file."""
    if isinstance(node, dict):
        if isinstance(node.get("path"), str):
            yield node["path"]
        for value in node.values():
            yield from file_paths(value)
    elif isinstance(node, list):
        if (len(node) == 3 and node[0] in ("replace", "add") and isinstance(node[1], list) and node[1]
                and node[1][-1] == "path" and isinstance(node[2], str)):
            yield node[2]
        for value in node:
            yield from file_paths(value)


def body_file_paths(body: bytes) -> list[str]:
    """File values a gradio call (JSON body) passes as inputs; [] for a body that is not JSON."""
    try:
        return list(file_paths(json.loads(body)))
    except (ValueError, RecursionError):
        return []


def recording_send(send: Send, served: ServedFiles, owner: str, route: str) -> Send:
    """Wrap `send` so that the files in this answer are recorded as `owner`'s as they go out.

    Upload answers are a JSON list of the stored paths; gradio's event streams (`text/event-stream`)
    carry one JSON message per `data:` line; other JSON answers are read whole (up to a bound)."""
    state: dict[str, Any] = {"kind": None, "buffer": b""}

    def record_json(text: bytes) -> None:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return
        if route == UPLOAD_ROUTE and isinstance(value, list):
            served.record_many((item for item in value if isinstance(item, str)), owner)
            return
        served.record_many(file_paths(value), owner)

    def record_stream(chunk: bytes, final: bool) -> None:
        state["buffer"] += chunk
        if len(state["buffer"]) > MAX_JSON_ANSWER:  # not gradio's stream of short messages: stop reading
            state["kind"], state["buffer"] = None, b""
            return
        *complete, state["buffer"] = state["buffer"].replace(b"\r\n", b"\n").split(b"\n\n")
        if final:
            complete.append(state["buffer"])
            state["buffer"] = b""
        for message in complete:
            for line in message.split(b"\n"):
                if line.startswith(b"data:"):
                    record_json(line[5:].strip())

    async def send_recording(message: dict) -> None:
        if message["type"] == "http.response.start":
            content_type = next((v.decode("latin-1") for k, v in message.get("headers", [])
                                 if k.lower() == b"content-type"), "")
            state["kind"] = ("stream" if content_type.startswith("text/event-stream")
                             else "json" if "json" in content_type else None)
        elif message["type"] == "http.response.body" and state["kind"] is not None:
            chunk, final = message.get("body", b""), not message.get("more_body", False)
            if state["kind"] == "stream":
                record_stream(chunk, final)
            else:
                state["buffer"] += chunk
                if len(state["buffer"]) > MAX_JSON_ANSWER:
                    state["kind"], state["buffer"] = None, b""
                elif final:
                    record_json(state["buffer"])
        await send(message)

    return send_recording
