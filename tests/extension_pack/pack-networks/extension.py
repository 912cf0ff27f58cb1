"""An extra-network type of the test pack: `<packstyle:NAME:WEIGHT>` appends the style's words to the prompt
(once per tag, in the negative prompt for a tag written there)."""

from webui.extensions import api

STYLES = {"crimson": "red background", "navy": "blue background"}


def items() -> list[api.NetworkItem]:
    return [api.NetworkItem(name, f"adds '{words}'") for name, words in STYLES.items()]


def activate(activation: api.NetworkActivation):
    request = activation.request
    positive = [STYLES[use.name] for use in activation.uses if use.name in STYLES and not use.negative]
    negative = [STYLES[use.name] for use in activation.uses if use.name in STYLES and use.negative]
    if not positive and not negative:
        return None
    return request.with_changes(prompt=", ".join([request.prompt, *positive]),
                                negative_prompt=", ".join([request.negative_prompt, *negative]).strip(", "))


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_network_type("packstyle", "Pack styles", items, activate)
