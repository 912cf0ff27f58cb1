"""The layer rules of docs/ARCHITECTURE (../shared/ARCHITECTURE.md), checked on the import graph.

Read from the source with ``ast`` (no import side effects), so a forbidden import anywhere in a
module (also inside a function) is caught."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "webui"
ENGINE_PACKAGES = ("generation", "training", "models", "xyz", "jobs", "upscaling")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offenders(files: list[Path], forbidden_prefixes: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for name in sorted(_imported_modules(path)):
            if name.startswith(forbidden_prefixes) or name in {p.rstrip(".") for p in forbidden_prefixes}:
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


def _python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_product_never_imports_the_evaluation_harness_or_tools():
    offenders = _offenders(_python_files(PRODUCT), ("sdstudio_eval", "tools.", "tests."))
    assert offenders == []


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_the_engine_knows_nothing_of_gradio_or_http(package):
    offenders = _offenders(
        _python_files(PRODUCT / package),
        ("gradio", "fastapi", "starlette", "uvicorn", "webui.ui", "webui.api", "webui.app"),
    )
    assert offenders == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import gradio as gr\n    from webui.ui import errors\n")
    assert sorted(_imported_modules(module)) == ["gradio", "webui.ui", "webui.ui.errors"]


def test_the_ui_and_the_http_api_never_import_each_other():
    assert _offenders(_python_files(PRODUCT / "api"), ("webui.ui",)) == []
    assert _offenders(_python_files(PRODUCT / "ui"), ("webui.api",)) == []


def test_only_the_composition_root_and_adapters_import_the_context():
    """Services and the engine get their collaborators passed in; the context only wires them."""
    allowed = {"app.py", "train.py", "context.py"}
    importers = [path for path in _python_files(PRODUCT) if "webui.context" in _imported_modules(path)]
    misplaced = [str(path.relative_to(REPO)) for path in importers
                 if path.parent.name not in ("ui", "api") and path.name not in allowed]
    assert misplaced == []


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_the_engine_never_imports_the_extension_layer(package):
    """Extensions plug into seams the engine defines (webui.generation.hooks); the engine does not know them."""
    assert _offenders(_python_files(PRODUCT / package), ("webui.extensions",)) == []


def test_shipped_extensions_use_only_the_public_extension_module():
    files = _python_files(REPO / "extensions-builtin")
    offenders = [f"{path.relative_to(REPO)} imports {name}" for path in files for name in sorted(_imported_modules(path))
                 if name.startswith("webui") and name not in ("webui.extensions", "webui.extensions.api")]
    assert offenders == []
