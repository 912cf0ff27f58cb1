"""Start the real app with given extensions, for the check CLI and for extension authors' tests.

The app runs as a user runs it (`launch.py` in a subprocess) on a temporary data folder, so it finds the
extensions through the real discovery path and installs the embedded default model. An extension
outside `extensions-builtin/` is linked (or, where links are not allowed, copied) into
`<data>/extensions/`; the shipped ones load anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webui.settings import PROJECT_ROOT

START_TIMEOUT_S = 300.0
READY_LINE = "running on"


class AppDidNotStart(RuntimeError):
    """The app exited or did not answer in time; the message ends with its log."""


@dataclass
class RunningApp:
    """A started app: its address, its data folder, and its log so far."""

    url: str
    data_dir: Path
    process: subprocess.Popen
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")


def builtin_root() -> Path:
    return (PROJECT_ROOT / "extensions-builtin").resolve()


def is_builtin(folder: Path) -> bool:
    return folder.resolve().parent == builtin_root()


def place_extension(folder: Path, data_dir: Path) -> Path:
    """Where the app will find `folder`: itself for a shipped one, else a link (or copy) in <data>/extensions."""
    folder = folder.resolve()
    if is_builtin(folder):
        return folder
    target = data_dir / "extensions" / folder.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(folder, target_is_directory=True)
    except OSError:  # no symlinks allowed (Windows without developer mode)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True   # any HTTP answer (a login page's 401 included) means it serves
    except OSError:
        return False


@contextlib.contextmanager
def extension_server(*extensions: Path | str, args: tuple[str, ...] = ("--api",), data_dir: Path | None = None,
                     timeout: float = START_TIMEOUT_S) -> Iterator[RunningApp]:
    """Start the app with `extensions` (folders) on a temporary data folder (or `data_dir`), yield it once it
    answers, stop it after. `args` are launch.py flags (`--api` by default, so /sdapi/v1 and /api/v1 answer)."""
    owned = data_dir is None
    data = Path(tempfile.mkdtemp(prefix="sdstudio-extension-")) if data_dir is None else Path(data_dir)
    try:
        for folder in extensions:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{folder} is not a folder")
            place_extension(Path(folder), data)
        app = _start(data, args, timeout)
        try:
            yield app
        finally:
            _stop(app.process)
    finally:
        if owned:
            shutil.rmtree(data, ignore_errors=True)


def _start(data: Path, args: tuple[str, ...], timeout: float) -> RunningApp:
    port = _free_port()
    log_file = data / "server.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "launch.py"), "--skip-install", "--port", str(port),
             "--data-dir", str(data), *args],
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    app = RunningApp(f"http://127.0.0.1:{port}", data, process, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AppDidNotStart(f"the app exited with code {process.returncode}:\n{app.log()}")
        if READY_LINE in app.log() and _answers(app.url + "/"):
            return app
        time.sleep(0.5)
    _stop(process)
    raise AppDidNotStart(f"the app did not answer within {timeout:.0f} s:\n{app.log()}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
