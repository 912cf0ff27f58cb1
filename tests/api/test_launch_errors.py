"""launch.py as a user runs it, when it cannot serve: one line saying why and a non-zero exit, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.conftest import ROOT


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
