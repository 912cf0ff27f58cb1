"""A generation tab's extension-script controls, built in a gradio Blocks (no server): one control per
field of the values dataclass, a script's own builder used instead, a builder that fails leaving the
dropdown without its script, and the paste table that maps infotext keys back onto the controls."""

from __future__ import annotations

import types

import gradio as gr
import pytest

from tests.unit.test_extension_loader import load, write_extension
from webui.extensions.registry import FAILED, LOADED
from webui.ui.infotext_fields import txt2img_values_from_infotext
from webui.ui.script_controls import build_script_controls, input_name

CODE = """
from dataclasses import dataclass
import gradio as gr
from webui.extensions import api

@dataclass
class Plain:
    flag: bool = api.script_field(False, "Flag")
    mode: str = api.script_field("a", "Mode", choices=("a", "b"))
    rows: int = api.script_field(2, "Rows", minimum=1, maximum=8)
    scale: float = api.script_field(1.5, "Scale")
    note: str = api.script_field("", "Note")

@dataclass
class Custom:
    size: int = 3

@dataclass
class Glow:
    amount: float = api.script_field(0.0, "Amount", minimum=0.0, maximum=1.0)

def run(context):
    return api.ScriptResult([], [])

def custom_ui(ui):
    return {"size": gr.Number(label="Custom size", elem_id=ui.elem_prefix + "_size")}

def setup(ext):
    ext.add_script("Plain", Plain, run)
    ext.add_script("Custom", Custom, run, ui=custom_ui, img2img=False)
    ext.add_script("Glow", Glow, alwayson=True)
"""


@pytest.fixture
def built(tmp_path):
    write_extension(tmp_path / "extensions", "kit", CODE)
    write_extension(tmp_path / "extensions", "shaky", """
        from dataclasses import dataclass
        from webui.extensions import api

        @dataclass
        class V:
            n: int = 1

        def setup(ext):
            ext.add_script("Shaky", V, lambda context: None, ui=lambda ui: {"wrong": None})
    """)
    registry = load(tmp_path)
    context = types.SimpleNamespace(extensions=registry)
    with gr.Blocks():
        dropdown = gr.Dropdown(choices=["None", "Plain", "Custom", "Shaky"], value="None")
        controls = build_script_controls(context, "txt2img", False, ["None"], dropdown)
    return registry, dropdown, controls


def test_each_field_gets_the_control_its_declaration_asks_for(built):
    registry, dropdown, controls = built
    kinds = {name.split(":")[-1]: type(component) for name, component in controls.inputs.items()
             if name.startswith("script:Plain:")}
    assert kinds == {"flag": gr.Checkbox, "mode": gr.Dropdown, "rows": gr.Slider, "scale": gr.Number,
                     "note": gr.Textbox}
    assert controls.inputs[input_name("Plain", "rows")].label == "Rows"
    assert controls.inputs[input_name("Custom", "size")].label == "Custom size"     # its own builder
    assert input_name("Glow", "amount") in controls.inputs and [d.title for d in controls.alwayson] == ["Glow"]


def test_a_builder_that_breaks_its_promise_takes_the_script_out(built):
    registry, dropdown, controls = built
    assert controls.titles == ["Plain", "Custom"]
    assert [value for value, _ in dropdown.choices] == ["None", "Plain", "Custom"]
    assert registry.records["shaky"].state == FAILED and "one gradio component per field" in registry.records["shaky"].problem
    assert registry.records["kit"].state == LOADED


def test_pasted_parameters_restore_the_script_and_its_values(built):
    _, _, controls = built
    text = "a cat\nSteps: 2, Script: Plain, Plain flag: True, Plain mode: b, Plain rows: 5, Amount: 3"
    values = txt2img_values_from_infotext(text, controls.paste_fields)
    assert values["script"] == "Plain"
    assert values[input_name("Plain", "flag")] is True and values[input_name("Plain", "mode")] == "b"
    assert values[input_name("Plain", "rows")] == 5
    assert input_name("Glow", "amount") not in values                    # infotext key "Glow amount" absent
    assert txt2img_values_from_infotext("a cat\nSteps: 2, Seed: 1, Size: 64x64", controls.paste_fields)["script"] == "None"
    assert "script" not in txt2img_values_from_infotext("a\nSteps: 2, Script: Gone, Seed: 1", controls.paste_fields)
