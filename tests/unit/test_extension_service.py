"""The Extensions tab's use cases on real git repositories (file:// URLs) and a real pip: install, update,
uninstall, switching on and off, and every refusal leaving nothing half installed (issue 16, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.extension_repos import commit_all, extension_repo, wheel_folder, write_extension
from webui.extensions import api
from webui.extensions.loader import ExtensionSwitches, load_extensions
from webui.extensions.registry import DISABLED, LOADED, ExtensionRegistry
from webui.extensions.requirements import PipInstaller, RequirementConflict, RequirementInstallFailed
from webui.extensions.service import NOT_LOADED, UNINSTALLED, ExtensionChangeError, ExtensionService
from webui.security.extension_access import ExtensionAccessRefused
from webui.security.identity import LOCAL_ADMIN, Forbidden, User
from webui.settings import Settings

ADMIN = LOCAL_ADMIN
OFFLINE_PIP = ("--no-index",)


def make_service(data: Path, builtin: Path | None = None, installer: PipInstaller | None = None,
                 **settings_fields) -> ExtensionService:
    """A service over extensions loaded by the real loader from `builtin` (shipped) and `<data>/extensions`."""
    settings = Settings(data_dir=data, **settings_fields)
    registry = ExtensionRegistry(api.API_VERSION)
    switches = ExtensionSwitches(data / "extensions.json")
    roots = [(builtin or data / "no-builtin", True), (settings.extensions_folder, False)]
    load_extensions(registry, roots, switches, lambda record: api.ExtensionSetup(registry, record, data / "ext-data"))
    return ExtensionService(settings, registry, switches, installer or PipInstaller(options=OFFLINE_PIP))


def installed(data: Path) -> list[str]:
    """What is in the extensions folder, hidden staging folders included."""
    folder = data / "extensions"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_install_update_and_uninstall_from_a_local_git_repository(tmp_path):
    data = tmp_path / "data"
    url = extension_repo(tmp_path / "repo", "hello", version="1.0.0", description="says hello")
    service = make_service(data)

    result = service.install(ADMIN, url)
    assert result.name == "hello" and "Installed hello 1.0.0" in result.message
    assert "next start" in result.message
    assert installed(data) == ["hello"]
    assert (data / "extensions" / "hello" / "extension.toml").is_file()
    row = next(row for row in service.records() if row.name == "hello")
    assert (row.state, row.version, row.description, row.remote) == (NOT_LOADED, "1.0.0", "says hello", url)
    assert len(row.commit) == 40 and row.branch == "main" and row.pending == "loads at the next start"

    write_extension(tmp_path / "repo", "hello", version="1.1.0")
    second = commit_all(tmp_path / "repo", "hello 1.1.0")
    result = service.update(ADMIN, "hello")
    assert "Updated hello" in result.message and second[:10] in result.message and "1.1.0" in result.message
    row = next(row for row in service.records() if row.name == "hello")
    assert (row.commit, row.version) == (second, "1.1.0")
    assert "up to date" in service.update(ADMIN, "hello").message

    result = service.uninstall(ADMIN, "hello")
    assert "Uninstalled hello" in result.message
    assert installed(data) == []
    assert "hello" not in service.names()


def test_a_staging_folder_left_by_a_killed_install_is_cleared_by_the_next_install(tmp_path):
    data = tmp_path / "data"
    leftover = data / "extensions" / ".installing-0123456789ab"
    write_extension(leftover, "half")
    service = make_service(data)
    assert "half" not in service.names()  # hidden folders are never discovered
    service.install(ADMIN, extension_repo(tmp_path / "repo", "hello"))
    assert installed(data) == ["hello"]


def test_an_installed_extension_loads_at_the_next_start_and_its_hooks_stop_when_uninstalled(tmp_path):
    data = tmp_path / "data"
    make_service(data).install(ADMIN, extension_repo(tmp_path / "repo", "hello"))
    restarted = make_service(data)
    row = next(row for row in restarted.records() if row.name == "hello")
    assert row.state == LOADED and row.hooks == (api.APP_STARTED,) and row.import_seconds > 0
    assert restarted.registry.rows(api.APP_STARTED)
    restarted.uninstall(ADMIN, "hello")
    assert restarted.registry.rows(api.APP_STARTED) == []
    assert next(row for row in restarted.records() if row.name == "hello").state == UNINSTALLED


def test_an_update_with_a_broken_manifest_is_refused_and_the_old_commit_stays(tmp_path):
    data = tmp_path / "data"
    service = make_service(data)
    service.install(ADMIN, extension_repo(tmp_path / "repo", "hello"))
    first = next(row for row in service.records() if row.name == "hello").commit
    (tmp_path / "repo" / "extension.toml").write_text('name = "hello"\nversion = "1.2.0"\napi = ">=7"\n')
    commit_all(tmp_path / "repo", "needs API 7")
    with pytest.raises(ExtensionChangeError, match=r"needs extension API >=7; this SD Studio provides 1\."):
        service.update(ADMIN, "hello")
    row = next(row for row in service.records() if row.name == "hello")
    assert (row.commit, row.version) == (first, "1.0.0")


@pytest.mark.parametrize("url, reason", [
    ("", "enter the git URL"),
    ("--upload-pack=touch /tmp/pwned", "must not start with '-'"),
    ("-uhttps://example.com/x.git", "must not start with '-'"),
    ("ext::sh -c touch% /tmp/pwned", "must not start with '-' or contain spaces"),
    ("fd::17", "not an accepted git URL"),
    ("http://example.com/x.git", "not an accepted git URL"),
    ("ftp://example.com/x.git", "not an accepted git URL"),
    ("file://relative/path", "absolute path"),
    ("https:///no-host", "names no host"),
    ("git@-oProxyCommand=touch:repo", "not an accepted git URL"),
    ("git@host:-repo", "not an accepted git URL"),
])
def test_bad_git_urls_are_refused_before_git_runs(tmp_path, url, reason):
    service = make_service(tmp_path)
    with pytest.raises(ValueError, match=reason):
        service.install(ADMIN, url)
    assert installed(tmp_path) == []


def test_accepted_url_forms(tmp_path):
    from webui.security.extension_access import check_git_url

    for url in ("https://github.com/owner/repo.git", "ssh://git@github.com/owner/repo.git",
                "git@github.com:owner/repo.git", "file:///srv/git/repo"):
        assert check_git_url(f"  {url} ") == url


@pytest.mark.parametrize("make_repo, reason", [
    (lambda folder: folder.as_uri() + "-missing", "cannot clone"),
    (lambda folder: (write_extension(folder, "x"), (folder / "extension.toml").unlink(), commit_all(folder, "no"),
                     folder.as_uri())[-1], "no extension.toml"),
    (lambda folder: (write_extension(folder, "x"), (folder / "extension.toml").write_text("name = [broken"),
                     commit_all(folder, "bad"), folder.as_uri())[-1], "cannot be read"),
    (lambda folder: extension_repo(folder, "future", api=">=2"), "needs extension API >=2"),
    (lambda folder: extension_repo(folder, "numpy-user", requirements=("numpy==0.0.1",)),
     "'numpy==0.0.1' conflicts with the app's numpy"),
])
def test_a_failed_install_says_why_and_leaves_nothing(tmp_path, make_repo, reason):
    data = tmp_path / "data"
    url = make_repo(tmp_path / "repo")
    with pytest.raises(ValueError, match=reason):
        make_service(data).install(ADMIN, url)
    assert installed(data) == []


def test_a_name_already_installed_or_shipped_is_refused(tmp_path):
    data = tmp_path / "data"
    builtin = tmp_path / "builtin"
    write_extension(builtin / "shipped", "shipped")
    service = make_service(data, builtin)
    service.install(ADMIN, extension_repo(tmp_path / "one", "mine"))
    with pytest.raises(ExtensionChangeError, match="'mine' is already installed"):
        service.install(ADMIN, extension_repo(tmp_path / "two", "mine"))
    with pytest.raises(ExtensionChangeError, match="'shipped' is already installed"):
        service.install(ADMIN, extension_repo(tmp_path / "three", "shipped"))
    assert installed(data) == ["mine"]
    with pytest.raises(ExtensionChangeError, match="shipped with SD Studio .* cannot be uninstalled"):
        service.uninstall(ADMIN, "shipped")
    assert (builtin / "shipped" / "extension.toml").is_file()


def test_a_requirement_whose_dependency_conflicts_with_the_apps_pins_is_refused_naming_it(tmp_path):
    data = tmp_path / "data"
    wheels = wheel_folder(tmp_path / "wheels", "kitdep", "1.0", requires=("numpy<1",))
    service = make_service(data, installer=PipInstaller(options=("--no-index", "--find-links", str(wheels))))
    with pytest.raises(RequirementConflict, match=r"numpy<1.*numpy==2|numpy==2.*numpy<1"):
        service.install(ADMIN, extension_repo(tmp_path / "repo", "deps", requirements=("kitdep",)))
    assert installed(data) == []


def test_a_requirement_pip_cannot_find_is_refused(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(RequirementInstallFailed, match="No matching distribution found for sdstudio-no-such-package"):
        make_service(data).install(ADMIN, extension_repo(tmp_path / "repo", "deps",
                                                         requirements=("sdstudio-no-such-package>=1",)))
    assert installed(data) == []


def test_requirements_that_fit_are_installed_and_skip_install_skips_them(tmp_path):
    # `packaging` is already in the app's environment at a fitting version: pip installs nothing new.
    url = extension_repo(tmp_path / "repo", "deps", requirements=("packaging>=20",))
    result = make_service(tmp_path / "a").install(ADMIN, url)
    assert "Installed its requirements: packaging>=20" in result.message
    result = make_service(tmp_path / "b", skip_install=True).install(ADMIN, url)
    assert "NOT installed (--skip-install is on): packaging>=20" in result.message
    assert installed(tmp_path / "b") == ["deps"]
    assert next(row for row in make_service(tmp_path / "b").records() if row.name == "deps").problem == ""


def test_an_extension_whose_requirements_are_missing_says_so(tmp_path):
    data = tmp_path / "data"
    write_extension(data / "extensions" / "needy", "needy",
                    requirements=("sdstudio-no-such-package>=1", "numpy<1", "packaging>=20"))
    problem = next(row for row in make_service(data).records() if row.name == "needy").problem
    assert problem.startswith("requirements not installed: sdstudio-no-such-package>=1, numpy<1 (found 2.")


@pytest.mark.parametrize("flags", [{"listen": True}, {"share": True}])
def test_changes_are_refused_on_a_network_server_unless_the_owner_allowed_them(tmp_path, flags):
    url = extension_repo(tmp_path / "repo", "hello")
    service = make_service(tmp_path / "data", **flags)
    for action in (lambda: service.install(ADMIN, url), lambda: service.update(ADMIN, "hello"),
                   lambda: service.uninstall(ADMIN, "hello")):
        with pytest.raises(ExtensionAccessRefused, match="--enable-insecure-extension-access"):
            action()
    assert installed(tmp_path / "data") == []
    allowed = make_service(tmp_path / "data", enable_insecure_extension_access=True, **flags)
    assert "Installed hello" in allowed.install(ADMIN, url).message


def test_only_admins_change_extensions(tmp_path):
    url = extension_repo(tmp_path / "repo", "hello")
    service = make_service(tmp_path / "data")
    someone = User("someone", "user")
    with pytest.raises(Forbidden, match="needs an admin account"):
        service.install(someone, url)
    service.install(ADMIN, url)
    for action in (lambda: service.uninstall(someone, "hello"), lambda: service.set_enabled(someone, "hello", False),
                   lambda: service.apply_enabled(someone, [])):
        with pytest.raises(Forbidden):
            action()
    assert installed(tmp_path / "data") == ["hello"]


def test_disabling_stops_the_hooks_now_and_is_remembered_for_the_next_start(tmp_path):
    data = tmp_path / "data"
    write_extension(data / "extensions" / "hello", "hello")
    write_extension(data / "extensions" / "other", "other")
    service = make_service(data)
    assert {row.extension for row in service.registry.rows(api.APP_STARTED)} == {"hello", "other"}
    message = service.apply_enabled(ADMIN, ["other"])
    assert "hello is off: its hooks stopped now" in message
    assert {row.extension for row in service.registry.rows(api.APP_STARTED)} == {"other"}
    assert next(row for row in service.records() if row.name == "hello").state == DISABLED
    assert service.apply_enabled(ADMIN, ["other"]) == "Nothing changed."
    restarted = make_service(data)
    hello = next(row for row in restarted.records() if row.name == "hello")
    assert (hello.state, hello.enabled, hello.hooks) == (DISABLED, False, ())
    assert "hello is on: it loads at the next start" in restarted.apply_enabled(ADMIN, ["hello", "other"])
    assert next(row for row in make_service(data).records() if row.name == "hello").state == LOADED
    with pytest.raises(LookupError, match="no extension named 'ghost'"):
        restarted.apply_enabled(ADMIN, ["ghost"])


SLEEPY_CODE = """
import time

from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    ext.on_app_started(lambda started: time.sleep(0.3))
"""


def test_failed_and_slow_extensions_are_listed_with_their_problem(tmp_path):
    data = tmp_path / "data"
    write_extension(data / "extensions" / "broken", "broken", code="import not_a_module_anywhere\n")
    write_extension(data / "extensions" / "sleepy", "sleepy", code=SLEEPY_CODE)
    (data / "extensions" / "nomanifest").mkdir(parents=True)
    service = make_service(data)
    rows = {row.name: row for row in service.records()}
    assert rows["broken"].state == "failed" and "ModuleNotFoundError" in rows["broken"].problem
    assert "not_a_module_anywhere" in rows["broken"].traceback
    assert rows["nomanifest"].state == "refused" and "no extension.toml" in rows["nomanifest"].problem
    assert rows["sleepy"].slow_hooks == ()
    for row in service.registry.rows(api.APP_STARTED):
        service.registry.call_one(row, None)
    slow = next(row for row in service.records() if row.name == "sleepy").slow_hooks
    assert len(slow) == 1 and slow[0].startswith("app_started (") and "1 calls" in slow[0]
