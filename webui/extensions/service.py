"""The Extensions tab's use cases: list what is installed and how it is doing, switch extensions on and
off, install one from a git URL, update it, uninstall it. The tab and the HTTP API only call this.

Extensions load once, at start (`webui.extensions.loader`), so what changes here takes effect at the
next start, with one exception: disabling a loaded extension stops its hooks at once (its tabs and
routes stay until the restart). An install is all or nothing: the repository is cloned into a hidden
folder beside the others (which discovery skips), its manifest, API range, name and requirements are
checked, requirements are installed, and only then is the folder renamed into place; any failure removes
the clone and says why. Who may do what is decided in `webui.security.extension_access`.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from webui.extensions import git_repo
from webui.extensions.api import ROUTER
from webui.extensions.loader import ExtensionSwitches, discover
from webui.extensions.manifest import ExtensionManifest, ManifestError, read_manifest
from webui.extensions.registry import DISABLED, ExtensionRegistry
from webui.extensions.requirements import PipInstaller, app_pins, unmet
from webui.security.extension_access import check_extension_changes, check_git_url, network_refusal
from webui.security.identity import User
from webui.settings import Settings

NOT_LOADED = "not loaded yet"   # installed after this start
UNINSTALLED = "uninstalled"     # removed after this start (its code stays in memory until the restart)
INSTALLING_PREFIX = ".installing-"


class ExtensionChangeError(ValueError):
    """An install, update or uninstall that was refused or failed; nothing was left half done."""


@dataclass(frozen=True)
class ExtensionInfo:
    """One row of the Extensions tab."""

    name: str
    version: str
    description: str
    builtin: bool
    state: str                      # loaded / disabled / failed / refused, or NOT_LOADED / UNINSTALLED
    enabled: bool                   # switched on for the next start
    problem: str                    # why it is refused or failed (one line)
    traceback: str
    import_seconds: float
    hooks: tuple[str, ...]          # what it registered
    slow_hooks: tuple[str, ...]     # hooks whose calls were slow, with their timings
    folder: Path
    routes: tuple[str, ...] = ()    # the path prefixes its routers are served at
    hook_calls: dict[str, int] = field(default_factory=dict)   # hook -> calls so far
    remote: str = ""                # git-installed ones: where from, which branch and commit
    branch: str = ""
    commit: str = ""
    commit_date: int = 0

    @property
    def pending(self) -> str:
        """What happens at the next start, when it differs from now."""
        if self.state == UNINSTALLED:
            return "removed; its code stays loaded until the next start"
        if self.state == NOT_LOADED:
            return "loads at the next start" if self.enabled else "installed, switched off"
        if self.enabled and self.state == DISABLED:
            return "loads at the next start"
        if not self.enabled and self.state != DISABLED:
            return "off from the next start"
        return ""


@dataclass(frozen=True)
class ChangeResult:
    name: str
    message: str


class ExtensionService:
    """List, switch, install, update and uninstall extensions for one running app."""

    def __init__(self, settings: Settings, registry: ExtensionRegistry, switches: ExtensionSwitches,
                 installer: PipInstaller | None = None, pins: Callable[[], dict[str, str]] = app_pins):
        self.settings = settings
        self.registry = registry
        self.switches = switches
        self.installer = installer or PipInstaller()
        self._pins = pins
        self._changing = threading.Lock()   # one install/update/uninstall at a time

    # -- reading -----------------------------------------------------------------------------------
    def records(self, with_origin: bool = True) -> list[ExtensionInfo]:
        """Every extension this start knows, plus those installed since; shipped ones first. `with_origin`
        asks git where each user extension came from (a few git calls each)."""
        disabled = self.switches.disabled()
        rows = []
        for record in self.registry.records.values():
            gone = not record.folder.is_dir()
            info = self._info(record.name, record.manifest, record.builtin, record.folder,
                              UNINSTALLED if gone else record.state, disabled, record.problem, record.traceback,
                              record.import_seconds, tuple(self.registry.hooks_of(record.name)),
                              tuple(record.slow_hooks()), with_origin)
            rows.append(replace(info, hook_calls={hook: timing.calls for hook, timing in record.timings.items()},
                                routes=tuple(row.payload for row in self.registry.registrations(record.name)
                                             if row.hook == ROUTER)))
        known = {record.folder.resolve() for record in self.registry.records.values() if record.folder.is_dir()}
        for folder in discover([(self.settings.extensions_folder, False)]):
            if folder.path.resolve() in known:
                continue
            try:
                manifest: ExtensionManifest | None = read_manifest(folder.path)
                problem = ""
            except ManifestError as error:
                manifest, problem = None, str(error)
            name = manifest.name if manifest else folder.path.name
            rows.append(self._info(name, manifest, False, folder.path, NOT_LOADED, disabled, problem, "", 0.0, (), (),
                                   with_origin))
        return sorted(rows, key=lambda row: (not row.builtin, row.name.casefold()))

    def _info(self, name: str, manifest: ExtensionManifest | None, builtin: bool, folder: Path, state: str,
              disabled: set[str], problem: str, traceback: str, import_seconds: float, hooks: tuple[str, ...],
              slow: tuple[str, ...], with_origin: bool) -> ExtensionInfo:
        wanted = with_origin and not builtin and state != UNINSTALLED
        git = git_repo.info(folder) if wanted else git_repo.GitInfo()
        missing = unmet(manifest.requirements) if manifest and state != UNINSTALLED else []
        if missing:
            note = (f"requirements not installed: {', '.join(missing)} (installed with --skip-install, or by hand? "
                    "install them into the app's environment)")
            problem = f"{problem}; {note}" if problem else note
        return ExtensionInfo(name=name, version=manifest.version if manifest else "",
                             description=manifest.description if manifest else "", builtin=builtin, state=state,
                             enabled=name not in disabled, problem=problem, traceback=traceback,
                             import_seconds=import_seconds, hooks=hooks, slow_hooks=slow, folder=folder,
                             remote=git.remote, branch=git.branch, commit=git.commit, commit_date=git.commit_date)

    def changes_refusal(self) -> str:
        """Why installs, updates and uninstalls are off on this server; "" when an admin may make them."""
        return network_refusal(self.settings)

    def names(self) -> list[str]:
        return [row.name for row in self.records(with_origin=False) if row.state != UNINSTALLED]

    # -- switching on and off ----------------------------------------------------------------------
    def set_enabled(self, caller: User, name: str, enabled: bool) -> str:
        """Remember the switch for the next start; disabling also stops a loaded extension's hooks now."""
        caller.require_admin("Enabling or disabling extensions")
        if name not in self.names():
            raise LookupError(f"no extension named {name!r} is installed")
        self.switches.set_enabled(name, enabled)
        if enabled:
            return f"{name} is on: it loads at the next start."
        stopped = self.registry.switch_off(name)
        return (f"{name} is off: its hooks stopped now; its tabs, settings and routes go at the next start."
                if stopped else f"{name} is off from the next start.")

    def apply_enabled(self, caller: User, enabled_names: Iterable[str]) -> str:
        """The tab's checkboxes: switch on exactly `enabled_names`; the message lists what changed."""
        caller.require_admin("Enabling or disabling extensions")
        wanted = set(enabled_names)
        rows = [row for row in self.records(with_origin=False) if row.state != UNINSTALLED]
        unknown = wanted - {row.name for row in rows}
        if unknown:
            raise LookupError(f"no extension named {', '.join(map(repr, sorted(unknown)))} is installed")
        messages = [self.set_enabled(caller, row.name, row.name in wanted) for row in rows
                    if row.enabled != (row.name in wanted)]
        return " ".join(messages) or "Nothing changed."

    # -- install, update, uninstall ----------------------------------------------------------------
    def install(self, caller: User, url: str) -> ChangeResult:
        """Clone `url`, check it, install its requirements, then put it in `<data>/extensions/<name>`."""
        check_extension_changes(self.settings, caller, "Installing extensions")
        url = check_git_url(url)
        root = self.settings.extensions_folder
        root.mkdir(parents=True, exist_ok=True)
        with self._changing:
            for leftover in root.glob(f"{INSTALLING_PREFIX}*"):  # an install cut short by a crash or a kill
                _remove_tree(leftover)
            staging = root / f"{INSTALLING_PREFIX}{uuid.uuid4().hex[:12]}"
            try:
                try:
                    git_repo.clone(url, staging)
                except git_repo.GitError as error:
                    raise ExtensionChangeError(f"cannot clone {url}: {error}") from None
                manifest = self._checked_manifest(staging, url)
                if manifest.name in self._taken_names():
                    raise ExtensionChangeError(f"an extension named {manifest.name!r} is already installed; "
                                               "uninstall it first, or update it instead")
                target = root / manifest.name
                if target.exists() or target.is_symlink():
                    raise ExtensionChangeError(f"{target} already exists; remove it or uninstall that extension first")
                note = self._requirements(manifest)
                commit = git_repo.head(staging)[:10]
                staging.rename(target)
            finally:
                if staging.exists():
                    _remove_tree(staging)
        return ChangeResult(manifest.name, f"Installed {manifest.name} {manifest.version} (commit {commit}) into "
                                           f"{target}. {note}It loads at the next start.")

    def update(self, caller: User, name: str) -> ChangeResult:
        """`git pull --ff-only`, then the same checks as an install; a failed check goes back to the old commit."""
        check_extension_changes(self.settings, caller, "Updating extensions")
        with self._changing:
            folder = self._user_folder(name, "updated")
            if not git_repo.is_repository(folder):
                raise ExtensionChangeError(f"{name} was not installed from git ({folder} is no git clone); "
                                           "it cannot be updated from here")
            before = git_repo.head(folder)
            try:
                git_repo.pull(folder)
            except git_repo.GitError as error:
                raise ExtensionChangeError(f"cannot update {name}: {error}") from None
            after = git_repo.head(folder)
            try:
                manifest = self._checked_manifest(folder, name)
                if manifest.name != name:
                    raise ExtensionChangeError(f"the update renames the extension to {manifest.name!r}; uninstall "
                                               f"{name} and install it again")
                note = self._requirements(manifest) if after != before else ""
            except (ValueError, OSError):
                git_repo.reset_to(folder, before)
                raise
        if after == before:
            return ChangeResult(name, f"{name} is up to date (commit {after[:10]}).")
        return ChangeResult(name, f"Updated {name} from {before[:10]} to {after[:10]} (version {manifest.version}). "
                                  f"{note}The new code runs after the next start.")

    def uninstall(self, caller: User, name: str) -> ChangeResult:
        """Remove an extension the user installed (never a shipped one); its hooks stop at once."""
        check_extension_changes(self.settings, caller, "Uninstalling extensions")
        with self._changing:
            folder = self._user_folder(name, "uninstalled")
            if folder.is_symlink():
                folder.unlink()   # a linked folder: remove the link, never what it points to
            else:
                _remove_tree(folder)
            self.registry.switch_off(name)
            self.switches.set_enabled(name, True)  # a later install of the same name starts switched on
        return ChangeResult(name, f"Uninstalled {name}: its folder is removed; its tabs and routes go at the next "
                                  "start.")

    # -- checks --------------------------------------------------------------------------------------
    def _checked_manifest(self, folder: Path, source: str) -> ExtensionManifest:
        try:
            manifest = read_manifest(folder)
        except ManifestError as error:
            text = str(error).replace(folder.name, source, 1)
            raise ExtensionChangeError(f"{text} (an extension needs a valid extension.toml at the top of its "
                                       "repository)") from None
        if not manifest.supports(self.registry.api_version):
            raise ExtensionChangeError(f"{manifest.name} {manifest.version} needs extension API {manifest.api}; this "
                                       f"SD Studio provides {self.registry.api_version}")
        return manifest

    def _requirements(self, manifest: ExtensionManifest) -> str:
        """Install the requirements after the conflict check; the sentence for the result message."""
        if not manifest.requirements:
            return ""
        listed = ", ".join(manifest.requirements)
        if self.settings.skip_install:
            return f"Its requirements were NOT installed (--skip-install is on): {listed}. "
        pins = self._pins()
        self.installer.check(manifest.requirements, pins)
        self.installer.install(manifest.requirements, pins)
        return f"Installed its requirements: {listed}. "

    def _taken_names(self) -> set[str]:
        names = set(self.registry.records)
        for folder in discover([(self.settings.builtin_extensions_folder, True), (self.settings.extensions_folder, False)]):
            names.add(folder.path.name)
            try:
                names.add(read_manifest(folder.path).name)
            except ManifestError:
                continue
        return names

    def _user_folder(self, name: str, done: str) -> Path:
        """The folder of a user-installed extension, checked to be directly inside `<data>/extensions`."""
        root = self.settings.extensions_folder.resolve()
        rows = [row for row in self.records(with_origin=False) if row.name == name and row.state != UNINSTALLED]
        if not rows:
            raise LookupError(f"no extension named {name!r} is installed")
        row = rows[0]
        if row.builtin:
            raise ExtensionChangeError(f"{name} is shipped with SD Studio (extensions-builtin) and cannot be {done}; "
                                       "disable it instead")
        folder = row.folder
        if folder.parent.resolve() != root or folder.name.startswith("."):
            raise ExtensionChangeError(f"{folder} is not an extension folder in {root}")
        return folder


def _remove_tree(folder: Path) -> None:
    """rmtree that also removes read-only files (git's packed objects are read-only on some systems)."""
    def writable_then_retry(function, path, _error):
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD)
        function(path)

    shutil.rmtree(folder, onerror=writable_then_retry)

