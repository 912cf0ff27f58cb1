"""The few git commands extension installs need, run without a shell, with `--` before every address
and with prompts off (a server must never wait for a password on its console)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 300.0
# No credential prompts, no system-wide hooks or helpers that a repository could name.
_ENV = (("GIT_TERMINAL_PROMPT", "0"), ("GIT_ASKPASS", "true"), ("SSH_ASKPASS", "true"),
        ("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"))
_SAFE = ("-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", "-c", "core.hooksPath=/dev/null")


class GitError(RuntimeError):
    """A git command failed; the message holds git's own reason."""


@dataclass(frozen=True)
class GitInfo:
    """Where an installed extension came from, as A1111's extension list shows it."""

    remote: str = ""
    branch: str = ""
    commit: str = ""
    commit_date: int = 0     # seconds since the epoch


def run_git(*args: str, cwd: Path | None = None) -> str:
    """git's stdout; GitError with git's message when it fails or cannot be run."""
    try:
        done = subprocess.run(["git", *_SAFE, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env={**os.environ, **dict(_ENV)})
    except FileNotFoundError:
        raise GitError("git is not installed on the server") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} did not finish in {GIT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        message = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip()) or "no reason given"
        raise GitError(message.removeprefix("fatal: "))
    return done.stdout.strip()


def clone(url: str, target: Path) -> None:
    run_git("clone", "--quiet", "--no-recurse-submodules", "--", url, str(target))


def head(folder: Path) -> str:
    return run_git("rev-parse", "HEAD", cwd=folder)


def pull(folder: Path) -> None:
    """Fast-forward only: a folder the user changed by hand is never merged into."""
    run_git("pull", "--quiet", "--ff-only", cwd=folder)


def reset_to(folder: Path, commit: str) -> None:
    run_git("reset", "--quiet", "--hard", commit, cwd=folder)


def is_repository(folder: Path) -> bool:
    return (folder / ".git").exists()


def info(folder: Path) -> GitInfo:
    """Remote, branch, commit and its date of a cloned extension; empty fields when git cannot tell."""
    if not is_repository(folder):
        return GitInfo()
    try:
        commit, date = run_git("log", "-1", "--format=%H%n%ct", cwd=folder).splitlines()
        branch = run_git("rev-parse", "--abbrev-ref", "HEAD", cwd=folder)
    except (GitError, ValueError):
        return GitInfo()
    try:
        remote = run_git("config", "--get", "remote.origin.url", cwd=folder)
    except GitError:
        remote = ""
    return GitInfo(remote=remote, branch=branch, commit=commit, commit_date=int(date))
