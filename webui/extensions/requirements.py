"""An extension's pip requirements: installed into the app's environment only when they leave the app's
own dependencies as they are.

The app's pins are the installed versions of everything SD Studio depends on (its requirements and
theirs, recursively). A requirement is refused when it asks for another version of a pinned package,
or when pip, resolving it with the pins as constraints (`pip install --dry-run -c pins.txt`), finds a
conflict further down (a dependency of the requirement that needs another torch, say). Only then is the
real install run, with the same constraints, so it cannot move a pinned package either.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

APP_DISTRIBUTION = "sd-studio"
PROJECT_FILE = Path(__file__).resolve().parents[2] / "pyproject.toml"


class RequirementConflict(ValueError):
    """A requirement would change a package the app depends on; the message names the package."""


class RequirementInstallFailed(ValueError):
    """pip could not install the requirements (not found, build failure ...); the message says pip's reason."""


def app_pins() -> dict[str, str]:
    """canonical package name -> installed version, for every package the app needs (recursively)."""
    try:
        roots = metadata.requires(APP_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a checkout that pip never installed
        roots = tomllib.loads(PROJECT_FILE.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins: dict[str, str] = {}
    pending = [Requirement(line) for line in roots]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in pins:
            continue
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pending.extend(Requirement(line) for line in (metadata.requires(name) or []))
    return pins


def direct_conflicts(requirements: Sequence[str], pins: dict[str, str]) -> list[str]:
    """One line per requirement that asks for another version of a pinned package."""
    found = []
    for line in requirements:
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is not None and not requirement.specifier.contains(pinned, prereleases=True):
            found.append(f"{line!r} conflicts with the app's {requirement.name} {pinned}")
    return found


def unmet(requirements: Sequence[str]) -> list[str]:
    """The requirements the app's environment does not satisfy (not installed, or another version)."""
    missing = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{line} (found {installed})")
    return missing


def pip_reason(output: str) -> str:
    """The lines of pip's output that say what went wrong, without its generic advice."""
    lines = [line.strip() for line in output.splitlines()]
    reasons: list[str] = []
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        for line in lines[start:]:
            if not line:
                break
            reasons.append(line)
    reasons += [line.removeprefix("ERROR: ") for line in lines
                if line.startswith("ERROR:") and "ResolutionImpossible" not in line]
    return "; ".join(dict.fromkeys(reasons)) or (lines[-1] if lines else "pip gave no reason")


@dataclass(frozen=True)
class PipInstaller:
    """Runs pip of the app's own interpreter. `options` are extra pip options (e.g. `--no-index
    --find-links DIR` for an offline wheel folder); pip's own configuration applies as well."""

    python: str = sys.executable
    options: tuple[str, ...] = ()
    timeout_s: float = 900.0

    def check(self, requirements: Sequence[str], pins: dict[str, str]) -> None:
        """RequirementConflict (naming the package) unless the requirements fit next to the pins."""
        conflicts = direct_conflicts(requirements, pins)
        if conflicts:
            raise RequirementConflict("requirement refused: " + "; ".join(conflicts)
                                      + " (an extension may not change the app's own dependencies)")
        ok, output = self._pip(["--dry-run"], requirements, pins)
        if not ok:
            kind = RequirementConflict if "conflict" in output.lower() else RequirementInstallFailed
            raise kind(f"requirements {', '.join(requirements)} cannot be installed next to the app's "
                       f"dependencies: {pip_reason(output)}")

    def install(self, requirements: Sequence[str], pins: dict[str, str]) -> None:
        ok, output = self._pip([], requirements, pins)
        if not ok:
            raise RequirementInstallFailed(f"pip could not install {', '.join(requirements)}: {pip_reason(output)}")

    def _pip(self, mode: list[str], requirements: Sequence[str], pins: dict[str, str]) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory(prefix="sdstudio-pins-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())),
                                   encoding="utf-8")
            command = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *mode,
                       "-c", str(constraints), *self.options, "--", *requirements]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                return False, f"ERROR: pip did not finish in {self.timeout_s:.0f} s"
            except OSError as error:
                return False, f"ERROR: pip cannot be run: {error}"
        return done.returncode == 0, done.stdout + "\n" + done.stderr
