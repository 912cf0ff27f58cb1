"""The caller of a gradio event, and the admin check, as the UI's handlers need them (gr.Error on refusal)."""

from __future__ import annotations

import gradio as gr

from webui.security.identity import User, request_user


def caller_of(request: gr.Request) -> User:
    try:
        return request_user(request)
    except PermissionError as error:
        raise gr.Error(str(error)) from None


def require_admin(request: gr.Request, action: str) -> User:
    user = caller_of(request)
    if not user.is_admin:
        raise gr.Error(f"{action} needs an admin account; {user.name!r} is a {user.role}")
    return user
