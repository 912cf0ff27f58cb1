"""The UI's name for the shared error messages (`webui.user_errors`, also used by the HTTP API)."""

from __future__ import annotations

from webui.user_errors import USER_ERRORS, user_error

__all__ = ["USER_ERRORS", "user_error"]
