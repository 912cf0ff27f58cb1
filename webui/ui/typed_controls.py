"""Gradio controls for typed values declared as data (an extension's settings, a script's fields).

One declaration (`SettingSpec`: label, default whose type is the value's type, choices, bounds, help)
gives one control: a checkbox for a bool, a dropdown for choices, a slider for a number with both
bounds, a number box otherwise, a textbox for text. `typed_value` turns what the control sends back
into the declared type before the declaration checks it (gradio hands sliders back as floats).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.extensions.settings_store import SettingSpec


def control_for(spec: SettingSpec, value: Any, elem_id: str, interactive: bool | None = None) -> gr.components.Component:
    """The control a declaration asks for, showing `value`."""
    common = dict(label=spec.label, value=value, elem_id=elem_id, info=spec.help or None, interactive=interactive)
    kind = type(spec.default)
    if kind is bool:
        return gr.Checkbox(**common)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), **common)
    if kind in (int, float):
        if spec.minimum is not None and spec.maximum is not None:
            step = 1 if kind is int else _float_step(spec.minimum, spec.maximum)
            return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=step, **common)
        return gr.Number(precision=0 if kind is int else None, minimum=spec.minimum, maximum=spec.maximum, **common)
    return gr.Textbox(lines=1, **common)


def typed_value(spec: SettingSpec, raw: Any) -> Any:
    """A control's value in the declared type where that is lossless (a slider's 3.0 for an int is 3);
    anything else is left for `spec.check` to refuse with its message."""
    if type(spec.default) is int and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if type(spec.default) is str and raw is None:
        return ""
    return raw


def _float_step(minimum: float, maximum: float) -> float:
    span = maximum - minimum
    return 0.01 if span <= 2 else 0.1 if span <= 20 else 1.0
