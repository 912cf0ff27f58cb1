"""The app's side of the extension API: load the extensions for a Settings, mount their routes, and
announce the start. The composition root (`webui.context`, `webui.app`) calls these; nothing else does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.extensions import api
from webui.extensions.loader import SWITCHES_FILE, ExtensionSwitches, load_extensions
from webui.extensions.registry import ExtensionRegistry, HookFailure
from webui.extensions.settings_store import SETTINGS_FILE, ExtensionSettings
from webui.settings import Settings

EXTENSION_DATA_FOLDER = "extension-data"


def extension_data_root(settings: Settings) -> Path:
    """Where each extension gets a folder of its own (`<data>/extension-data/<name>`)."""
    return settings.data_dir / EXTENSION_DATA_FOLDER


def extension_roots(settings: Settings) -> list[tuple[Path, bool]]:
    """(folder, shipped?) pairs, shipped first."""
    return [(settings.builtin_extensions_folder, True), (settings.extensions_folder, False)]


def switches_for(settings: Settings) -> ExtensionSwitches:
    return ExtensionSwitches(settings.data_dir / SWITCHES_FILE)


def load_for_app(settings: Settings) -> ExtensionRegistry:
    """Discover and load every extension the settings allow; problems become records, never exceptions."""
    registry = ExtensionRegistry(api.API_VERSION, ExtensionSettings(settings.data_dir / SETTINGS_FILE))
    data_root = extension_data_root(settings)
    return load_extensions(registry, extension_roots(settings), switches_for(settings),
                           lambda record: api.ExtensionSetup(registry, record, data_root),
                           load_user_extensions=not settings.disable_extra_extensions,
                           load_any=not settings.disable_all_extensions)


def mount_routes(app: Any, registry: ExtensionRegistry) -> None:
    """Include every extension's APIRouter in the FastAPI app (before gradio takes "/")."""
    for row in registry.rows(api.ROUTER):
        try:
            router = registry.call_one(row)
            app.include_router(router, prefix=row.payload)
        except HookFailure:
            continue
        except Exception as error:  # FastAPI refusing the router: the extension is off, the app goes on
            registry.fail(row.extension, f"its routes cannot be served: {error}", "")


def announce_app_started(registry: ExtensionRegistry, base_url: str, context: Any, data_root: Path) -> None:
    """Run every `on_app_started` hook once the server answers."""
    services = api.Services(context)
    for row in registry.rows(api.APP_STARTED):
        started = api.AppStarted(base_url=base_url, services=services,
                                 data_folder=data_root / row.extension)
        started.data_folder.mkdir(parents=True, exist_ok=True)
        try:
            registry.call_one(row, started)
        except HookFailure:
            continue


# ---- ext-ui: page assets -----------------------------------------------------------------------------
CONVENTIONAL_JS_FOLDER = "javascript"   # A1111's convention: every javascript/*.js of an extension is loaded
CONVENTIONAL_CSS_FILE = "style.css"     # and its style.css added


def page_assets(registry: ExtensionRegistry) -> tuple[str, str]:
    """(CSS, `<head>` HTML with the scripts) that the loaded extensions add to the page: the files they
    registered with add_css/add_javascript, then A1111's conventional files, in load order. A file that
    cannot be read switches its extension off; the page is served without it."""
    css: list[str] = []
    scripts: list[str] = []
    seen: set[Path] = set()
    for hook, into in ((api.CSS, css), (api.JAVASCRIPT, scripts)):
        for row, text in registry.call_each(hook):
            seen.add(row.payload)
            into.append(f"/* extension {row.extension}: {row.payload.name} */\n{text}")
    for record in list(registry.records.values()):
        if not record.active:
            continue
        folder = record.folder.resolve()
        conventional = [(css, folder / CONVENTIONAL_CSS_FILE)]
        conventional += [(scripts, path) for path in sorted((folder / CONVENTIONAL_JS_FOLDER).glob("*.js"))]
        for into, path in conventional:
            if path in seen or not path.is_file() or not path.resolve().is_relative_to(folder):
                continue
            try:
                into.append(f"/* extension {record.name}: {path.name} */\n{path.read_text(encoding='utf-8')}")
            except (OSError, UnicodeDecodeError) as error:
                registry.fail(record.name, f"{path.name} cannot be read: {error}", "")
                break
    head = "".join(f"<script>\n{text.replace('</script', '<' + chr(92) + '/script')}\n</script>\n" for text in scripts)
    return "\n".join(css), head
