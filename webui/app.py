"""Composition root: Settings -> AppContext -> gradio UI and/or HTTP API -> serve.

Like A1111, the UI is started with gradio's own `launch` (so `--share` and login work as gradio
implements them) and the API routes are added to the same FastAPI app; with `--nowebui` only the
API is served, by uvicorn directly.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Sequence

from webui.settings import Settings, SettingsError, settings_from_args

if TYPE_CHECKING:
    from starlette.middleware import Middleware

log = logging.getLogger("sdstudio")


def serve(settings: Settings, ready: threading.Event | None = None, middleware: Sequence[Middleware] = ()) -> None:
    """Build everything and serve until interrupted. `middleware` wraps every HTTP request, UI and API alike
    (outermost first), e.g. the layer that authenticates callers."""
    from webui.context import build_context
    from webui.security.limits import guard_library_decoders

    ctx = build_context(settings)
    guard_library_decoders(ctx.request_limits)
    ctx.queue.submit("load-checkpoint", lambda control: ctx.manager.select(None))  # warm start, like A1111
    if settings.serve_ui:
        from webui.api.sdapi import install_api
        from webui.ui.app_ui import CSS, THEME, build_ui

        blocks = build_ui(ctx)
        blocks.queue(default_concurrency_limit=4)
        app, local_url, share_url = blocks.launch(
            server_name=settings.host, server_port=settings.port, share=settings.share,
            auth=list(settings.auth) or None, prevent_thread_lock=True, show_error=True, quiet=True,
            max_file_size=ctx.request_limits.max_upload_bytes,
            app_kwargs={"docs_url": None, "redoc_url": None, "openapi_url": None, "middleware": list(middleware)},
            theme=THEME, css=CSS,
        )
        if settings.serve_api:
            install_api(app, ctx)
        print(f"SD Studio running on {local_url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
        if ready:
            ready.set()
        blocks.block_thread()
    else:
        import uvicorn
        from fastapi import FastAPI

        from webui.api.sdapi import install_api

        app = FastAPI(title="SD Studio API", docs_url=None, redoc_url=None, openapi_url=None,
                      middleware=list(middleware))
        install_api(app, ctx)
        print(f"SD Studio API running on http://{settings.host}:{settings.port}/sdapi/v1", flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def run(argv: Sequence[str], middleware: Sequence[Middleware] = ()) -> int:
    """Entry point used by launch.py; returns a process exit code. `middleware` as in `serve`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(argv)
    except SettingsError as error:
        print(f"launch.py: error: {error}", file=sys.stderr)
        return 2
    try:
        serve(settings, middleware=middleware)
    except KeyboardInterrupt:
        return 0
    return 0
