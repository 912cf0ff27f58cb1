"""Discovery, manifests, load order, switches and isolation of extensions (webui.extensions.loader/registry),
through the real loader on extension folders written to disk."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from webui.extensions import api
from webui.extensions.loader import ExtensionSwitches, load_extensions, load_order
from webui.extensions.manifest import ManifestError, read_manifest
from webui.extensions.registry import DISABLED, FAILED, LOADED, REFUSED, ExtensionRegistry, Registration

MANIFEST = """name = "{name}"
version = "1.0.0"
api = "{api}"
description = "test extension {name}"
load_after = {after}
"""


def write_extension(root: Path, name: str, code: str = "def setup(ext):\n    pass\n", *, api_range: str = ">=1, <2",
                    after: tuple[str, ...] = (), folder: str | None = None, manifest: str | None = None) -> Path:
    path = root / (folder or name)
    path.mkdir(parents=True)
    text = manifest if manifest is not None else MANIFEST.format(name=name, api=api_range,
                                                                 after="[" + ", ".join(f'"{a}"' for a in after) + "]")
    (path / "extension.toml").write_text(text, encoding="utf-8")
    (path / "extension.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def load(tmp_path: Path, builtin: Path | None = None, **options) -> ExtensionRegistry:
    registry = ExtensionRegistry(api.API_VERSION)
    roots = ([(builtin, True)] if builtin else []) + [(tmp_path / "extensions", False)]
    return load_extensions(registry, roots, ExtensionSwitches(tmp_path / "extensions.json"),
                           lambda record: api.ExtensionSetup(registry, record, tmp_path / "extension-data"), **options)


def test_a_good_extension_loads_and_its_setup_registers_hooks(tmp_path):
    write_extension(tmp_path / "extensions", "hello", """
        def setup(ext):
            ext.on_app_started(lambda started: None)
    """)
    registry = load(tmp_path)
    record = registry.records["hello"]
    assert record.state == LOADED and record.version == "1.0.0" and record.import_seconds > 0
    assert [row.extension for row in registry.rows(api.APP_STARTED)] == ["hello"]


def test_relative_imports_inside_an_extension_work(tmp_path):
    folder = write_extension(tmp_path / "extensions", "multi", """
        from .helpers import GREETING

        def setup(ext):
            ext.on_app_started(lambda started: print(GREETING))
    """)
    (folder / "helpers.py").write_text("GREETING = 'hi'\n", encoding="utf-8")
    assert load(tmp_path).records["multi"].state == LOADED


@pytest.mark.parametrize("manifest, reason", [
    (None, "no extension.toml"),
    ('name = "x"\nversion = "1"\n', "'api' must be a non-empty string"),
    ('name = "x y"\nversion = "1"\napi = ">=1"\n', "may hold only letters"),
    ('name = "x"\nversion = "one"\napi = ">=1"\n', "is not a version number"),
    ('name = "x"\nversion = "1"\napi = "newest"\n', "is not a version range"),
    ('name = "x"\nversion = "1"\napi = ">=1"\nentry = "../evil.py"\n', "must be a .py file inside the folder"),
    ('name = "x"\nversion = "1"\napi = ">=1"\nrequirements = ["not a requirement!!"]\n', "is not a pip requirement"),
    ('name = "x"\nversion = "1"\napi = ">=1"\ncolour = "red"\n', "unknown field(s) colour"),
    ('name = "x\nversion', "cannot be read"),
])
def test_a_malformed_manifest_is_refused_with_its_reason(tmp_path, manifest, reason):
    folder = tmp_path / "extensions" / "broken"
    folder.mkdir(parents=True)
    if manifest is not None:
        (folder / "extension.toml").write_text(manifest, encoding="utf-8")
    with pytest.raises(ManifestError, match=None) as refused:
        read_manifest(folder)
    assert reason in str(refused.value)
    registry = load(tmp_path)
    record = registry.records["broken"]
    assert record.state == REFUSED and reason in record.problem


def test_an_api_range_this_app_does_not_provide_is_refused(tmp_path):
    write_extension(tmp_path / "extensions", "future", "raise SystemExit('must not be imported')\n", api_range=">=2")
    record = load(tmp_path).records["future"]
    assert record.state == REFUSED
    assert "needs extension API >=2" in record.problem and api.API_VERSION in record.problem


def test_two_extensions_with_one_name_the_second_is_refused(tmp_path):
    write_extension(tmp_path / "builtin", "same")
    write_extension(tmp_path / "extensions", "same", folder="copy-of-same")
    registry = load(tmp_path, builtin=tmp_path / "builtin")
    assert registry.records["same"].state == LOADED and registry.records["same"].builtin
    refused = [r for r in registry.records.values() if r.state == REFUSED]
    assert len(refused) == 1 and "already used by" in refused[0].problem and refused[0].folder.name == "copy-of-same"


def test_load_order_follows_hints_then_names(tmp_path):
    log = tmp_path / "order.txt"
    for name, after in [("zeta", ()), ("alpha", ("zeta",)), ("beta", ()), ("gamma", ("missing-one",))]:
        write_extension(tmp_path / "extensions", name,
                        f"def setup(ext):\n    open({str(log)!r}, 'a').write('{name}\\n')\n", after=after)
    load(tmp_path)
    assert log.read_text().split() == ["beta", "gamma", "zeta", "alpha"]


def test_a_cycle_in_the_hints_still_loads_everything_by_name():
    from webui.extensions.manifest import ExtensionManifest
    from packaging.specifiers import SpecifierSet

    def manifest(name, *after):
        return ExtensionManifest(name, "1", SpecifierSet(">=1"), load_after=after)

    order, cycle = load_order({"b": manifest("b", "a"), "a": manifest("a", "b"), "c": manifest("c")})
    assert order == ["c", "a", "b"] and cycle == ["a", "b"]


def test_import_errors_and_failing_setups_are_isolated(tmp_path):
    write_extension(tmp_path / "extensions", "syntax", "def setup(ext)\n    pass\n")
    write_extension(tmp_path / "extensions", "raises", """
        def setup(ext):
            ext.on_app_started(lambda started: None)
            raise RuntimeError("setup went wrong")
    """)
    write_extension(tmp_path / "extensions", "nosetup", "X = 1\n")
    write_extension(tmp_path / "extensions", "fine")
    registry = load(tmp_path)
    states = {name: (r.state, r.problem) for name, r in registry.records.items()}
    assert states["syntax"][0] == FAILED and "SyntaxError" in states["syntax"][1]
    assert states["raises"] == (FAILED, "RuntimeError: setup went wrong")
    assert "Traceback" in registry.records["raises"].traceback
    assert states["nosetup"] == (FAILED, "TypeError: extension.py defines no setup(ext) function")
    assert states["fine"][0] == LOADED
    assert registry.rows(api.APP_STARTED) == []  # the half-done registration of "raises" is gone


def test_switched_off_extensions_are_listed_but_not_imported_and_the_choice_is_remembered(tmp_path):
    write_extension(tmp_path / "extensions", "quiet", "raise SystemExit('must not be imported')\n")
    switches = ExtensionSwitches(tmp_path / "extensions.json")
    switches.set_enabled("quiet", False)
    assert ExtensionSwitches(tmp_path / "extensions.json").disabled() == {"quiet"}
    assert load(tmp_path).records["quiet"].state == DISABLED
    switches.set_enabled("quiet", True)
    assert load(tmp_path).records["quiet"].state == FAILED  # imported now (and its SystemExit is caught)


def test_the_disable_flags(tmp_path):
    write_extension(tmp_path / "builtin", "shipped")
    write_extension(tmp_path / "extensions", "users")
    only_builtin = load(tmp_path, builtin=tmp_path / "builtin", load_user_extensions=False)
    assert (only_builtin.records["shipped"].state, only_builtin.records["users"].state) == (LOADED, DISABLED)
    nothing = load(tmp_path, builtin=tmp_path / "builtin", load_any=False)
    assert {r.state for r in nothing.records.values()} == {DISABLED}


def test_a_hook_that_raises_or_returns_the_wrong_type_switches_its_extension_off(tmp_path):
    registry = ExtensionRegistry(api.API_VERSION)
    write_extension(tmp_path / "extensions", "bad")
    write_extension(tmp_path / "extensions", "good")
    registry = load(tmp_path)
    registry.register(Registration("bad", "demo", lambda value: value * 2, returns=int))
    registry.register(Registration("good", "demo", lambda value: value + 1, returns=int))
    warnings: list[str] = []
    assert [result for _, result in registry.call_each("demo", 5, warnings=warnings)] == [10, 6]
    assert warnings == []
    assert [result for _, result in registry.call_each("demo", "x", warnings=warnings)] == []
    assert registry.records["bad"].state == FAILED
    assert registry.records["bad"].problem == "demo returned str, expected int"
    assert registry.records["good"].state == FAILED and "TypeError" in registry.records["good"].problem
    assert len(warnings) == 2 and "extension 'bad' failed and was switched off until restart" in warnings[0]
    assert registry.rows("demo") == []
    assert registry.records["good"].timings["demo"].calls == 2


def test_slow_hooks_are_named(tmp_path):
    import time

    write_extension(tmp_path / "extensions", "sleepy")
    registry = load(tmp_path)
    registry.register(Registration("sleepy", "demo", lambda: time.sleep(0.3)))
    list(registry.call_each("demo"))
    assert registry.records["sleepy"].slow_hooks()[0].startswith("demo (3")


@pytest.mark.parametrize("prefix", ["/sdapi/v1/x", "/api", "/", "relative", "/gradio_api/call", "/a/../b"])
def test_a_route_prefix_the_app_uses_is_refused(tmp_path, prefix):
    write_extension(tmp_path / "extensions", "routes", f"""
        from fastapi import APIRouter

        def setup(ext):
            ext.add_router(APIRouter(), prefix={prefix!r})
    """)
    record = load(tmp_path).records["routes"]
    assert record.state == FAILED and "is not allowed" in record.problem


def test_extension_settings_are_declared_checked_and_kept_across_restarts(tmp_path):
    from webui.extensions.settings_store import ExtensionSettings

    code = """
        from webui.extensions import api

        def setup(ext):
            ext.add_setting(api.Setting("mode", "Mode", "random", choices=("random", "combinatorial")))
            ext.add_setting(api.Setting("max_count", "Most images", 100, minimum=1, maximum=1000))
            ext.add_setting(api.Setting("enabled", "On", True))
            ext.on_app_started(lambda started: None)
            (ext.data_folder / "seen.txt").write_text(str(ext.setting("max_count")))
    """
    write_extension(tmp_path / "extensions", "tuned", code)

    def load_with_settings():
        registry = ExtensionRegistry(api.API_VERSION, ExtensionSettings(tmp_path / "extension_settings.json"))
        return load_extensions(registry, [(tmp_path / "extensions", False)], ExtensionSwitches(tmp_path / "x.json"),
                               lambda record: api.ExtensionSetup(registry, record, tmp_path / "extension-data"))

    settings = load_with_settings().settings
    assert [(extension, spec.key) for extension, spec in settings.declared()] == [
        ("tuned", "mode"), ("tuned", "max_count"), ("tuned", "enabled")]
    assert (tmp_path / "extension-data" / "tuned" / "seen.txt").read_text() == "100"
    assert settings.set("tuned", "max_count", "250") == 250
    for key, bad, reason in [("mode", "sideways", "is not one of random, combinatorial"),
                             ("max_count", 0, "outside"), ("max_count", "many", "not an integer"),
                             ("enabled", "yes", "expected true or false"), ("nothing", 1, "declares no setting")]:
        with pytest.raises(ValueError, match=reason):
            settings.set("tuned", key, bad)
    load_with_settings()
    assert (tmp_path / "extension-data" / "tuned" / "seen.txt").read_text() == "250"


def test_a_bad_setting_declaration_fails_the_extension(tmp_path):
    write_extension(tmp_path / "extensions", "twice", """
        from webui.extensions import api

        def setup(ext):
            ext.add_setting(api.Setting("mode", "Mode", "a", choices=("a", "b")))
            ext.add_setting(api.Setting("mode", "Mode again", "a"))
    """)
    registry = load(tmp_path)
    assert registry.records["twice"].state == FAILED
    assert "declared twice" in registry.records["twice"].problem
    assert registry.settings.declared() == []


@pytest.mark.parametrize("kind, reason", [("lora", "not one the app reads"), ("Bad Kind", "lower-case"),
                                          ("x", "2-32")])
def test_a_network_type_needs_a_kind_of_its_own(tmp_path, kind, reason):
    write_extension(tmp_path / "extensions", "nets", f"""
        from webui.extensions import api

        def setup(ext):
            ext.add_network_type({kind!r}, "Nets", lambda: [], lambda activation: None)
    """)
    record = load(tmp_path).records["nets"]
    assert record.state == FAILED and reason in record.problem
