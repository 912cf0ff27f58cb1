"""Create and fill the project's virtual environment (stdlib only, runs before anything is installed).

`python launch.py` and `python run_tests.py` call `ensure_environment` and then re-execute themselves
with the venv's interpreter, like A1111's launcher installs its own requirements. An install stamp
(a hash of pyproject.toml) makes the second start instant.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_DIR = PROJECT_ROOT / ".venv"
# One torch release everywhere: on this project's CPU machines pip takes a local CPU build, on a CUDA box
# PyPI's Linux wheel of the same release is the CUDA build.
TORCH_REQUIREMENT = "torch==2.13.0"
REEXEC_MARKER = "SDSTUDIO_REEXECUTED"
# Installed without their declared requirements. spandrel (upscaler architectures) declares torchvision, which
# only two of its architectures import (neither an upscaler) and whose PyPI wheel, built against CUDA torch,
# breaks beside CPU torch; its other requirements (numpy, safetensors, einops) are in pyproject.toml.
# webui/upscaling/spandrel_architectures.py uses spandrel with or without torchvision.
NO_DEPS_REQUIREMENTS = ("spandrel==0.4.2",)


def venv_python() -> Path:
    return VENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def running_in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV_DIR.resolve()


def _requirements_stamp(extras: str) -> str:
    digest = hashlib.sha256((PROJECT_ROOT / "pyproject.toml").read_bytes())
    digest.update(extras.encode())
    digest.update(" ".join(NO_DEPS_REQUIREMENTS).encode())
    return digest.hexdigest()


def _pip(*args: str) -> None:
    command = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("[install]", " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True)


def ensure_environment(extras: str = "") -> None:
    """Make .venv hold torch and the project (with `extras`, e.g. "test"); no-op when up to date."""
    if not venv_python().exists():
        print(f"[install] creating virtual environment in {VENV_DIR}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV_DIR)
    stamp_file = VENV_DIR / f".sdstudio-installed{('-' + extras) if extras else ''}"
    stamp = _requirements_stamp(extras)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    has_torch = subprocess.run([str(venv_python()), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        _pip(TORCH_REQUIREMENT)
    target = f".[{extras}]" if extras else "."
    _pip("-e", target)
    _pip("--no-deps", *NO_DEPS_REQUIREMENTS)
    stamp_file.write_text(stamp)


def reexec_in_venv(script: Path, argv: list[str]) -> None:
    """Replace this process with the same script run by the venv's Python."""
    if running_in_project_venv() or os.environ.get(REEXEC_MARKER):
        return
    env = dict(os.environ, **{REEXEC_MARKER: "1"})
    python = str(venv_python())
    if os.name == "nt":  # execv on Windows does not replace the process cleanly
        raise SystemExit(subprocess.call([python, str(script), *argv], env=env))
    os.execve(python, [python, str(script), *argv], env)


def ensure_chromium() -> str | None:
    """Path of a Chromium for browser tests, installing Debian's package when we are root and it is missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("[install] installing Debian's chromium for the browser tests", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return shutil.which("chromium") or shutil.which("chromium-browser")
