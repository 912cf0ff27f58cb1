"""A1111's server options as the API sees them, and `override_settings` for one request.

A1111 keeps every setting in one global `opts`; a request's `override_settings` changes some of them
for that request and, with `override_settings_restore_afterwards: true` (its default), puts them back
afterwards. Here the four keys that change what a generation does are honoured:

- `sd_model_checkpoint`: the loaded checkpoint (the model manager's current one; the restore happens
  inside the generation's own job, so no other job runs on the override's model);
- `sd_vae`, `CLIP_stop_at_last_layers`: the VAE and clip skip a request uses when it names none;
- `samples_save`: whether generated images are saved at all (A1111 saves an API request's images only
  when this option is on and the body says `save_images: true`);
- `upscaler_for_img2img`: the upscaler img2img's resize modes enlarge the source with.

Other keys A1111 clients send are ignored. With `override_settings_restore_afterwards: false` the
overrides become the server's options, as in A1111; since they then apply to every user's requests,
only an admin may keep them or set them with POST /options (a plain user gets 403; anyone may override
them for one request, and the checkpoint stays shared by everyone as it was before). The options live in
the context's one `ServerOptions` (kept in `<data>/config.json`, also shown in the Settings tab);
`GET/POST /options` read and change them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from webui.generation.server_options import check_options

HONOURED_OVERRIDES = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_save",
                      "upscaler_for_img2img")


class OverrideSettings(BaseModel):
    """The `override_settings` keys applied per request; unset keys keep the server's options."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    sd_model_checkpoint: str | None = None
    sd_vae: str | None = None
    CLIP_stop_at_last_layers: int | None = None
    samples_save: bool | None = None
    upscaler_for_img2img: str | None = None

    def option_changes(self) -> dict[str, Any]:
        """The options this override sets (the checkpoint excluded: the model manager holds that)."""
        return {key: getattr(self, key) for key in type(self).model_fields
                if getattr(self, key) is not None and key != "sd_model_checkpoint"}



def check_option_values(changes: dict[str, Any], vae_check: Any, upscaler_check: Any = None) -> None:
    """Refuse values that cannot work before they are kept or used: RequestError naming the key.
    `vae_check(name)` / `upscaler_check(name)` raise for a VAE / upscaler that is not installed."""
    check_options(changes, vae_check, upscaler_check)
