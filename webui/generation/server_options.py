"""The server's own runtime options: what a generation request falls back on when it names nothing.

These are the A1111 options this app honours (A1111 keeps them in its Settings tab and `config.json`):

- `sd_vae`: the VAE a request uses when it names none ("Automatic", "None" or a file in models/VAE);
- `CLIP_stop_at_last_layers`: the clip skip of such a request;
- `samples_save`: whether generated images are saved at all;
- `ESRGAN_tile`, `ESRGAN_tile_overlap`: the tiles model upscalers run in (0: no tiling), in pixels;
- `upscaler_for_img2img`: the upscaler img2img's "Just resize" enlarges with ("None": Lanczos, as in A1111).

`POST /sdapi/v1/options` and the Settings tab both change them through ONE `ServerOptions`, which keeps
them in `<data>/config.json` under A1111's keys (other keys of that file are left as they are), so they
survive a restart. Every change is checked first (`check`); a refusal names the option.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from webui.generation.requests import RequestError
from webui.upscaling.tiles import TileSettings

log = logging.getLogger("sdstudio")

CONFIG_FILE = "config.json"
# key -> (label shown in the Settings tab, default)
OPTION_DEFAULTS: dict[str, Any] = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "samples_save": True,
                                   "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "upscaler_for_img2img": "None"}
OPTION_LABELS: dict[str, str] = {
    "sd_vae": "SD VAE for requests that name none (A1111 API clients)",
    "CLIP_stop_at_last_layers": "Clip skip for requests that name none (A1111 API clients)",
    "samples_save": "Always save all generated images (A1111 API requests that ask to save)",
    "ESRGAN_tile": "Tile size for upscaler models (0 = no tiling)",
    "ESRGAN_tile_overlap": "Tile overlap for upscaler models, in pixels",
    "upscaler_for_img2img": "Upscaler for img2img (enlarging in \"Just resize\")",
}


class ServerOptions:
    """The options, read from and written to `config.json` (None: kept in memory only, e.g. in a test)."""

    def __init__(self, config_file: Path | None = None):
        self.path = config_file
        self._lock = threading.Lock()
        self._values = dict(OPTION_DEFAULTS)
        stored = self._read_file()
        for key in OPTION_DEFAULTS:
            if key in stored:
                try:
                    self._values[key] = _typed(key, stored[key])
                except RequestError as error:
                    log.warning("%s: %s; using the default %r", self.path, error, OPTION_DEFAULTS[key])

    def _read_file(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("%s cannot be read (%s); server options start from their defaults", self.path, error)
            return {}
        return data if isinstance(data, dict) else {}

    def values(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def effective(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The options one request runs with: the server's, with the request's overrides on top."""
        return {**self.values(), **overrides}

    def update(self, changes: Mapping[str, Any]) -> None:
        """Keep new values (already checked) and write them into config.json, all at once."""
        if not changes:
            return
        with self._lock:
            self._values.update(changes)
            if self.path is None:
                return
            data = self._read_file()
            data.update({key: self._values[key] for key in OPTION_DEFAULTS})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
            partial.replace(self.path)


def check_options(changes: Mapping[str, Any], vae_check: Callable[[str], Any],
                  upscaler_check: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The changes with their values typed, or RequestError naming the first option that cannot work.
    `vae_check(name)` / `upscaler_check(name)` raise for a VAE / upscaler that is not installed. Unknown
    keys are refused."""
    checked = {}
    for key, value in changes.items():
        if key not in OPTION_DEFAULTS:
            raise RequestError(f"unknown option {key!r}; options: {', '.join(OPTION_DEFAULTS)}")
        checked[key] = _typed(key, value)
    if checked.get("sd_vae") is not None:
        vae_check(checked["sd_vae"])
    if checked.get("upscaler_for_img2img") is not None and upscaler_check is not None:
        upscaler_check(checked["upscaler_for_img2img"])
    if "ESRGAN_tile" in checked or "ESRGAN_tile_overlap" in checked:
        tile_settings({**OPTION_DEFAULTS, **checked})
    return checked


def tile_settings(options: Mapping[str, Any]) -> TileSettings:
    """The upscaler tile options as TileSettings, checked (RequestError names the option)."""
    return TileSettings(int(options["ESRGAN_tile"]), int(options["ESRGAN_tile_overlap"])).checked()


def _typed(key: str, value: Any) -> Any:
    if key == "CLIP_stop_at_last_layers":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"CLIP_stop_at_last_layers must be a whole number, got {value!r}")
        if not 1 <= value <= 12:
            raise RequestError(f"CLIP_stop_at_last_layers {value} is outside 1..12")
    elif key == "samples_save":
        if not isinstance(value, bool):
            raise RequestError(f"samples_save must be true or false, got {value!r}")
    elif key == "sd_vae" and (not isinstance(value, str) or not value):
        raise RequestError(f"sd_vae must be a VAE name, got {value!r}")
    elif key in ("ESRGAN_tile", "ESRGAN_tile_overlap"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{key} must be a whole number of pixels, got {value!r}")
    elif key == "upscaler_for_img2img" and (not isinstance(value, str) or not value):
        raise RequestError(f"upscaler_for_img2img must be an upscaler name, got {value!r}")
    return value
