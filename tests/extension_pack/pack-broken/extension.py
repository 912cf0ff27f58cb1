"""An after-image hook that raises: the job must finish without it and say so."""

from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    def after_image(context: api.ImageReady):
        if "PACKCRASH" in context.prompt:
            raise RuntimeError("pack-broken crashed on purpose")
        return None

    ext.on_after_image(after_image)
