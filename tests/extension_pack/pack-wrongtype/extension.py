"""A before-request hook that returns text instead of a request: it must be refused."""

from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    def before(context: api.BeforeRequest):
        if "PACKWRONG" in context.request.prompt:
            return "not a request"
        return None

    ext.on_before_request(before)
