"""launch.py with a Ray cluster address that does not answer: one line saying so, at once, exit 1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.conftest import ROOT, free_port


def test_a_ray_address_that_does_not_answer_stops_the_start_with_one_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once this socket is closed
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(free_port()), "--data-dir",
         str(tmp_path), "--ray-address", f"127.0.0.1:{closed}", "--ray-cpu-workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1
    assert (f"launch.py: error: the Ray cluster at 127.0.0.1:{closed} does not answer (connection refused); "
            "is `ray start --head` running there") in finished.stderr
    assert "Traceback" not in finished.stderr + finished.stdout
    assert time.monotonic() - started < 60  # no retries for minutes (it takes about a second)
    assert not (tmp_path / "models").exists()  # refused before any folder or model
