"""Who is making a request: a `User` put into the ASGI scope by the auth middleware.

The middleware (`webui.security.middleware`) authenticates every HTTP request, API and gradio alike,
and stores the user in the request scope. Handlers read it with `request_user`; nothing else decides
identity. Without any auth configured (the default 127.0.0.1 server) the one person at the machine is
`LOCAL_ADMIN`. A request that reached a handler without passing the middleware is refused rather than
trusted, so a route added outside the middleware fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

ADMIN = "admin"
USER = "user"
ROLES = (ADMIN, USER)
SCOPE_KEY = "sdstudio.user"


class NotAuthenticated(PermissionError):
    """No authenticated user is attached to the request."""


class Forbidden(PermissionError):
    """The user is known but their role does not allow this action."""


@dataclass(frozen=True)
class User:
    """An authenticated caller. `name` is what job records and outputs are owned by."""

    name: str
    role: str = USER

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def require_admin(self, action: str) -> None:
        """Raise Forbidden naming the action when this user is not an admin."""
        if not self.is_admin:
            raise Forbidden(f"{action} needs an admin account; {self.name!r} is a {self.role}")

    def may_act_on(self, owner: str | None) -> bool:
        """A user sees and cancels their own jobs and outputs; an admin sees everyone's."""
        return self.is_admin or owner == self.name


LOCAL_ADMIN = User("local", ADMIN)


def name_of(user: User | None) -> str | None:
    """The owner name a job records for `user` (None: the app's own work).

    Services take the caller's `User`, not a name, because the role decides which folders are theirs
    (webui.security.paths); a bare name is refused here so that a caller still passing one fails loudly.
    """
    if user is not None and not isinstance(user, User):
        raise TypeError(f"pass the caller's User (webui.security.identity), not {type(user).__name__} {user!r}")
    return user.name if user is not None else None


def user_from_scope(scope: Mapping[str, Any]) -> User:
    """The user the middleware attached to an ASGI scope; NotAuthenticated when there is none."""
    user = (scope.get("state") or {}).get(SCOPE_KEY)
    if not isinstance(user, User):
        raise NotAuthenticated("this request was not authenticated")
    return user


def request_user(request: Any) -> User:
    """The user of a starlette/FastAPI `Request` or a gradio `gr.Request` (which wraps one)."""
    inner = getattr(request, "request", None)  # gr.Request keeps the HTTP request it came from
    scope = getattr(inner if inner is not None else request, "scope", None)
    if scope is None:
        raise NotAuthenticated("this request carries no HTTP scope")
    return user_from_scope(scope)
