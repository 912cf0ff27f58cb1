"""A pytest plugin for extension authors: start SD Studio with your extension and test it over HTTP.

Enable it with `pytest -p webui.extensions.testing` (or `pytest_plugins = ["webui.extensions.testing"]` in
your conftest.py), run pytest with SD Studio's Python, and use the fixtures::

    def test_my_route(sdstudio_app):                     # the app with the extension this test lives in
        answer = requests.get(sdstudio_app.url + "/extensions/my-extension/ping")
        assert answer.status_code == 200

`sdstudio_app` starts the app once per test module with the extension whose `extension.toml` is in the
test file's folder or above it (or the folder given with `--sdstudio-extension PATH`), on a temporary
data folder with the default model, and the flags of a module's `pytestmark = pytest.mark.sdstudio_args(
"--api", ...)` (default `--api`). `sdstudio_extension_server` is `webui.extensions.harness.extension_server`
itself, for several extensions or other flags: `with sdstudio_extension_server(path, args=(...)) as app:`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from webui.extensions.harness import RunningApp, extension_server
from webui.extensions.manifest import MANIFEST_FILE


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sdstudio-extension", default=None,
                     help="the extension folder sdstudio_app starts SD Studio with (default: the folder holding "
                          "extension.toml above each test file)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sdstudio_args(*flags): launch.py flags for the sdstudio_app fixture")


def extension_folder_of(path: Path) -> Path:
    """The nearest folder at or above `path` that holds an extension.toml."""
    for folder in [path, *path.parents] if path.is_dir() else path.parents:
        if (folder / MANIFEST_FILE).is_file():
            return folder
    raise pytest.UsageError(f"no {MANIFEST_FILE} in {path} or above it: pass --sdstudio-extension PATH")


@pytest.fixture(scope="module")
def sdstudio_app(request: pytest.FixtureRequest) -> Iterator[RunningApp]:
    """SD Studio with the extension under test, started once per module; `.url`, `.data_dir`, `.log()`."""
    option = request.config.getoption("--sdstudio-extension")
    folder = Path(option) if option else extension_folder_of(Path(str(request.node.path)))
    marker = request.node.get_closest_marker("sdstudio_args")
    flags = tuple(marker.args) if marker else ("--api",)
    with extension_server(folder, args=flags) as app:
        yield app


@pytest.fixture
def sdstudio_extension_server() -> Callable:
    """`extension_server(*folders, args=(...), data_dir=None)`: a context manager yielding a RunningApp."""
    return extension_server
