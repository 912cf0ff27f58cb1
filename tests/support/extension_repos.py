"""Extension folders and local git repositories for the extension install tests (these machines reach
no git host, so installs go through `file://` URLs), and a tiny wheel folder for offline pip runs."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

HELLO_CODE = '''
from webui.extensions import api


def started(event: api.AppStarted) -> None:
    (event.data_folder / "hello.txt").write_text("{version}")


def setup(ext: api.ExtensionSetup) -> None:
    ext.on_app_started(started)
'''


def write_extension(folder: Path, name: str, version: str = "1.0.0", api: str = ">=1.0, <2",
                    code: str | None = None, requirements: tuple[str, ...] = (), description: str = "") -> Path:
    """An extension folder: extension.toml and extension.py."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'name = "{name}"', f'version = "{version}"', f'api = "{api}"']
    if description:
        lines.append(f'description = "{description}"')
    if requirements:
        lines.append("requirements = [" + ", ".join(f'"{line}"' for line in requirements) + "]")
    (folder / "extension.toml").write_text("\n".join(lines) + "\n")
    (folder / "extension.py").write_text(code if code is not None else HELLO_CODE.format(version=version))
    return folder


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=Test Author", "-c", "user.email=author@example.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=folder, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def commit_all(folder: Path, message: str) -> str:
    """Commit everything in the folder (a repository is created on first use); returns the commit id."""
    if not (folder / ".git").exists():
        git(folder, "init", "--quiet")
    git(folder, "add", "-A")
    git(folder, "commit", "--quiet", "-m", message)
    return git(folder, "rev-parse", "HEAD")


def extension_repo(folder: Path, name: str, **fields) -> str:
    """A git repository holding one extension, committed; returns its file:// URL."""
    write_extension(folder, name, **fields)
    commit_all(folder, f"{name} {fields.get('version', '1.0.0')}")
    return folder.resolve().as_uri()


def wheel_folder(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A folder with one pure-Python wheel `name-version` that requires `requires`, for pip --find-links."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires)
    files = {f"{name}/__init__.py": "", f"{info}/METADATA": metadata,
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return folder
