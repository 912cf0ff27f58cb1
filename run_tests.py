"""Install everything the test suite needs (venv, test extras, Debian chromium) and run it all.

    python3 run_tests.py                 # ruff, then the whole suite, one pytest worker per core (at most 4)
    python3 run_tests.py -m "not slow"   # the quick tier (tests/unit); extra arguments go to pytest
    python3 run_tests.py -n 0            # one process (e.g. to read a failing test's output in order)

Workers take whole test files (`--dist loadfile`): a module's server fixture is started once, by the worker
that runs the module. Most test time is spent waiting on servers, browsers and imports that use one core, so
two workers on two cores roughly halve the suite's time; more than 4 would start too many servers at once.
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
    return subprocess.call([sys.executable, "-m", "pytest", "tests", *worker_arguments(argv), *argv], cwd=ROOT, env=env)


def worker_arguments(argv: list[str]) -> list[str]:
    """pytest-xdist's arguments unless the caller chose (`-n N`)."""
    if any(arg == "-n" or arg.startswith(("-n", "--numprocesses")) for arg in argv):
        return []
    workers = max(1, min(4, os.cpu_count() or 1))
    return ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
