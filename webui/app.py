"""Composition root: Settings -> AppContext -> gradio UI and/or HTTP API -> serve.

Like A1111, the UI is started with gradio's own `launch` (so `--share` and login work as gradio
implements them) and the API routes are added to the same FastAPI app; with `--nowebui` only the
API is served, by uvicorn directly.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Sequence

from webui.security.users import AccountError
from webui.settings import Settings, SettingsError, settings_from_args

log = logging.getLogger("sdstudio")


# The HTTP API's OpenAPI description and its browsable page; behind the login like every route.
API_DOCS = {"docs_url": "/docs", "redoc_url": None, "openapi_url": "/openapi.json"}


def serve(settings: Settings, ready: threading.Event | None = None) -> None:
    """Build everything and serve until interrupted."""
    from webui.context import build_context
    from webui.security.limits import guard_library_decoders
    from webui.security.server import build_server_security, startup_banner

    security = build_server_security(settings)
    ctx = build_context(settings)
    guard_library_decoders(ctx.request_limits)
    ctx.models.warm_start()  # load the model at start, like A1111
    if settings.serve_ui:
        from webui.api.routes import install_api
        from webui.security.accounts import AccountService
        from webui.ui.app_ui import CSS, THEME, build_ui

        blocks = build_ui(ctx, AccountService(security.authenticator))
        blocks.queue(default_concurrency_limit=4)
        app, local_url, share_url = blocks.launch(
            server_name=settings.host, server_port=settings.port, share=settings.share,
            prevent_thread_lock=True, show_error=True, quiet=True, theme=THEME, css=CSS,
            max_file_size=ctx.request_limits.max_upload_bytes,
            app_kwargs={**API_DOCS, "middleware": security.middleware()},
        )
        if settings.serve_api:
            install_api(app, ctx)
        for line in startup_banner(settings, security) + ([f"Public share link: {share_url}"] if share_url else []):
            print(line, flush=True)
        if ready:
            ready.set()
        blocks.block_thread()
    else:
        import uvicorn
        from fastapi import FastAPI

        from webui.api.routes import install_api

        app = FastAPI(title="SD Studio API", **API_DOCS,
                      middleware=security.middleware())
        install_api(app, ctx)
        for line in startup_banner(settings, security, path="/sdapi/v1"):
            print(line.replace("SD Studio running", "SD Studio API running"), flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def run(argv: Sequence[str]) -> int:
    """Entry point used by launch.py; returns a process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(argv)
    except SettingsError as error:
        print(f"launch.py: error: {error}", file=sys.stderr)
        return 2
    if settings.auth and any(arg == "--auth" or arg.startswith("--auth=") for arg in argv):
        log.warning("--auth puts passwords in the process list (ps); prefer --auth-file or SDSTUDIO_AUTH")
    try:
        serve(settings)
    except AccountError as error:
        print(f"launch.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
