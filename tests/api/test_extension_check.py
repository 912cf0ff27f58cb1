"""The test kit for extension authors (issue 16, item 5): `python -m webui.extensions.check` on a good
extension together with every shipped one (so CI checks extensions-builtin/), on broken ones, and the
pytest plugin `webui.extensions.testing` used the way an author uses it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.extension_repos import write_extension
from webui.extensions.check import check, main
from webui.extensions.harness import builtin_root

ROOT = Path(__file__).resolve().parents[2]

GOOD = '''
from fastapi import APIRouter

from webui.extensions import api

router = APIRouter()


@router.get("/ping")
def ping() -> dict:
    return {"pong": True}


def started(event: api.AppStarted) -> None:
    (event.data_folder / "started.txt").write_text(event.base_url)


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_router(router)
    ext.on_app_started(started)
'''

WRONG_RETURN = '''
from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    ext.on_app_started(lambda event: "a string instead of None")
'''

BROKEN_ROUTE = '''
from fastapi import APIRouter

from webui.extensions import api

router = APIRouter()


@router.get("/status")
def status() -> dict:
    raise RuntimeError("the status route is broken")


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_router(router)
'''


def shipped_extensions() -> list[Path]:
    root = builtin_root()
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))) \
        if root.is_dir() else []


def test_the_check_passes_a_good_extension_and_every_shipped_one(tmp_path):
    good = write_extension(tmp_path / "good", "good", version="0.3.0", code=GOOD)
    out = io.StringIO()
    code = check([good, *shipped_extensions()], out=out)
    report = out.getvalue()
    assert code == 0, report
    assert "== good" in report and "manifest: good 0.3.0" in report
    assert "route GET /extensions/good/ping answered 200" in report
    assert "txt2img with the extension loaded: 1 image(s)" in report
    assert "img2img with the extension loaded: 1 image(s)" in report
    assert "hooks that ran: app_started (1x), router (1x)" in report
    for folder in shipped_extensions():
        assert f"({folder})" in report and "(shipped in extensions-builtin)" in report
    assert f"{1 + len(shipped_extensions())} extension(s) checked: 0 problem(s)" in report


def test_the_check_command_reports_each_problem_and_exits_1(tmp_path):
    folders = [
        write_extension(tmp_path / "missing-module", "missing-module", code="import not_a_module_anywhere\n"),
        write_extension(tmp_path / "wrong-return", "wrong-return", code=WRONG_RETURN),
        write_extension(tmp_path / "broken-route", "broken-route", code=BROKEN_ROUTE),
        write_extension(tmp_path / "future", "future", api=">=3"),
    ]
    (tmp_path / "no-manifest").mkdir()
    folders.append(tmp_path / "no-manifest")
    done = subprocess.run([sys.executable, "-m", "webui.extensions.check", *map(str, folders)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    report = done.stdout
    assert done.returncode == 1, report + done.stderr
    sections = {chunk.split(" ", 1)[0]: chunk for chunk in report.split("== ")[1:]}
    assert "PROBLEM  failed at start: ModuleNotFoundError: No module named 'not_a_module_anywhere'" \
        in sections["missing-module"]
    assert 'extension.py", line 1' in sections["missing-module"]  # the traceback points at the author's file
    assert "PROBLEM  failed at start: app_started returned str, expected None" in sections["wrong-return"]
    assert "PROBLEM  route GET /extensions/broken-route/status answered 500" in sections["broken-route"]
    assert "PROBLEM  refused: needs extension API >=3; this SD Studio provides 1." in sections["future"]
    assert "PROBLEM  refused: no-manifest: no extension.toml" in sections["no-manifest"]
    assert report.rstrip().endswith("5 extension(s) checked: 5 problem(s)")


def test_the_check_refuses_a_path_that_is_not_a_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_the_pytest_plugin_starts_the_app_with_the_authors_extension(tmp_path):
    author = write_extension(tmp_path / "my-extension", "my-extension", code=GOOD)
    (author / "tests").mkdir()
    (author / "tests" / "test_mine.py").write_text(textwrap.dedent('''
        import json
        import urllib.request


        def test_my_route(sdstudio_app):
            with urllib.request.urlopen(sdstudio_app.url + "/extensions/my-extension/ping") as answer:
                assert json.loads(answer.read()) == {"pong": True}


        def test_my_start_hook_ran(sdstudio_app):
            started = sdstudio_app.data_dir / "extension-data" / "my-extension" / "started.txt"
            assert started.read_text() == sdstudio_app.url
    '''))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "webui.extensions.testing", "-q",
                           "-p", "no:cacheprovider", str(author / "tests")], cwd=author, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
