"""Whether a request may make this server reach the network (the Hugging Face Hub), decided in one place.

A server reachable from the internet must not fetch from or push to other machines because a request
named something that looks like `owner/name`: that turns it into a download proxy, lets a visitor fill
the disk, and can send the owner's trained models away. So the Hub is off unless the owner started the
server with `--allow-hub`. The code that would open a connection (checkpoint download, captioning model
download, Hub upload) receives a `NetworkPolicy` and calls `require_hub` first; with the flag off that
raises `HubDisabled` (a `LookupError`: 404 over HTTP, a `gr.Error` in the UI) saying what to do instead,
before any connection is attempted.
"""

from __future__ import annotations

from dataclasses import dataclass

from webui.settings import Settings

ALLOW_HUB_FLAG = "--allow-hub"


class HubDisabled(LookupError):
    """The request needs the Hugging Face Hub and this server was started without --allow-hub."""


@dataclass(frozen=True)
class NetworkPolicy:
    """What the owner allowed; the default (nothing) is what a server without flags does."""

    allow_hub: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> NetworkPolicy:
        return cls(allow_hub=settings.allow_hub)

    def require_hub(self, wanted: str, instead: str) -> None:
        """Return when the Hub may be used; else raise `HubDisabled` naming `wanted` and what to do `instead`."""
        if not self.allow_hub:
            raise HubDisabled(f"{wanted} is not available: this server does not use the Hugging Face Hub unless "
                              f"it is started with {ALLOW_HUB_FLAG}; {instead}")
