"""Extension scripts and UI registrations (issue 16, ext-ui): a script's values parsed BY NAME (a dict of
field names) or by position (A1111's list), with clear refusals; registrations the app refuses; values
written to the infotext and read back; the shipped prompt matrix's prompts and labels; JS/CSS assets."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_extension_loader import load, write_extension
from webui.extensions import api
from webui.extensions.host import page_assets
from webui.extensions.registry import FAILED, LOADED, ExtensionRecord, ExtensionRegistry
from webui.extensions.script_values import ScriptArgsError
from webui.extensions.scripts import ExtensionScripts
from webui.extensions.settings_store import SETTINGS_FILE, ExtensionSettings, SettingError
from webui.generation.infotext import create_infotext, parse_infotext
from webui.generation.requests import RequestError, Txt2ImgRequest
from webui.generation.server_options import ServerOptions, check_options

REPO = Path(__file__).resolve().parents[2]

SCRIPTS = """
from dataclasses import dataclass
from webui.extensions import api

@dataclass(frozen=True)
class Tiles:
    rows: int = api.script_field(2, "Rows", minimum=1, maximum=8)
    label: str = api.script_field("none", "Label", choices=("none", "top"))
    scale: float = api.script_field(1.0, "Scale", minimum=0.5, maximum=2.0)
    mirror: bool = api.script_field(False, "Mirror")

@dataclass(frozen=True)
class Tint:
    strength: float = api.script_field(0.0, "Tint strength", minimum=0.0, maximum=1.0, infotext="Tint")

def run(context):
    return api.ScriptResult([], [])

def setup(ext):
    ext.add_script("Tiles", Tiles, run)
    ext.add_script("Tint", Tint, alwayson=True)
"""


@pytest.fixture
def scripts(tmp_path) -> ExtensionScripts:
    write_extension(tmp_path / "extensions", "tiles", SCRIPTS)
    registry = load(tmp_path)
    assert registry.records["tiles"].state == LOADED, registry.records["tiles"].problem
    return ExtensionScripts(registry)


def tiles(scripts: ExtensionScripts):
    return scripts.find("tiles", is_img2img=False, alwayson=False)


def test_values_pass_by_name_or_in_field_order_and_missing_ones_keep_their_defaults(scripts):
    definition = tiles(scripts)
    assert definition.field_names == ["rows", "label", "scale", "mirror"]
    by_name = definition.parse({"mirror": True, "rows": 3})
    assert (by_name.rows, by_name.label, by_name.scale, by_name.mirror) == (3, "none", 1.0, True)
    positional = definition.parse([4, "top"])
    assert (positional.rows, positional.label, positional.scale, positional.mirror) == (4, "top", 1.0, False)
    assert definition.parse(None) == definition.values_type()
    assert definition.parse({"rows": "5"}).rows == 5   # a number sent as text is read like a setting


@pytest.mark.parametrize("args, message", [
    ({"colums": 2}, "unknown argument(s) 'colums'; its arguments: rows, label, scale, mirror"),
    ([1, "top", 1.0, True, "extra"], "takes at most 4 arguments"),
    ({"rows": 9}, "rows: Rows: 9 is outside 1 .. 8"),
    ({"label": "bottom"}, "'bottom' is not one of none, top"),
    ({"mirror": "yes"}, "mirror: Mirror: expected true or false"),
    ({"scale": float("nan")}, "not a finite number"),
    ("rows=2", "arguments must be an object of argument names or a list"),
])
def test_bad_values_are_refused_naming_the_script_and_the_argument(scripts, args, message):
    with pytest.raises(ScriptArgsError) as refused:
        tiles(scripts).parse(args)
    assert str(refused.value).startswith("Tiles") and message in str(refused.value)


def test_values_written_to_the_infotext_are_read_back(scripts):
    definition = tiles(scripts)
    values = definition.parse({"rows": 3, "label": "top", "scale": 1.5, "mirror": True})
    text = create_infotext("a cat", "", {"Steps": 2, **definition.infotext_pairs(values)})
    assert "Tiles rows: 3" in text and "Tiles mirror: True" in text
    assert definition.values_from_infotext(parse_infotext(text)) == definition.as_dict(values)
    bad = parse_infotext(create_infotext("a cat", "", {"Steps": 2, "Tiles rows": 99}))
    assert "rows" not in definition.values_from_infotext(bad)


def test_alwayson_values_travel_in_the_request_under_the_script_title(scripts):
    request = scripts.with_alwayson(Txt2ImgRequest(prompt="x"), {"tint": {"strength": 0.5}})
    assert request.script_values == {"Tint": {"strength": 0.5}}
    assert request.infotext_fields == {"Tint": 0.5}       # the script's own infotext key
    with pytest.raises(ScriptArgsError, match="always-on script 'Tiles' is unknown; always-on scripts here: Tint"):
        scripts.with_alwayson(Txt2ImgRequest(), {"Tiles": []})
    with pytest.raises(ScriptArgsError, match="strength"):
        scripts.with_alwayson(Txt2ImgRequest(), {"Tint": [2.0]})


@dataclass
class Glow:
    amount: int = api.script_field(1, "Amount", minimum=0, maximum=9)


def test_a_script_handle_reads_its_values_from_a_request(tmp_path):
    registry = ExtensionRegistry(api.API_VERSION)
    registry.add_record(ExtensionRecord("glow", tmp_path, builtin=False))
    handle = api.ExtensionSetup(registry, registry.records["glow"], tmp_path).add_script("Glow", Glow, alwayson=True)
    assert handle.title == "Glow"
    assert handle.values_of(Txt2ImgRequest()) is None
    assert handle.values_of(Txt2ImgRequest(script_values={"Glow": {"amount": 4}})) == Glow(4)


@pytest.mark.parametrize("code, problem", [
    ('ext.add_script("Grid", dict, lambda c: None)', "values must be a dataclass type"),
    ('ext.add_script("X/Y/Z plot", V, lambda c: None)', "is the app's own"),
    ('ext.add_script("Bad:title", V, lambda c: None)', "must be non-empty letters"),
    ('ext.add_script("Grid", V)', "a selectable script needs a run function"),
    ('ext.add_script("Grid", V, lambda c: None, alwayson=True)', "an always-on script has no run"),
    ('ext.add_script("Grid", NoDefault, lambda c: None)', "field 'n' needs a default"),
    ('ext.add_script("Grid", Listy, lambda c: None)', "the default must be a bool, int, float or str"),
    ('ext.add_script("Grid", V, lambda c: None); ext.add_script("grid", V, lambda c: None)', "exists already"),
    ('ext.add_script("Grid", Keyed, lambda c: None)', "infotext key '-n' cannot be read back"),
    ('ext.add_tab("", lambda c: None)', "the title must be non-empty"),
    ('ext.add_javascript("../../etc/passwd")', "is not a .js file inside the extension's folder"),
    ('ext.add_css("missing.css")', "is not a .css file inside the extension's folder"),
])
def test_registrations_the_app_refuses_fail_the_extension_with_the_reason(tmp_path, code, problem):
    write_extension(tmp_path / "extensions", "refused", f"""
        from dataclasses import dataclass
        from webui.extensions import api

        @dataclass
        class V:
            n: int = 1

        @dataclass
        class NoDefault:
            n: int

        @dataclass
        class Keyed:
            n: int = api.script_field(1, infotext="-n")

        @dataclass
        class Listy:
            n: tuple = ()

        def setup(ext):
            {code}
    """)
    record = load(tmp_path).records["refused"]
    assert record.state == FAILED and problem in record.problem


def test_page_assets_take_registered_files_then_a1111_conventions(tmp_path):
    folder = write_extension(tmp_path / "extensions", "styled", """
        def setup(ext):
            ext.add_css("extra.css")
            ext.add_javascript("tools/first.js")
    """)
    (folder / "extra.css").write_text(".extra {color: red}")
    (folder / "style.css").write_text(".styled {color: blue}")
    (folder / "tools").mkdir()
    (folder / "tools" / "first.js").write_text("window.first = 1;")
    (folder / "javascript").mkdir()
    (folder / "javascript" / "b.js").write_text("window.b = '</script>';")
    (folder / "javascript" / "a.js").write_text("window.a = 1;")
    css, head = page_assets(load(tmp_path))
    assert css.index(".extra") < css.index(".styled")
    assert head.index("window.first") < head.index("window.a") < head.index("window.b")
    assert "'<\\/script>'" in head and head.count("</script>") == 3   # a file cannot close its own tag


def test_settings_apply_all_or_nothing_and_persist(tmp_path):
    store = ExtensionSettings(tmp_path / SETTINGS_FILE)
    store.declare("a", api.Setting("size", "Size", 3, minimum=1, maximum=9))
    store.declare("b", api.Setting("mode", "Mode", "fast", choices=("fast", "slow")))
    with pytest.raises(SettingError) as refused:
        store.set_many({("a", "size"): 5, ("b", "mode"): "medium"})
    assert "b: Mode: 'medium' is not one of fast, slow" in str(refused.value)
    assert store.value("a", "size") == 3 and not (tmp_path / SETTINGS_FILE).exists()   # nothing half-applied
    store.set_many({("a", "size"): 5, ("b", "mode"): "slow"})
    again = ExtensionSettings(tmp_path / SETTINGS_FILE)
    again.declare("a", api.Setting("size", "Size", 3, minimum=1, maximum=9))
    assert again.value("a", "size") == 5


def test_server_options_persist_in_config_json_beside_other_keys(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"sd_model_checkpoint": "mine", "CLIP_stop_at_last_layers": 40}))
    options = ServerOptions(config)
    assert options.values()["CLIP_stop_at_last_layers"] == 1      # a stored value that cannot work: the default
    options.update(check_options({"CLIP_stop_at_last_layers": 2.0, "samples_save": False}, lambda name: None))
    upscaling = {"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "upscaler_for_img2img": "None"}
    assert json.loads(config.read_text()) == {"sd_model_checkpoint": "mine", "CLIP_stop_at_last_layers": 2,
                                              "samples_save": False, "sd_vae": "Automatic", **upscaling}
    assert ServerOptions(config).values() == {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 2,
                                              "samples_save": False, **upscaling}
    for changes, message in [({"CLIP_stop_at_last_layers": 13}, "outside 1..12"),
                             ({"samples_save": "no"}, "true or false"), ({"eta_noise": 1}, "unknown option"),
                             ({"ESRGAN_tile": "big"}, "whole number"),
                             ({"ESRGAN_tile": 64, "ESRGAN_tile_overlap": 32}, "less than half")]:
        with pytest.raises(RequestError, match=message):
            check_options(changes, lambda name: None)


def _prompt_matrix():
    spec = importlib.util.spec_from_file_location("prompt_matrix_ext",
                                                  REPO / "extensions-builtin" / "prompt-matrix" / "extension.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_prompt_matrix_combines_the_parts_and_labels_the_axes():
    matrix = _prompt_matrix()
    parts = ["a red circle", "blue background", "striped"]
    values = matrix.MatrixValues()
    assert [matrix.combined_prompt(parts, mask, values) for mask in range(4)] == [
        "a red circle", "a red circle, blue background", "a red circle, striped",
        "a red circle, blue background, striped"]
    at_start = matrix.MatrixValues(put_at_start=True, variations_delimiter="space")
    assert matrix.combined_prompt(parts, 3, at_start) == "blue background striped a red circle"
    assert matrix.axis_labels(parts, range(0, 1), 2) == ["- blue background", "+ blue background"]
    assert matrix.axis_labels(parts, range(1, 2), 2) == ["- striped", "+ striped"]
