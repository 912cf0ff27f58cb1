"""What every HTTP route shares: the prefix, the caller as a FastAPI dependency, the admin check, and the
translation of engine errors and invalid bodies into 4xx answers with a reason.

Authentication itself happens once, in `webui.security.middleware`, for every route; routes only ask
who the caller is (`caller`) or demand an admin (`admin_caller`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from webui.errors import user_error
from webui.generation.image_ops import ImageTooLargeError
from webui.jobs.errors import JobCancelled, QueueFullError
from webui.jobs.device_faults import GpuFault
from webui.jobs.out_of_memory import GpuOutOfMemory
from webui.security.identity import NotAuthenticated, User, request_user

API_PREFIX = "/sdapi/v1"


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


class ReasonedValidationRoute(APIRoute):
    """A body that does not validate gets 422 naming each field and the problem, never the value.

    FastAPI's default answer echoes the offending input: a NaN cannot be written as JSON (that was a
    500) and an echoed 200 MB field makes a 200 MB answer.
    """

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Any:
            try:
                return await handler(request)
            except RequestValidationError as error:
                raise HTTPException(422, validation_reason(error)) from None

        return answer


def validation_reason(error: RequestValidationError) -> str:
    """`seed: Input should be a finite number; width: ...`: field paths without the `body` prefix."""
    parts = []
    for problem in error.errors():
        if problem.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({problem.get('ctx', {}).get('error', 'decode error')})")
            continue
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        parts.append(f"{'.'.join(location) or 'body'}: {problem.get('msg', 'invalid value')}")
    return "; ".join(parts[:10]) or "the request body is not valid"


def translate_errors(handler: Callable) -> Callable:
    """Engine errors -> HTTP answers with the reason: unknown names 404, bad values 422, too large 413,
    not signed in 401, not allowed 403, queue full 503 (this user's share full: 429), disk or GPU memory full 507,
    a GPU that failed during the job 503 (another worker can take it again)."""

    def convert(error: Exception) -> HTTPException:
        if isinstance(error, HTTPException):
            return error
        if isinstance(error, NotAuthenticated):
            return HTTPException(401, str(error))
        if isinstance(error, PermissionError):  # Forbidden and others; before OSError, of which it is a subclass
            return HTTPException(403, user_error(error))
        if isinstance(error, QueueFullError):
            return HTTPException(429 if error.per_owner else 503, str(error), headers={"Retry-After": "10"})
        if isinstance(error, JobCancelled):
            return HTTPException(409, str(error))
        if isinstance(error, ImageTooLargeError):
            return HTTPException(413, user_error(error))
        if isinstance(error, LookupError):
            return HTTPException(404, user_error(error))
        if isinstance(error, ValueError):
            return HTTPException(422, user_error(error))
        if isinstance(error, (OSError, GpuOutOfMemory)):  # the disk, or the GPU's memory, had no room for it
            return HTTPException(507, user_error(error))
        if isinstance(error, GpuFault):  # a GPU failed; another worker can take the request again
            return HTTPException(503, user_error(error), headers={"Retry-After": "10"})
        return HTTPException(500, user_error(error))

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            except Exception as error:
                raise convert(error) from None

        return async_wrapper

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as error:
            raise convert(error) from None

    return wrapper
