"""What every HTTP route shares: the caller as a FastAPI dependency, and the admin check.

Authentication itself happens once, in `webui.security.middleware`, for every route; routes only ask
who the caller is (`caller`) or demand an admin (`admin_caller`).
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request

from webui.security.identity import NotAuthenticated, User, request_user


async def caller(request: Request) -> User:
    """Async, so that reading the user costs no worker thread (it only looks at the request scope)."""
    try:
        return request_user(request)
    except NotAuthenticated as error:
        raise HTTPException(401, str(error)) from None


def admin_caller(user: User = Depends(caller)) -> User:
    if not user.is_admin:
        raise HTTPException(403, f"this needs an admin account; {user.name!r} is a {user.role}")
    return user
