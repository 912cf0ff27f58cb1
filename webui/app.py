"""Composition root: Settings -> AppContext -> gradio UI and/or HTTP API -> serve.

One FastAPI app carries the security middleware (outermost: every answer passes it last) and the API
routes; the gradio UI is mounted on it with `gr.mount_gradio_app` and uvicorn serves it. This replaced
gradio's `launch`, which put gradio's own CORS layer outside our middleware, where it copied
`Access-Control-Allow-Origin` for localhost origins onto our refusals. A mounted gradio leaves CORS to
the parent app's `CORSMiddleware` (configured with `--cors-allow-origins` only). `--share` asks gradio's
tunnel for a public link once the server is up and serving, on a thread of its own: without internet that
request can hang for long (gradio waits 30 s per step), so the start never waits for it, and after
`SHARE_TIMEOUT_S` a warning says there is no link yet.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Sequence

from webui.jobs.errors import WorkerStartError
from webui.security.users import AccountError
from webui.settings import SHARE_TIMEOUT_S, Settings, SettingsError, settings_from_args

log = logging.getLogger("sdstudio")


class ServerStartError(RuntimeError):
    """The HTTP server could not bind its address (a port in use): a one-line message, not a traceback."""
START_TIMEOUT_S = 60
# The HTTP API's OpenAPI description and its browsable page; behind the login like every route.
API_DOCS = {"docs_url": "/docs", "redoc_url": None, "openapi_url": "/openapi.json"}


def serve(settings: Settings, ready: threading.Event | None = None) -> None:
    """Build everything and serve until interrupted."""
    if settings.ray_address:  # first: no Ray, or a cluster that does not answer, is refused before slow imports
        from webui.jobs.ray_workers import check_ray_address

        check_ray_address(settings.ray_address)
    import uvicorn
    from fastapi import FastAPI

    from webui.api.routes import install_api
    from webui.context import build_context
    from webui.extensions.host import announce_app_started, extension_data_root, mount_routes
    from webui.security.limits import guard_library_decoders
    from webui.security.server import build_server_security, startup_banner

    check_port_free(settings.host, settings.port)  # before minutes of model loading, not after
    security = build_server_security(settings, gradio_upload_folder() if settings.serve_ui else None)
    ctx = build_context(settings)
    try:
        guard_library_decoders(ctx.request_limits)
        ctx.models.warm_start()  # load the model at start, like A1111
        app = FastAPI(title="SD Studio", **API_DOCS, middleware=security.middleware())
        if settings.serve_api:  # before the UI: gradio is mounted at "/" and would take every later route
            install_api(app, ctx)
        mount_routes(app, ctx.extensions)
        blocks = None
        if settings.serve_ui:
            import gradio as gr

            from webui.security.accounts import AccountService
            from webui.extensions.host import page_assets
            from webui.ui.app_ui import CSS, THEME, build_ui

            blocks = build_ui(ctx, AccountService(security.authenticator))
            extension_css, extension_head = page_assets(ctx.extensions)
            blocks.queue(default_concurrency_limit=4)
            # run_history off: its routes would make the server call the Hugging Face Hub with a client's token.
            gr.mount_gradio_app(app, blocks, path="/", theme=THEME, css=CSS + extension_css,
                                head=extension_head or None, show_error=True, run_history=False,
                                max_file_size=ctx.request_limits.max_upload_bytes,
                                app_kwargs={"docs_url": None, "redoc_url": None, "openapi_url": None})
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="http-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServerStartError(f"the HTTP server could not start on {settings.host}:{settings.port}: the port is "
                                       f"in use or the address cannot be bound; choose another with --port")
            time.sleep(0.05)
        announce_app_started(ctx.extensions, f"http://127.0.0.1:{settings.port}", ctx,
                             extension_data_root(settings))
        path = "/" if settings.serve_ui else "/sdapi/v1"
        for line in startup_banner(settings, security, path=path):
            print(line if settings.serve_ui else line.replace("SD Studio running", "SD Studio API running"), flush=True)
        if settings.share and blocks is None:
            log.warning("--share needs the web UI: with --nowebui there is no share link")
        elif settings.share:
            threading.Thread(target=announce_share_link, args=(settings, blocks, SHARE_TIMEOUT_S), name="share-link",
                             daemon=True).start()
        if ready:
            ready.set()
        try:
            while thread.is_alive():
                thread.join(0.5)
        finally:
            server.should_exit = True
    finally:
        ctx.close()  # workers and job store stop cleanly, also when the server could not start


def check_port_free(host: str, port: int) -> None:
    """Raise ServerStartError when `host:port` cannot be bound now (another server holds the port)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerStartError(f"the HTTP server could not start on {host}:{port}: the port is in use or the "
                                   f"address cannot be bound ({error.strerror}); choose another with --port") from None


def gradio_upload_folder() -> str:
    """Where gradio keeps uploads and the files it shows (`GRADIO_TEMP_DIR`, default <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def announce_share_link(settings: Settings, blocks, timeout_s: float) -> None:
    """Ask for the share link and print it; if no answer came within `timeout_s`, warn that the server
    serves without one (a link that still comes later is printed then)."""

    def attempt() -> None:
        url = share_link(settings, blocks)
        if url:
            print(f"Public share link: {url}", flush=True)

    worker = threading.Thread(target=attempt, name="share-tunnel", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("could not create a share link: no answer from gradio's share server within %.0f s "
                    "(no internet?); serving on %s:%s without one", timeout_s, settings.host, settings.port)


def share_link(settings: Settings, blocks) -> str | None:
    """A public gradio.live link to this server through gradio's share tunnel (needs internet); None and a
    warning when it cannot be made. The tunnel's host name is served (see `HttpPolicy`)."""
    from urllib.parse import urlsplit, urlunsplit

    from gradio import networking

    try:
        url = networking.setup_tunnel(local_host="127.0.0.1", local_port=settings.port, share_token=blocks.share_token,
                                      share_server_address=None, share_server_tls_certificate=None)
        return urlunsplit(("https",) + tuple(urlsplit(url))[1:])  # the share server terminates TLS
    except Exception as error:  # no internet, blocked port: the local server keeps running
        log.warning("could not create a share link: %s", error)
        return None


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
    except (ServerStartError, WorkerStartError) as error:
        print(f"launch.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
