"""launch.py as a user runs it, when it cannot serve: one line saying why and a non-zero exit, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, free_port


def test_a_port_in_use_is_reported_in_one_line_before_any_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port), "--data-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert f"launch.py: error: the HTTP server could not start on 127.0.0.1:{port}: the port is in use" in finished.stderr
    assert "Traceback" not in finished.stderr + finished.stdout
    assert not (tmp_path / "models").exists()  # it stopped before creating folders or loading the model


def _launch(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(free_port()), "--data-dir",
                           str(tmp_path), *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA (tests/gpu covers a GPU machine)")
@pytest.mark.parametrize("flags, asked", [(("--device-ids", "0,1"), "--device-ids asks for cuda:0"),
                                          (("--device", "cuda"), "--device asks for cuda")])
def test_a_gpu_this_machine_lacks_is_refused_in_one_line(tmp_path, flags, asked):
    finished = _launch(tmp_path, *flags)
    assert finished.returncode == 1
    assert f"launch.py: error: {asked}, but torch sees no CUDA device on this machine" in finished.stderr
    assert "Traceback" not in finished.stderr + finished.stdout
