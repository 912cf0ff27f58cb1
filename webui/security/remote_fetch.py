"""Requests that would make gradio fetch from the network on a client's say-so are refused here.

gradio downloads a file input whose `path` is an http(s) URL, and `GET /gradio_api/file=<URL>` (and its
`proxy=` route) streams remote URLs. Neither is needed by SD Studio's own pages: uploads reach the
server through `/gradio_api/upload` and come back as local paths. So these forms are refused before
gradio sees them, whatever `--allow-hub` says (that flag is about the Hugging Face Hub, asked for by
name). A quote escaped inside a JSON string (a prompt that mentions `"path": "http..."`) does not match.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

GRADIO_PREFIX = "/gradio_api/"
_REMOTE_PATH_FIELD = re.compile(rb'(?<!\\)"path"\s*:\s*"(?:https?|ftp)://', re.IGNORECASE)
_REMOTE_ROUTE = re.compile(r"^/gradio_api/(?:file|proxy)=\s*(?:https?|ftp):", re.IGNORECASE)
REFUSAL = "this server does not fetch URLs for a request; upload the file instead"


def refused_route(path: str) -> bool:
    """`/gradio_api/file=https://...` and `/gradio_api/proxy=...` (also percent-encoded)."""
    return bool(_REMOTE_ROUTE.match(unquote(path))) or unquote(path).startswith("/gradio_api/proxy=")


def inspects_body(path: str, method: str) -> bool:
    return method == "POST" and path.startswith(GRADIO_PREFIX) and not path.startswith("/gradio_api/upload")


def refused_body(body: bytes) -> bool:
    """A gradio call whose file input points at a remote URL."""
    return bool(_REMOTE_PATH_FIELD.search(body))
