"""The upscaler names each place offers, in A1111's order, from one list (the upscaler service's).

Hires fix (its dropdown, the X/Y/Z "Hires upscaler" axis) offers the latent modes first, then the built-in
pixel filters, then the usable model upscalers; the Extras tab offers every usable upscaler ("None" first).
Both are read from the service on each call, so a rescan of the model folders shows everywhere.
"""

from __future__ import annotations

from typing import Protocol

from webui.generation.hires import LATENT_MODES, PIXEL_FILTERS


class UpscalerNames(Protocol):
    """What the lists need from `webui.upscaling.service.UpscalerService`."""

    def names(self, usable_only: bool = True) -> list[str]: ...

    def model_names(self) -> list[str]: ...


def hires_upscaler_names(upscalers: UpscalerNames | None) -> list[str]:
    """Latent modes, then the pixel filters, then the usable model upscalers (none without a service)."""
    models = upscalers.model_names() if upscalers is not None else []
    return [*LATENT_MODES, *PIXEL_FILTERS, *models]
