"""Install everything the test suite needs (venv, test extras, Debian chromium) and run it all.

    python3 run_tests.py                 # ruff, then the whole suite
    python3 run_tests.py -m "not slow"   # the quick tier (tests/unit); extra arguments go to pytest
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from webui.install import ensure_chromium, ensure_environment, reexec_in_venv

    ensure_environment("test")
    reexec_in_venv(Path(__file__).resolve(), argv)
    chromium = ensure_chromium()
    env = dict(os.environ)
    if chromium:
        env["SDSTUDIO_CHROMIUM"] = chromium
    lint = subprocess.call([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT)
    if lint != 0:
        print("ruff found problems (rules in pyproject.toml); fix them first", file=sys.stderr)
        return lint
    return subprocess.call([sys.executable, "-m", "pytest", "tests", *argv], cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
