"""Who may change which extensions are installed, and which git addresses an install may fetch.

An extension is code that runs with the app's rights, so installing one is like giving shell access:
only admins may do it, and on a server reachable from the network (`--listen`, `--share`) nobody may,
unless the owner started it with `--enable-insecure-extension-access` (A1111's flag and rule). The git
address is checked here too: only https, ssh (`ssh://` or `user@host:path`) and local `file://`
repositories, never something git would read as an option or a helper (`-u...`, `ext::`, `fd::`).
"""

from __future__ import annotations

import re

from webui.security.identity import Forbidden, User
from webui.settings import Settings

_SCP_STYLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[A-Za-z0-9._~/][^\s]*$")
_ALLOWED_SCHEMES = ("https://", "ssh://", "file://")


class ExtensionAccessRefused(Forbidden):
    """Changing the installed extensions is not allowed here; the message says why and what to do."""


def check_extension_changes(settings: Settings, caller: User, action: str) -> None:
    """Raise ExtensionAccessRefused unless `caller` may install/update/uninstall extensions on this server."""
    caller.require_admin(action)
    refusal = network_refusal(settings, action)
    if refusal:
        raise ExtensionAccessRefused(refusal)


def network_refusal(settings: Settings, action: str = "Installing, updating and uninstalling extensions") -> str:
    """Why extension changes are off on this server ("" when they are allowed), for the refusal and the tab."""
    if not settings.reachable_from_network or settings.enable_insecure_extension_access:
        return ""
    flag = "--listen" if settings.listen else "--share"
    return (f"{action} is turned off because the server is reachable from the network ({flag}): an extension "
            "runs code with the app's rights. Restart with --enable-insecure-extension-access to allow admins "
            "to do it anyway.")


def check_git_url(url: str) -> str:
    """The address, stripped, if git may clone it; ValueError naming the accepted forms otherwise."""
    url = (url or "").strip()
    if not url:
        raise ValueError("enter the git URL of the extension's repository")
    if url.startswith("-") or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError(f"{url!r} is not a git URL (it must not start with '-' or contain spaces)")
    if url.lower().startswith(_ALLOWED_SCHEMES):
        rest = url.split("://", 1)[1]
        if url.lower().startswith("file://"):
            if not rest.startswith("/"):
                raise ValueError(f"{url!r}: a file:// URL must name an absolute path (file:///path/to/repo)")
        elif not rest or rest.startswith(("/", "-")):
            raise ValueError(f"{url!r} names no host")
        return url
    if "://" not in url and "::" not in url and _SCP_STYLE.match(url):
        return url
    raise ValueError(f"{url!r} is not an accepted git URL: use https://host/owner/repo.git, "
                     "ssh://git@host/owner/repo.git, git@host:owner/repo.git or file:///path/to/repo")
