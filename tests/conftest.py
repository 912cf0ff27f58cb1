"""Shared fixtures: a data dir with the embedded default model, and a real running server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def default_model_folder(tmp_path_factory) -> Path:
    """The embedded default model, built once per test session."""
    from webui.models.default_model import DEFAULT_MODEL_NAME, ensure_default_model

    folder = tmp_path_factory.mktemp("default-model")
    ensure_default_model(folder)
    return folder / DEFAULT_MODEL_NAME


def with_default_model(data: Path, default_model_folder: Path) -> Path:
    """Make `data` a --data-dir holding a copy of the default model; returns it."""
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    return data


@pytest.fixture
def data_dir(tmp_path, default_model_folder) -> Path:
    """A fresh --data-dir holding a copy of the default model."""
    return with_default_model(tmp_path, default_model_folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_server(data_dir: Path, *extra_args: str, timeout: float = 180,
                 env: dict[str, str] | None = None) -> RunningServer:
    """Run `launch.py` as a user would, in a subprocess, and wait until it says it is running and answers.

    A port another test process took between `free_port` and the server's bind (parallel workers) is
    retried on a new port."""
    for _ in range(3):
        try:
            return _start_server_once(data_dir, extra_args, timeout, env)
        except _PortTaken:
            continue
    raise RuntimeError("three free ports in a row were taken before the server could bind them")


class _PortTaken(RuntimeError):
    pass


def _start_server_once(data_dir: Path, extra_args: tuple[str, ...], timeout: float,
                       env: dict[str, str] | None) -> RunningServer:
    import requests

    port = free_port()
    log_file = data_dir / "server.log"
    start = log_file.stat().st_size if log_file.exists() else 0
    handle = open(log_file, "a")  # a restarted server appends to the same log
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port), "--data-dir", str(data_dir), *extra_args],
        cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            written = _log_since(log_file, start)
            if "port is in use" in written:  # launch.py's message when the bind fails
                raise _PortTaken(written)
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_file.read_text()}")
        try:
            if "running on" in _log_since(log_file, start):
                requests.get(url + "/", timeout=2)
                return RunningServer(url, data_dir, process, log_file)
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not start in {timeout}s:\n{log_file.read_text()}")


def _log_since(log_file: Path, offset: int) -> str:
    return log_file.read_bytes()[offset:].decode(errors="replace")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_model_folder) -> RunningServer:
    """One server with UI + API on the default model, plus a corrupt checkpoint beside it."""
    data = tmp_path_factory.mktemp("server-data")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    (checkpoints / "broken-download.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": trunc")
    running = start_server(data, "--api")
    yield running
    stop_server(running)


# The tiers, by folder: `unit` runs in about a minute; the others start pipelines, servers or a browser.
# `python3 run_tests.py -m "not slow"` is the quick tier; the README's command runs everything.
_TIER_OF_FOLDER = {"unit": "unit", "api": "api", "engine": "engine", "browser": "browser", "gpu": "gpu"}


def pytest_collection_modifyitems(config, items):
    # Modules marked `long` first: with workers taking whole files in collection order (run_tests.py), a
    # minutes-long module started last would leave one worker running alone at the end.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        tier = _TIER_OF_FOLDER.get(folder)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
            if tier != "unit":
                item.add_marker(pytest.mark.slow)
