"""Test only: serve the app like `launch.py --skip-install`, with each request's user taken from a header.

The auth middleware (webui.security.middleware) is what attaches a `User` to every request in the real
server. Tests of what depends on *who* asks (job owners, interrupt rights, per-user queue bounds) need
several users without that layer, so this script serves the same app behind a tiny middleware that
reads `X-Test-User: name` (or `name:admin`). A request without the header carries no user, as a
request that bypassed authentication would, and is refused by the app. Never used outside tests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[2]
HEADER = b"x-test-user"


class HeaderUserMiddleware:
    """ASGI middleware: put `User(name, role)` from the X-Test-User header into the request scope."""

    def __init__(self, app: Callable[..., Awaitable[Any]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        from webui.security.identity import ROLES, SCOPE_KEY, USER, User

        if scope["type"] == "http":
            value = dict(scope.get("headers") or []).get(HEADER)
            if value:
                name, _, role = value.decode("latin-1").partition(":")
                scope.setdefault("state", {})[SCOPE_KEY] = User(name, role if role in ROLES else USER)
        await self.app(scope, receive, send)


def main(argv: list[str]) -> int:
    from starlette.middleware import Middleware

    from webui.app import run

    return run(argv, middleware=[Middleware(HeaderUserMiddleware)])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
