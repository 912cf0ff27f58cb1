"""Security for one server, built from Settings: accounts, the start-up token, the middleware, the banner.

The decision "does this server need a login" is made here once: a server reachable from the network
(`--listen`, `--share`) always has one, from accounts or else a random access token printed at start
(like Jupyter), unless `--insecure-no-auth` says otherwise, which is announced as a warning.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from webui.security.auth import Authenticator
from webui.security.middleware import HttpPolicy, SecurityMiddleware
from webui.security.served_files import ServedFiles
from webui.security.store import SECURITY_STORE_FILE, SecurityStore
from webui.security.users import UserStore
from webui.settings import Settings

SHARE_HOST_SUFFIX = ".gradio.live"


@dataclass(frozen=True)
class ServerSecurity:
    authenticator: Authenticator
    policy: HttpPolicy
    served: ServedFiles  # which user each file gradio serves belongs to

    def middleware(self) -> list[Middleware]:
        """For FastAPI(middleware=...) / gradio's app_kwargs: every route passes through it."""
        return [Middleware(SecurityMiddleware, authenticator=self.authenticator, policy=self.policy,
                           served=self.served),
                # CORS headers for the configured origins only. Its presence also tells a mounted gradio
                # to add none of its own (gradio's layer would allow any localhost origin).
                Middleware(CORSMiddleware, allow_origins=list(self.policy.allowed_origins), allow_credentials=True,
                           allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                           allow_headers=["authorization", "content-type"])]


def build_server_security(settings: Settings, gradio_upload_folder: str | None = None) -> ServerSecurity:
    """`gradio_upload_folder`: where gradio stores uploads and shown files (the UI's only file inputs)."""
    users = UserStore(settings.users_file, settings.auth)
    store = SecurityStore(settings.data_dir / SECURITY_STORE_FILE)  # sessions and file owners survive a restart
    needs_token = settings.reachable_from_network and len(users) == 0 and not settings.insecure_no_auth
    authenticator = Authenticator(users, access_token=secrets.token_urlsafe(24) if needs_token else None, store=store)
    # The share link's requests arrive through gradio's tunnel with its host name (<random>.gradio.live):
    # a name nobody can point at this machine, so serving it opens no DNS-rebinding hole.
    share_hosts = (SHARE_HOST_SUFFIX,) if settings.share else ()
    policy = HttpPolicy(allowed_hosts=settings.allowed_hosts + share_hosts, allowed_origins=settings.cors_allow_origins,
                           max_body_bytes=settings.max_body_mb * 1024 * 1024)
    served = ServedFiles(roots=(gradio_upload_folder,) if gradio_upload_folder else (), store=store)
    return ServerSecurity(authenticator, policy, served)


def startup_banner(settings: Settings, security: ServerSecurity, path: str = "/") -> list[str]:
    """What the console says at start: the real bind address, how to log in, and any risk taken."""
    base = f"http://{settings.host}:{settings.port}"
    lines = [f"SD Studio running on {base}{path}" + (" (all network interfaces)" if settings.listen else " (this machine only)")]
    token = security.authenticator.access_token
    if token:
        shown = "127.0.0.1" if not settings.listen else "<this machine's address>"
        lines.append(f"Login with the access token: http://{shown}:{settings.port}/?token={token}")
        lines.append("  (no --auth was given, so a random token protects this server; it changes at every start)")
    elif not security.authenticator.open:
        lines.append(f"Login required ({len(security.authenticator.users)} account(s)); API clients use HTTP Basic "
                     "or an API token from the Account tab")
    if settings.reachable_from_network and security.authenticator.open:
        lines.append("WARNING: --insecure-no-auth: anyone who can reach this port can generate, train, read the "
                     "app's outputs and models and change its files. Use it only on a network you trust.")
    return lines
