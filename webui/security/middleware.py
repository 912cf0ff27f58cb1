"""One ASGI middleware in front of every route (gradio's UI, uploads and queue, the API, the login page).

In order, for each HTTP/websocket request:
1. Host allow-list: names that resolve here (localhost, IP literals) and `--allowed-hosts`; anything
   else is refused, which defeats DNS rebinding (a hostile page's own domain pointed at this machine).
2. Origin: a request that carries an `Origin` must come from this server's own origin or one named with
   `--cors-allow-origins` (which also gets CORS headers). Browsers send `Origin` with every cross-site
   POST, so this stops cross-site forms and scripts (CSRF) for logged-in and open servers alike.
3. Body size: `Content-Length` over the limit answers 413 before reading; a chunked body is counted.
4. Who is asking (`webui.security.auth`): the login form and `?token=` start a session cookie; Bearer
   and Basic headers are checked per request; failures back off. Unauthenticated browser navigation
   goes to the login page, anything else gets 401.
5. A state-changing request authenticated only by the session cookie must show it came from our own
   page: a same-origin `Origin` or a JSON body.
6. gradio routes that would fetch a URL for the client are refused (`webui.security.remote_fetch`).
7. A plain user fetches (`/gradio_api/file=`) or passes as input only the files gradio handed to them;
   the files in their uploads and event streams are recorded as they go out; nobody passes a file from
   outside gradio's upload folder (`webui.security.served_files`).
The user is stored in the scope for `webui.security.identity.request_user`.
"""

from __future__ import annotations

import ipaddress
import json

import anyio
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from webui.security.auth import SESSION_COOKIE, SESSION_SECONDS, Authenticator, Credentials, TooManyAttempts
from webui.security.identity import SCOPE_KEY, User
from webui.security.login_page import login_page
from webui.security.remote_fetch import GRADIO_PREFIX, REFUSAL, inspects_body, refused_body, refused_route
from webui.security.served_files import NOT_FOUND, ServedFiles, body_file_paths, file_route_target, recording_send

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

LOCAL_HOST_NAMES = ("localhost", "localhost.localdomain")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
MAX_LOGIN_FORM_BYTES = 4096


@dataclass(frozen=True)
class HttpPolicy:
    """What the middleware lets through, from Settings."""

    allowed_hosts: tuple[str, ...] = ()  # extra host names; ".example.com" allows its subdomains; "*" any
    allowed_origins: tuple[str, ...] = ()  # full origins (scheme://host[:port]) given CORS access
    max_body_bytes: int = 100 * 1024 * 1024

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if "*" in self.allowed_hosts or name in LOCAL_HOST_NAMES or name in self.allowed_hosts:
            return True
        if any(entry.startswith(".") and name.endswith(entry) for entry in self.allowed_hosts):
            return True
        try:
            ipaddress.ip_address(name)  # an address, not a name: DNS rebinding needs a name
            return True
        except ValueError:
            return False


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:7860
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyTooLarge(Exception):
    pass


@dataclass
class SecurityMiddleware:
    app: Callable
    authenticator: Authenticator
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    served: ServedFiles = field(default_factory=ServedFiles)  # whose files gradio serves (per server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._answer(scope, send, *refusal)
            return
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        cors = origin if origin in self.policy.allowed_origins else None
        if method == "OPTIONS" and cors and "access-control-request-method" in headers:
            await _respond(send, 204, b"", extra=_cors_headers(cors, preflight=True))
            return
        path = scope.get("path", "/")
        if scope["type"] == "http" and path in (LOGIN_PATH, LOGOUT_PATH):
            await self._login_routes(scope, receive, send, headers, method, path)
            return
        cookie = _cookies(headers).get(SESSION_COOKIE)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        query_token = query.get("token", [None])[0] if method == "GET" else None
        credentials = Credentials(_client(scope), cookie, headers.get("authorization"), query_token)
        try:
            if self.authenticator.needs_hashing(credentials):  # scrypt takes ~50 ms: not on the event loop
                user = await anyio.to_thread.run_sync(self.authenticator.authenticate, credentials)
            else:
                user = self.authenticator.authenticate(credentials)
        except TooManyAttempts as error:
            await self._answer(scope, send, 429, str(error), [("retry-after", str(int(error.retry_after) + 1))])
            return
        if user is None:
            await self._unauthenticated(scope, send, headers, path)
            return
        if query_token and not self.authenticator.open:  # token link: keep the session, drop the token from the URL
            await self._redirect(send, _without_token(path, query), user)
            return
        if (method not in SAFE_METHODS and not self.authenticator.open and headers.get("authorization") is None
                and origin is None and not headers.get("content-type", "").startswith("application/json")):
            await self._answer(scope, send, 403, "cross-site request refused: send JSON or an Origin header")
            return
        if refused_route(path):
            await self._answer(scope, send, 403, REFUSAL)
            return
        served_file = file_route_target(path)
        if served_file is not None and not user.is_admin and not self.served.belongs_to(served_file, user.name):
            await self._answer(scope, send, 404, NOT_FOUND)
            return
        if scope["type"] == "http":
            receive = await self._bounded_body(scope, receive, send, headers, inspects_body(path, method), user)
            if receive is None:
                return
            if not user.is_admin and path.startswith(GRADIO_PREFIX) and served_file is None:
                send = recording_send(send, self.served, user.name, path)
        scope.setdefault("state", {})[SCOPE_KEY] = user
        await self.app(scope, receive, _with_cors(send, cors))

    # ---- checks that need no user ----
    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not self.policy.host_allowed(host):
            return 400, f"host {_host_name(host)!r} is not allowed; start the server with --allowed-hosts to add it"
        origin = headers.get("origin")
        if origin is not None and origin not in self.policy.allowed_origins and urlsplit(origin).netloc != host:
            return 403, "cross-origin request refused; start the server with --cors-allow-origins to allow an origin"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.policy.max_body_bytes):
            return 413, f"request body is larger than {self.policy.max_body_bytes // (1024 * 1024)} MB"
        return None

    async def _bounded_body(self, scope: Scope, receive: Receive, send: Send,
                            headers: dict[str, str], inspect: bool, user: User) -> Receive | None:
        """A chunked body (no Content-Length), or a gradio call's body to `inspect` (remote fetches, files
        that are not the user's), is read here within the limit and replayed to the app; with a
        Content-Length the server itself stops the body at the declared size. None: refused (answered)."""
        if not inspect and "chunked" not in headers.get("transfer-encoding", "").lower():
            return receive
        try:
            body = await _read_body(receive, self.policy.max_body_bytes)
        except BodyTooLarge:
            await self._answer(scope, send, 413, f"request body is larger than {self.policy.max_body_bytes // (1024 * 1024)} MB")
            return None
        if inspect and refused_body(body):
            await self._answer(scope, send, 403, REFUSAL)
            return None
        if inspect and any(not self.served.may_pass(path, user.name, user.is_admin) for path in body_file_paths(body)):
            await self._answer(scope, send, 404, NOT_FOUND)
            return None
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    # ---- answers ----
    async def _answer(self, scope: Scope, send: Send, status: int, detail: str,
                      extra: list[tuple[str, str]] | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        body = json.dumps({"detail": detail}).encode()
        await _respond(send, status, body, "application/json", extra)

    async def _unauthenticated(self, scope: Scope, send: Send, headers: dict[str, str], path: str) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET" and "text/html" in headers.get("accept", ""):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            await _respond(send, 303, b"", extra=[("location", f"{LOGIN_PATH}?{urlencode({'next': target})}")])
            return
        extra = [("www-authenticate", 'Basic realm="SD Studio"')] if path.startswith("/sdapi/") else []
        await self._answer(scope, send, 401, "log in first: use the login page, an API token "
                           "(Authorization: Bearer ...) or HTTP Basic credentials", extra)

    async def _redirect(self, send: Send, location: str, user: User) -> None:
        session = self.authenticator.start_session(user)
        await _respond(send, 303, b"", extra=[("location", location), ("set-cookie", _session_cookie(session))])

    async def _login_routes(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                            method: str, path: str) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        next_path = _local_path(query.get("next", ["/"])[0])
        if path == LOGOUT_PATH:
            session = _cookies(headers).get(SESSION_COOKIE)
            if session and method == "POST":
                self.authenticator.end_session(session)
            await _respond(send, 303, b"", extra=[("location", LOGIN_PATH),
                                                  ("set-cookie", f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax")])
            return
        if method != "POST":
            await _respond(send, 200, login_page(next_path, token_login=self.authenticator.access_token is not None),
                           "text/html; charset=utf-8")
            return
        try:
            form = parse_qs((await _read_body(receive, MAX_LOGIN_FORM_BYTES)).decode("utf-8", "replace"))
        except BodyTooLarge:
            await self._answer(scope, send, 413, "login form too large")
            return
        field_of = lambda name: form.get(name, [""])[0]  # noqa: E731
        client = _client(scope)
        try:
            if field_of("token"):
                user = self.authenticator.token_user(field_of("token").strip(), client)
            else:
                user = await anyio.to_thread.run_sync(self.authenticator.login, field_of("username"),
                                                      field_of("password"), client)
        except TooManyAttempts as error:
            await _respond(send, 429, login_page(next_path, str(error), self.authenticator.access_token is not None),
                           "text/html; charset=utf-8", [("retry-after", str(int(error.retry_after) + 1))])
            return
        if user is None:
            await _respond(send, 401, login_page(next_path, "Wrong user name, password or token.",
                                                 self.authenticator.access_token is not None), "text/html; charset=utf-8")
            return
        await self._redirect(send, _local_path(field_of("next") or next_path), user)


def _session_cookie(session: str) -> str:
    return f"{SESSION_COOKIE}={session}; Max-Age={SESSION_SECONDS}; Path=/; HttpOnly; SameSite=Lax"


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is treated as no cookie
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _local_path(target: str) -> str:
    """Only same-server paths as redirect targets (no `//evil.example` or `https://...`)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _without_token(path: str, query: dict[str, list[str]]) -> str:
    rest = {key: values for key, values in query.items() if key != "token"}
    return path + (f"?{urlencode(rest, doseq=True)}" if rest else "")


def _cors_headers(origin: str, preflight: bool = False) -> list[tuple[str, str]]:
    headers = [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"), ("vary", "Origin")]
    if preflight:
        headers += [("access-control-allow-methods", "GET, POST, PUT, DELETE, OPTIONS"),
                    ("access-control-allow-headers", "authorization, content-type"), ("access-control-max-age", "600")]
    return headers


def _with_cors(send: Send, origin: str | None) -> Send:
    if origin is None:
        return send

    async def send_with_cors(message: dict) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k.encode(), v.encode()) for k, v in _cors_headers(origin) if k.encode() not in names]
            message = {**message, "headers": list(message.get("headers", [])) + extra}
        await send(message)

    return send_with_cors


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge()
        if not message.get("more_body"):
            return body


async def _respond(send: Send, status: int, body: bytes, content_type: str | None = None,
                   extra: list[tuple[str, str]] | None = None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    headers += [(k.encode(), v.encode()) for k, v in extra or []]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
