"""What the HTTP benchmarks share: the app started as a user starts it, on 127.0.0.1 only, and the
replacement of one benchmark's section in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # never anything else: the benchmarks flood the server they start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """The app in a subprocess, as a user starts it; stopped by `stop()` whatever happened."""

    def __init__(self, data_dir: Path, extra_args: list[str]):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = data_dir / "server.log"
        command = [sys.executable, str(ROOT / "launch.py"), "--api", "--skip-install", "--data-dir", str(data_dir),
                   "--port", str(self.port), *extra_args]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            if "running on" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout}s")

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def write_section(text: str, path: Path, start: str, end: str) -> None:
    """Replace a benchmark's section (between its `start` and `end` markers) of BENCHMARKS.md, or append it."""
    current = path.read_text(encoding="utf-8")
    if start in current and end in current:
        before = current.split(start)[0]
        after = current.split(end, 1)[1]
        path.write_text(before + text + after, encoding="utf-8")
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n", encoding="utf-8")


def publish(results: dict, markdown: str, write: bool, start: str, end: str) -> None:
    """Print a benchmark's figures as JSON and, with `write`, put its section into docs/BENCHMARKS.md."""
    print(json.dumps(results, indent=2))
    if write:
        write_section(markdown, ROOT / "docs" / "BENCHMARKS.md", start, end)
        print("written to docs/BENCHMARKS.md")
